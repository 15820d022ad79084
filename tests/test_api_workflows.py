from __future__ import annotations

import pytest

from tasks_app.execution import execute
from tasks_app.models import Run, Workflow, WorkflowRun

URL = "/api/v1/workflows/"
RUNS = "/api/v1/workflow-runs/"
DIAMOND = [
    {"key": "A", "task": "noop"},
    {"key": "B", "task": "noop", "depends_on": ["A"]},
    {"key": "C", "task": "noop", "depends_on": ["A"], "kwargs": {"c": 1}},
    {"key": "D", "task": "noop", "depends_on": ["B", "C"], "trigger_rule": "all_done"},
]


@pytest.fixture
def run_steps(django_capture_on_commit_callbacks):
    """Execute a workflow run's steps as a worker would, until none is pending."""

    def run(workflow_run_id: int) -> None:
        while pending := list(Run.objects.filter(workflow_run_id=workflow_run_id, state="pending")):
            for step in pending:
                with django_capture_on_commit_callbacks(execute=True):
                    execute(step.pk, step.message_number, hostname="w1")

    return run


@pytest.fixture
def diamond(api, task):
    response = api.post(URL, {"name": "diamond", "description": "d", "steps": DIAMOND}, format="json")
    assert response.status_code == 201, response.data
    return response.data


def test_create_and_read_a_workflow(api, diamond) -> None:
    assert diamond["steps"][1] == {
        "key": "B", "task": "noop", "kwargs": {}, "depends_on": ["A"], "trigger_rule": "all_success",
    }  # fmt: skip
    assert api.get(URL + "diamond/").data["name"] == "diamond"
    assert [w["name"] for w in api.get(URL).data["results"]] == ["diamond"]


@pytest.mark.parametrize(
    ("steps", "words"),
    [
        ([{"key": "A", "task": "nope"}], "no task named 'nope'"),
        ([{"key": "A", "task": "noop", "depends_on": ["Z"]}], "unknown step"),
        ([{"key": "A", "task": "noop"}, {"key": "A", "task": "noop"}], "Duplicate"),
        (
            [
                {"key": "A", "task": "noop", "depends_on": ["B"]},
                {"key": "B", "task": "noop", "depends_on": ["A"]},
            ],
            "cycle",
        ),
        ("not a list", "list of steps"),
    ],
)
def test_invalid_steps_are_a_400(api, task, steps, words) -> None:
    response = api.post(URL, {"name": "bad", "steps": steps}, format="json")
    assert response.status_code == 400
    assert words in str(response.data["steps"])
    assert not Workflow.objects.exists()


def test_start_a_run_and_read_its_steps(api, diamond, broker, django_capture_on_commit_callbacks) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post(URL + "diamond/runs/")

    assert response.status_code == 201
    assert response.data["state"] == "running"
    one = api.get(f"{RUNS}{response.data['id']}/")  # after the commit that sent A
    steps = {s["key"]: s for s in one.data["steps"]}
    assert set(steps) == {"A", "B", "C", "D"}
    assert {k: s["state"] for k, s in steps.items()} == {
        "A": "pending",
        "B": "created",
        "C": "created",
        "D": "created",
    }
    assert Run.objects.get(pk=steps["C"]["run"]).kwargs == {"c": 1}

    listed = api.get(RUNS, {"workflow": "diamond"})
    assert [r["id"] for r in listed.data["results"]] == [response.data["id"]]
    assert [s["run"] for s in one.data["steps"]] == [s["run"] for s in response.data["steps"]]
    assert len(api.get("/api/v1/runs/", {"workflow_run": response.data["id"]}).data["results"]) == 4


def test_cancel_and_retry_with_their_409s(api, diamond, broker, django_capture_on_commit_callbacks) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        started = api.post(URL + "diamond/runs/")
    path = f"{RUNS}{started.data['id']}/"

    assert api.post(path + "retry/").status_code == 409  # still running
    cancelled = api.post(path + "cancel/")
    assert cancelled.status_code == 200
    assert cancelled.data["state"] == "cancelled"
    assert {s["state"] for s in cancelled.data["steps"]} == {"cancelled"}
    again = api.post(path + "cancel/")
    assert (again.status_code, again.data["state"]) == (409, "cancelled")

    with django_capture_on_commit_callbacks(execute=True):
        retried = api.post(path + "retry/")
    assert retried.status_code == 200
    assert retried.data["state"] == "running"
    now = api.get(path)
    assert {s["key"]: s["state"] for s in now.data["steps"]}["A"] == "pending"  # sent again


def test_a_workflow_runs_history_lists_each_of_its_moves(
    api, diamond, run_steps, broker, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        started = api.post(URL + "diamond/runs/")
        path = f"{RUNS}{started.data['id']}/"
        api.post(path + "cancel/")
        api.post(path + "retry/")
    run_steps(started.data["id"])  # every step completes: the workflow run does

    events = api.get(path + "events/")

    assert events.status_code == 200
    moves = [(e["from_state"], e["to_state"], e["actor"], e["actor_name"]) for e in events.data["results"]]
    assert moves == [
        ("", "running", "user", "owner"),
        ("running", "cancelled", "user", "owner"),
        ("cancelled", "running", "user", "owner"),
        ("running", "completed", "system", ""),
    ]
    assert events.data["results"][2]["reason"] == "retried: A, B, C, D"
    assert api.get(path).data["state"] == "completed"


def test_a_workflow_runs_history_needs_its_view_permission(client_with, diamond) -> None:
    workflow_run = WorkflowRun.objects.create(workflow=Workflow.objects.get(name="diamond"))
    path = f"{RUNS}{workflow_run.pk}/events/"
    assert client_with("view_run").get(path).status_code == 403
    assert client_with("view_workflowrun").get(path).status_code == 200


def test_schedule_can_fire_a_workflow(api, diamond, broker) -> None:
    response = api.post("/api/v1/schedules/", {"workflow": "diamond", "interval_seconds": 60}, format="json")
    assert response.status_code == 201, response.data
    assert response.data["workflow"] == "diamond" and response.data["task"] is None
    triggered = api.post(f"/api/v1/schedules/{response.data['id']}/trigger/")
    assert triggered.status_code == 201
    assert WorkflowRun.objects.count() == 1


def test_schedule_needs_exactly_one_of_task_and_workflow(api, diamond) -> None:
    both = api.post(
        "/api/v1/schedules/", {"workflow": "diamond", "task": "noop", "interval_seconds": 60}, format="json"
    )
    neither = api.post("/api/v1/schedules/", {"interval_seconds": 60}, format="json")
    assert (both.status_code, neither.status_code) == (400, 400)
    assert "task" in both.data and "task" in neither.data


def test_workflow_writes_need_permissions(reader, anonymous, diamond) -> None:
    assert anonymous.get(URL).status_code == 401
    assert reader.get(URL).status_code == 200
    assert reader.post(URL + "diamond/runs/").status_code == 403
    assert reader.delete(URL + "diamond/").status_code == 403
    assert not WorkflowRun.objects.exists()
