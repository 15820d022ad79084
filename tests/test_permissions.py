"""Permissions mean what they say: each path with the owner, another user and no user,
and for each permission a path needs, a user with all the others but that one."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Permission

from tasks_app.lifecycle import RunState
from tasks_app.models import Run, Schedule, Task, Workflow, WorkflowRun
from tasks_app.workers import record_worker
from tests.conftest import VIEW_PERMISSIONS

S = RunState
STEP = {"key": "a", "task": "noop", "kwargs": {}, "depends_on": [], "trigger_rule": "all_success"}


@pytest.fixture
def world(task, make_task, make_run, broker) -> dict[str, Any]:
    """One of everything, for the paths to act on."""
    make_task(name="spare")
    failed = make_run(task, S.FAILED)
    schedule = Schedule.objects.create(task=task, interval_seconds=60)
    paused = Schedule.objects.create(task=task, interval_seconds=60, enabled=False)
    workflow = Workflow.objects.create(name="flow", steps=[STEP])
    Workflow.objects.create(name="spare-flow", steps=[STEP])
    workflow_run = WorkflowRun.objects.create(workflow=workflow, steps=[STEP], state="failed")
    make_run(task, S.FAILED, workflow_run=workflow_run, step="a")
    record_worker("w1@host", queues=["default"], concurrency=1)
    return {"run": failed.pk, "schedule": schedule.pk, "paused": paused.pk, "workflow_run": workflow_run.pk}


# (method, path, body, the permissions it needs)
PATHS = [
    ("get", "/api/v1/handlers/", None, ["view_task"]),
    ("get", "/api/v1/tasks/", None, ["view_task"]),
    ("get", "/api/v1/tasks/noop/", None, ["view_task"]),
    ("post", "/api/v1/tasks/", {"name": "new", "handler": "builtin.noop"}, ["add_task"]),
    ("patch", "/api/v1/tasks/noop/", {"priority": 3}, ["change_task"]),
    ("delete", "/api/v1/tasks/spare/", None, ["delete_task"]),
    ("get", "/api/v1/runs/", None, ["view_run"]),
    ("get", "/api/v1/runs/{run}/", None, ["view_run"]),
    ("get", "/api/v1/runs/{run}/events/", None, ["view_run"]),
    ("get", "/api/v1/runs/{run}/logs/", None, ["view_run"]),
    ("post", "/api/v1/runs/", {"task": "noop"}, ["add_run"]),
    ("post", "/api/v1/runs/bulk/", {"runs": [{"task": "noop"}]}, ["add_run"]),
    ("post", "/api/v1/runs/{run}/retry/", None, ["change_run"]),
    ("post", "/api/v1/runs/{run}/cancel/", None, ["change_run"]),
    ("get", "/api/v1/schedules/", None, ["view_schedule"]),
    ("get", "/api/v1/schedules/{schedule}/", None, ["view_schedule"]),
    ("post", "/api/v1/schedules/", {"task": "noop", "cron": "* * * * * *"}, ["add_schedule", "add_run"]),
    ("patch", "/api/v1/schedules/{schedule}/", {"cron": "* * * * * *"}, ["change_schedule", "add_run"]),
    ("patch", "/api/v1/schedules/{schedule}/", {"kwargs": {"x": 1}}, ["change_schedule", "add_run"]),
    ("delete", "/api/v1/schedules/{schedule}/", None, ["delete_schedule"]),
    ("post", "/api/v1/schedules/{schedule}/pause/", None, ["change_schedule"]),
    ("post", "/api/v1/schedules/{paused}/resume/", None, ["change_schedule", "add_run"]),
    ("post", "/api/v1/schedules/{schedule}/trigger/", None, ["view_schedule", "add_run"]),
    ("post", "/api/v1/schedules/preview/", {"cron": "* * * * *"}, ["view_schedule"]),
    ("get", "/api/v1/workflows/", None, ["view_workflow"]),
    ("get", "/api/v1/workflows/flow/", None, ["view_workflow"]),
    ("post", "/api/v1/workflows/", {"name": "new-flow", "steps": [STEP]}, ["add_workflow"]),
    ("patch", "/api/v1/workflows/flow/", {"description": "d"}, ["change_workflow"]),
    ("delete", "/api/v1/workflows/spare-flow/", None, ["delete_workflow"]),
    ("post", "/api/v1/workflows/flow/runs/", None, ["view_workflow", "add_workflowrun", "add_run"]),
    ("get", "/api/v1/workflow-runs/", None, ["view_workflowrun"]),
    ("get", "/api/v1/workflow-runs/{workflow_run}/", None, ["view_workflowrun"]),
    ("post", "/api/v1/workflow-runs/{workflow_run}/retry/", None, ["change_workflowrun", "add_run"]),
    ("post", "/api/v1/workflow-runs/{workflow_run}/cancel/", None, ["change_workflowrun"]),
    ("get", "/api/v1/workers/", None, ["view_worker"]),
    ("get", "/api/v1/workers/w1@host/", None, ["view_worker"]),
    ("get", "/metrics", None, ["view_run"]),
]
IDS = [f"{method} {path} {sorted(body or {})}" for method, path, body, _ in PATHS]


def call(client, method: str, path: str, body: Any, world: dict[str, Any]):
    url = path.format(**world)
    return (
        getattr(client, method)(url, body, format="json")
        if body is not None
        else getattr(client, method)(url)
    )


def written() -> tuple[int, ...]:
    """What a refused request must leave as it was."""
    return (
        Task.objects.count(),
        Run.objects.count(),
        Schedule.objects.count(),
        Workflow.objects.count(),
        WorkflowRun.objects.count(),
        *Schedule.objects.order_by("pk").values_list("enabled", flat=True),
        *Run.objects.order_by("pk").values_list("state", flat=True),
    )


@pytest.mark.parametrize(("method", "path", "body", "needs"), PATHS, ids=IDS)
def test_no_user_is_a_401(anonymous, world, method, path, body, needs) -> None:
    before = written()
    assert call(anonymous, method, path, body, world).status_code == 401
    assert written() == before


@pytest.mark.parametrize(("method", "path", "body", "needs"), PATHS, ids=IDS)
def test_a_user_without_permissions_is_a_403(stranger, world, method, path, body, needs) -> None:
    before = written()
    assert call(stranger, method, path, body, world).status_code == 403
    assert written() == before


@pytest.mark.parametrize(("method", "path", "body", "needs"), PATHS, ids=IDS)
def test_each_permission_a_path_needs_is_needed(client_with, world, method, path, body, needs) -> None:
    everything_else = {p.codename for p in Permission.objects.filter(content_type__app_label="tasks_app")}
    for missing in needs:
        client = client_with(*(everything_else - {missing}))
        before = written()
        response = call(client, method, path, body, world)
        assert response.status_code == 403, (missing, response.content)
        assert written() == before, missing


@pytest.mark.parametrize(("method", "path", "body", "needs"), PATHS, ids=IDS)
def test_the_permissions_a_path_needs_are_enough(client_with, world, method, path, body, needs) -> None:
    response = call(client_with(*needs), method, path, body, world)
    assert response.status_code not in (401, 403), response.content
    assert response.status_code < 500


@pytest.mark.parametrize("path", ["/api/schema/", "/api/docs/"])
def test_the_schema_is_for_users_who_may_read_something(anonymous, stranger, client_with, path) -> None:
    assert anonymous.get(path).status_code == 401
    assert stranger.get(path).status_code == 403
    assert client_with("view_worker").get(path).status_code == 200


def test_a_reader_reads_every_list_and_changes_nothing(reader, world) -> None:
    for method, path, body, _needs in PATHS:
        before = written()
        response = call(reader, method, path, body, world)
        if method == "get":
            assert response.status_code == 200, path
        elif path != "/api/v1/schedules/preview/":
            assert response.status_code == 403, path
        assert written() == before, path


def test_the_view_permissions_cover_every_model_the_api_shows() -> None:
    assert set(VIEW_PERMISSIONS) == {
        "view_task", "view_run", "view_schedule", "view_workflow", "view_workflowrun", "view_worker",
        "view_channel", "view_alertrule", "view_alert",
    }  # fmt: skip


def test_what_makes_a_workflow_schedule_fire_needs_add_workflowrun(client_with, world) -> None:
    everything_else = {p.codename for p in Permission.objects.filter(content_type__app_label="tasks_app")}
    client = client_with(*(everything_else - {"add_workflowrun"}))
    flow = Schedule.objects.create(
        workflow=Workflow.objects.get(name="flow"), interval_seconds=60, enabled=False
    )
    before = written()

    created = client.post("/api/v1/schedules/", {"workflow": "flow", "interval_seconds": 60}, format="json")
    switched = client.patch(f"/api/v1/schedules/{world['schedule']}/", {"workflow": "flow"}, format="json")
    fired = client.post(f"/api/v1/schedules/{flow.pk}/trigger/")
    resumed = client.post(f"/api/v1/schedules/{flow.pk}/resume/")

    assert [r.status_code for r in (created, switched, fired, resumed)] == [403, 403, 403, 403]
    assert written() == before
    # A schedule of a task needs no more than before.
    assert client.post(f"/api/v1/schedules/{world['schedule']}/trigger/").status_code == 201


def test_the_api_root_lists_its_links_to_signed_in_users(anonymous, stranger, reader) -> None:
    assert anonymous.get("/api/v1/").status_code == 401
    assert reader.get("/api/v1/").status_code == 200
    assert "runs" in reader.get("/api/v1/").data
