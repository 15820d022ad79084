"""Hostile and malformed input: each a clear 4xx, and nothing written."""

from __future__ import annotations

import json

import pytest

from tasks_app import scheduling
from tasks_app.models import Run

URL = "/api/v1/runs/"


def nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def post_raw(client, body: str):
    return client.generic("POST", URL, body, content_type="application/json")


def test_body_over_the_limit_is_a_413(api, task, settings) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = post_raw(api, json.dumps({"task": "noop", "kwargs": {"x": "y" * 2000}}))
    assert response.status_code == 413
    assert not Run.objects.exists()


@pytest.mark.parametrize("depth", [33, 40, 5000])
def test_json_nested_too_deep_is_a_400(api, task, depth) -> None:
    body = (
        json.dumps({"task": "noop", "kwargs": nested(depth - 1)})
        if depth < 900
        else '{"a":' * depth + "1" + "}" * depth
    )
    response = post_raw(api, body)
    assert response.status_code == 400
    assert "nested deeper than 32" in response.data["detail"]
    assert not Run.objects.exists()


def test_json_nested_within_the_limit_is_stored(api, task, broker) -> None:
    response = post_raw(api, json.dumps({"task": "noop", "kwargs": nested(31)}))
    assert response.status_code == 201
    assert Run.objects.get().kwargs == nested(31)


@pytest.mark.parametrize("body", ['{"task": "noop", "kwargs": {"x": NaN}}', "[1, 2]", '"noop"', "", "{"])
def test_malformed_json_is_a_400(api, task, body) -> None:
    assert post_raw(api, body).status_code == 400
    assert not Run.objects.exists()


def test_submissions_are_throttled_per_user(api, reader, task, broker, settings) -> None:
    settings.SUBMIT_THROTTLE_RATE = "2/min"
    codes = [api.post(URL, {"task": "noop"}, format="json").status_code for _ in range(3)]
    assert codes == [201, 201, 429]
    assert api.get(URL).status_code == 200  # reads are not throttled
    assert Run.objects.count() == 2


@pytest.mark.parametrize(
    "body",
    [
        '{"task": "noop", "kwargs": {"x": "\\ud800"}}',
        '{"task": "noop", "args": ["\\udfff tail"]}',
        '{"task": "noop", "kwargs": {"\\ud83d": 1}}',
        '{"task": "noop", "kwargs": {"x": 1e309}}',
        '{"task": "noop", "args": [-1e400]}',
    ],
)
def test_json_the_database_cannot_store_is_a_400(api, task, body) -> None:
    response = post_raw(api, body)
    assert response.status_code == 400, response.content
    assert not Run.objects.exists()


def test_a_character_outside_the_basic_plane_is_stored(api, task, broker) -> None:
    response = post_raw(api, '{"task": "noop", "kwargs": {"x": "\\ud83d\\ude00 ok"}}')
    assert response.status_code == 201
    assert Run.objects.get().kwargs == {"x": "\U0001f600 ok"}


def test_an_interval_past_the_column_is_a_400(api, task) -> None:
    from tasks_app.models import Schedule

    response = api.post("/api/v1/schedules/", {"task": "noop", "interval_seconds": 2**31}, format="json")
    assert response.status_code == 400
    assert "interval_seconds" in response.data
    assert not Schedule.objects.exists()


@pytest.mark.parametrize(
    ("step", "says"),
    [
        ({"key": "k" * 10_000, "task": "noop"}, "key"),
        ({"key": None, "task": ["noop"]}, "key"),
        ({"key": "a", "task": ["noop"]}, "task"),
        ({"key": "a", "task": {"name": "noop"}}, "task"),
        ({"key": ["a"], "task": "noop"}, "key"),
        ({"key": "tab\there", "task": "noop"}, "key"),
        ({"key": "a", "task": "noop", "kwargs": {"x": 1}, "trigger_rule": ["all_done"]}, "trigger_rule"),
        ({"key": "a", "task": "noop", "depends_on": "b"}, "depends_on"),
    ],
)
def test_a_workflow_step_that_could_not_start_is_a_400(api, task, step, says) -> None:
    from tasks_app.models import Workflow

    response = api.post("/api/v1/workflows/", {"name": "w", "steps": [step]}, format="json")
    assert response.status_code == 400, response.data
    assert says in str(response.data["steps"])
    assert not Workflow.objects.exists()


# Base64 of p=abc, p=1', o=-5&p=1, p=1e99999, p= and p=<past a bigint>.
FORGED = ["cD1hYmM=", "cD0xJyA=", "bz0tNSZwPTE=", "cD0xZTk5OTk5", "cD0=", "cD05OTk5OTk5OTk5OTk5OTk5OTk5OTk5"]


@pytest.mark.parametrize("cursor", FORGED)
def test_a_forged_cursor_is_a_404_like_any_invalid_cursor(api, task, make_run, cursor) -> None:
    make_run(task)
    for path in (URL, "/api/v1/workflow-runs/", "/api/v1/workers/"):
        response = api.get(f"{path}?cursor={cursor}")
        assert response.status_code == 404, (path, response.content)
        assert response.data == {"detail": "Invalid cursor"}


def test_a_cursor_from_a_page_still_works(api, task, make_run) -> None:
    for _ in range(3):
        make_run(task)
    first = api.get(f"{URL}?page_size=2")
    second = api.get(first.data["next"])
    assert second.status_code == 200 and len(second.data["results"]) == 1


def test_deleting_a_task_that_a_schedule_uses_is_a_409_naming_them(api, task) -> None:
    from tasks_app.models import Schedule, Task

    first = Schedule.objects.create(task=task, interval_seconds=60)
    second = Schedule.objects.create(task=task, cron="* * * * *")

    response = api.delete("/api/v1/tasks/noop/")

    assert response.status_code == 409
    assert f"schedule {first.pk}, schedule {second.pk}" in response.data["detail"]
    assert Task.objects.filter(name="noop").exists() and Schedule.objects.count() == 2


def test_deleting_a_task_that_a_workflow_uses_is_a_409_naming_it(api, task) -> None:
    from tasks_app.models import Task, Workflow

    step = {"key": "a", "task": "noop", "kwargs": {}, "depends_on": [], "trigger_rule": "all_success"}
    Workflow.objects.create(name="nightly", steps=[step])
    response = api.delete("/api/v1/tasks/noop/")
    assert response.status_code == 409
    assert "nightly" in response.data["detail"]
    assert Task.objects.filter(name="noop").exists()


@pytest.mark.parametrize(
    "damage",
    [
        {},
        {"enabled": False},
        {"cron": "0 0 30 2 *", "interval_seconds": None},
        {"timezone": "Mars/Olympus", "cron": "* * * * *", "interval_seconds": None},
        {"kwargs": [1, 2]},
        {"args": {"a": 1}},
        {"end_at": "2000-01-01T00:00:00Z", "start_at": None},
        {"start_at": "9999-12-31T23:00:00Z"},
    ],
)
def test_pause_resume_and_trigger_of_a_schedule_in_any_state_answer_without_a_500(
    api, task, broker, damage
) -> None:
    from tasks_app.models import Schedule

    schedule = Schedule.objects.create(task=task, interval_seconds=60)
    Schedule.objects.filter(pk=schedule.pk).update(**damage)
    scheduling.fire_due()
    path = f"/api/v1/schedules/{schedule.pk}/"
    for action in ("pause/", "resume/", "resume/", "trigger/", "pause/", "trigger/"):
        response = api.post(path + action)
        assert response.status_code in (200, 201, 409), (action, response.content)
    assert api.get(path).status_code == 200
    assert api.get("/api/v1/schedules/").status_code == 200


def test_the_submit_throttle_counts_runs_not_requests(api, task, broker, settings) -> None:
    settings.SUBMIT_THROTTLE_RATE = "5/min"
    three = {"runs": [{"task": "noop"}] * 3}
    assert api.post(URL + "bulk/", three, format="json").status_code == 201
    refused = api.post(URL + "bulk/", three, format="json")  # 6 > 5
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) > 0
    assert api.post(URL, {"task": "noop"}, format="json").status_code == 201  # the 4th run
    assert Run.objects.count() == 4


def test_a_bulk_larger_than_the_rate_is_refused_saying_so(api, task, broker, settings) -> None:
    settings.SUBMIT_THROTTLE_RATE = "10/hour"
    response = api.post(URL + "bulk/", {"runs": [{"task": "noop"}] * 11}, format="json")
    assert response.status_code == 429
    assert "At most 10 runs" in response.data["detail"]
    assert not Run.objects.exists()


def test_trigger_and_workflow_start_count_their_runs(api, task, broker, settings) -> None:
    from tasks_app.models import Schedule, Workflow, WorkflowRun

    settings.SUBMIT_THROTTLE_RATE = "4/min"
    schedule = Schedule.objects.create(task=task, interval_seconds=60)
    steps = [{"key": k, "task": "noop", "kwargs": {}, "depends_on": [], "trigger_rule": "all_success"}
             for k in "abc"]  # fmt: skip
    Workflow.objects.create(name="three", steps=steps)

    assert api.post(f"/api/v1/schedules/{schedule.pk}/trigger/").status_code == 201  # 1
    assert api.post("/api/v1/workflows/three/runs/").status_code == 201  # 4
    assert api.post(f"/api/v1/schedules/{schedule.pk}/trigger/").status_code == 429
    assert api.post("/api/v1/workflows/three/runs/").status_code == 429
    assert (Run.objects.count(), WorkflowRun.objects.count()) == (4, 1)


def test_each_user_has_a_throttle_of_their_own(api, client_with, task, broker, settings) -> None:
    settings.SUBMIT_THROTTLE_RATE = "1/min"
    other = client_with("view_task", "view_run", "add_run")
    assert api.post(URL, {"task": "noop"}, format="json").status_code == 201
    assert api.post(URL, {"task": "noop"}, format="json").status_code == 429
    assert other.post(URL, {"task": "noop"}, format="json").status_code == 201


@pytest.mark.parametrize(
    "body",
    [
        {"run_at": "9999-12-31T23:00:00Z", "timezone": "Pacific/Kiritimati"},
        {"interval_seconds": 60, "start_at": "9999-12-31T00:00:00Z"},
        {"interval_seconds": 60, "end_at": "0001-01-01T00:00:00Z"},
    ],
)
def test_instants_near_the_end_of_the_calendar_are_a_400(api, task, body) -> None:
    from tasks_app.models import Schedule

    response = api.post("/api/v1/schedules/", {"task": "noop", **body}, format="json")
    assert response.status_code == 400, response.data
    assert not Schedule.objects.exists()


def test_a_stored_instant_near_the_end_of_the_calendar_still_reads(api, task) -> None:
    import datetime as dt

    from tasks_app.models import Schedule

    schedule = Schedule.objects.create(task=task, interval_seconds=60)
    far = dt.datetime(9999, 12, 31, 23, tzinfo=dt.UTC)
    Schedule.objects.filter(pk=schedule.pk).update(
        interval_seconds=None, run_at=far, timezone="Pacific/Kiritimati"
    )
    assert api.get("/api/v1/schedules/").status_code == 200
    assert api.get(f"/api/v1/schedules/{schedule.pk}/").data["next_runs"] == []


@pytest.mark.parametrize("instant", ["9999-12-31T23:00:00-14:00", "0001-01-01T00:00:00+14:00"])
def test_a_date_filter_past_the_calendar_is_a_400(api, instant) -> None:
    from urllib.parse import quote

    for name in ("created_after", "created_before"):
        response = api.get(f"{URL}?{name}={quote(instant)}")
        assert response.status_code == 400, response.content
        assert name in response.data


def test_a_workflow_retry_counts_the_steps_it_runs_again(api, task, broker, settings) -> None:
    from tasks_app.models import Workflow, WorkflowRun

    settings.SUBMIT_THROTTLE_RATE = "1/min"
    steps = [{"key": k, "task": "noop", "kwargs": {}, "depends_on": [], "trigger_rule": "all_success"}
             for k in "ab"]  # fmt: skip
    workflow = Workflow.objects.create(name="two", steps=steps)
    workflow_run = WorkflowRun.objects.create(workflow=workflow, steps=steps, state="failed")
    for key in "ab":
        Run.objects.create(
            task=task, workflow_run=workflow_run, step=key, state="failed", finished_at="2026-01-01T00:00Z"
        )

    response = api.post(f"/api/v1/workflow-runs/{workflow_run.pk}/retry/")

    assert response.status_code == 429
    assert Run.objects.count() == 2 and WorkflowRun.objects.get().state == "failed"


def test_renaming_a_task_that_workflows_name_is_refused(api, task) -> None:
    from tasks_app.models import Task, Workflow

    step = {"key": "a", "task": "noop", "kwargs": {}, "depends_on": [], "trigger_rule": "all_success"}
    Workflow.objects.create(name="nightly", steps=[step])
    response = api.patch("/api/v1/tasks/noop/", {"name": "renamed"}, format="json")
    assert response.status_code == 400
    assert "nightly" in str(response.data["name"])
    assert Task.objects.filter(name="noop").exists()
    assert api.patch("/api/v1/tasks/noop/", {"name": "noop", "priority": 2}, format="json").status_code == 200


def test_editing_a_workflow_has_its_set_aside_schedules_looked_at_again(api, make_task, broker) -> None:
    from tasks_app.models import Schedule, Workflow
    from tasks_app.models.schedules import RECOMPUTE

    make_task(name="other")
    step = {"key": "a", "task": "other", "kwargs": {}, "depends_on": [], "trigger_rule": "all_success"}
    workflow = Workflow.objects.create(name="flow", steps=[step])
    schedule = Schedule.objects.create(workflow=workflow, interval_seconds=60)
    Schedule.objects.filter(pk=schedule.pk).update(next_fire_at=None, invalid_reason="The workflow names ...")

    assert api.patch("/api/v1/workflows/flow/", {"description": "mended"}, format="json").status_code == 200
    assert Schedule.objects.get(pk=schedule.pk).next_fire_at == RECOMPUTE
