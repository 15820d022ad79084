from __future__ import annotations

import datetime as dt
import re

import pytest
import time_machine

from tasks_app import execution
from tasks_app.lifecycle import RunState
from tasks_app.models import Run, RunEvent, RunLog
from tests.conftest import queued_ids

S = RunState
URL = "/api/v1/runs/"
NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)

RUN_FIELDS = {
    "id", "task", "state", "trigger", "args", "kwargs", "attempt", "priority", "idempotency_key",
    "schedule", "scheduled_for", "workflow_run", "step", "worker", "created_at", "started_at",
    "finished_at", "result", "error", "progress",
}  # fmt: skip


# --- submit -------------------------------------------------------------------------


def test_submit_returns_201_with_the_run_and_sends_it(
    api, task, broker, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post(URL, {"task": "noop", "kwargs": {"x": 1}, "priority": 7}, format="json")

    assert response.status_code == 201, response.data
    assert RUN_FIELDS <= set(response.data)
    assert response.data["task"] == "noop"
    assert response.data["state"] == "pending"
    assert response.data["trigger"] == "api"
    assert (response.data["kwargs"], response.data["priority"], response.data["attempt"]) == ({"x": 1}, 7, 0)
    assert queued_ids(broker) == [f"{response.data['id']}.1"]


def test_submit_with_run_at_later_stays_created(api, task, broker) -> None:
    with time_machine.travel(NOW, tick=False):
        response = api.post(URL, {"task": "noop", "run_at": "2026-03-01T14:00:00+01:00"}, format="json")
    assert response.status_code == 201
    assert response.data["state"] == "created"
    assert Run.objects.get().due_at == dt.datetime(2026, 3, 1, 13, 0, tzinfo=dt.UTC)
    assert queued_ids(broker) == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "task"),
        ({"task": "missing"}, "task"),
        ({"task": "noop", "args": {"a": 1}}, "args"),
        ({"task": "noop", "kwargs": [1, 2]}, "kwargs"),
        ({"task": "noop", "kwargs": "x"}, "kwargs"),
        ({"task": "noop", "priority": 10}, "priority"),
        ({"task": "noop", "priority": -1}, "priority"),
        ({"task": "noop", "priority": "high"}, "priority"),
        ({"task": "noop", "run_at": "tomorrow"}, "run_at"),
    ],
)
def test_invalid_submission_is_a_400_naming_the_field(api, task, broker, body, field) -> None:
    response = api.post(URL, body, format="json")

    assert response.status_code == 400
    assert field in response.data
    assert not Run.objects.exists()
    assert queued_ids(broker) == []


def test_submission_that_is_not_json_is_a_400(api, task) -> None:
    response = api.generic("POST", URL, "{not json", content_type="application/json")
    assert response.status_code == 400
    assert not Run.objects.exists()


def test_submission_of_a_disabled_task_is_a_409(api, make_task) -> None:
    make_task(name="off", enabled=False)
    response = api.post(URL, {"task": "off"}, format="json")
    assert response.status_code == 409
    assert "disabled" in response.data["detail"]
    assert not Run.objects.exists()


def test_same_idempotency_key_and_body_returns_the_first_run_with_200(api, task, broker) -> None:
    body = {"task": "noop", "kwargs": {"x": 1}}
    first = api.post(URL, body, format="json", HTTP_IDEMPOTENCY_KEY="order-42")
    again = api.post(URL, body, format="json", HTTP_IDEMPOTENCY_KEY="order-42")

    assert (first.status_code, again.status_code) == (201, 200)
    assert again.data["id"] == first.data["id"]
    assert again.data["idempotency_key"] == "order-42"
    assert Run.objects.count() == 1


def test_same_idempotency_key_with_another_body_is_a_409(api, task, broker) -> None:
    first = api.post(URL, {"task": "noop", "kwargs": {"x": 1}}, format="json", HTTP_IDEMPOTENCY_KEY="k")
    clash = api.post(URL, {"task": "noop", "kwargs": {"x": 2}}, format="json", HTTP_IDEMPOTENCY_KEY="k")

    assert clash.status_code == 409
    assert clash.data["run"] == first.data["id"]
    assert Run.objects.count() == 1


def test_idempotency_key_is_per_task(api, make_task, broker) -> None:
    make_task(name="a")
    make_task(name="b")
    one = api.post(URL, {"task": "a"}, format="json", HTTP_IDEMPOTENCY_KEY="k")
    two = api.post(URL, {"task": "b"}, format="json", HTTP_IDEMPOTENCY_KEY="k")
    assert (one.status_code, two.status_code) == (201, 201)
    assert one.data["id"] != two.data["id"]


def test_overlong_idempotency_key_is_a_400(api, task) -> None:
    response = api.post(URL, {"task": "noop"}, format="json", HTTP_IDEMPOTENCY_KEY="k" * 256)
    assert response.status_code == 400
    assert "Idempotency-Key" in response.data
    assert not Run.objects.exists()


def test_idempotency_key_in_the_body_returns_the_first_run(api, task, broker) -> None:
    body = {"task": "noop", "kwargs": {"x": 1}, "idempotency_key": "order-42"}
    responses = [api.post(URL, body, format="json") for _ in range(3)]

    assert [r.status_code for r in responses] == [201, 200, 200]
    assert {r.data["id"] for r in responses} == {responses[0].data["id"]}
    assert Run.objects.get().idempotency_key == "order-42"


def test_idempotency_key_in_the_body_and_the_same_header_is_one_key(api, task, broker) -> None:
    body = {"task": "noop", "idempotency_key": "k"}
    first = api.post(URL, body, format="json", HTTP_IDEMPOTENCY_KEY="k")
    again = api.post(URL, {"task": "noop"}, format="json", HTTP_IDEMPOTENCY_KEY="k")

    assert (first.status_code, again.status_code) == (201, 200)
    assert again.data["id"] == first.data["id"]


def test_idempotency_key_in_the_body_differing_from_the_header_is_a_400(api, task) -> None:
    response = api.post(
        URL, {"task": "noop", "idempotency_key": "a"}, format="json", HTTP_IDEMPOTENCY_KEY="b"
    )

    assert response.status_code == 400
    assert "Idempotency-Key" in str(response.data["idempotency_key"])
    assert not Run.objects.exists()


@pytest.mark.parametrize("key", ["k" * 256, "line\nbreak"])
def test_bad_idempotency_key_in_the_body_is_a_400(api, task, key) -> None:
    response = api.post(URL, {"task": "noop", "idempotency_key": key}, format="json")
    assert response.status_code == 400
    assert "idempotency_key" in response.data
    assert not Run.objects.exists()


# --- bulk ---------------------------------------------------------------------------


def test_bulk_submit_returns_the_runs_in_order(api, task, broker, django_capture_on_commit_callbacks) -> None:
    bodies = [{"task": "noop", "kwargs": {"i": i}} for i in range(5)]
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post(URL + "bulk/", {"runs": bodies}, format="json")

    assert response.status_code == 201
    assert [run["kwargs"]["i"] for run in response.data] == list(range(5))
    assert sorted(queued_ids(broker)) == sorted(f"{run['id']}.1" for run in response.data)


def test_bulk_with_bad_items_is_a_400_naming_each_index_and_writes_nothing(api, task, broker) -> None:
    bodies = [{"task": "noop"}, {"task": "missing"}, {"task": "noop"}, {"task": "noop", "priority": 99}]
    response = api.post(URL + "bulk/", {"runs": bodies}, format="json")

    assert response.status_code == 400
    assert set(response.data["runs"]) == {1, 3}
    assert "task" in response.data["runs"][1]
    assert "priority" in response.data["runs"][3]
    assert not Run.objects.exists()
    assert queued_ids(broker) == []


@pytest.mark.parametrize("runs", [[], [{"task": "noop"}] * 1001, "x"])
def test_bulk_of_no_runs_or_over_1000_is_a_400(api, task, runs) -> None:
    response = api.post(URL + "bulk/", {"runs": runs}, format="json")
    assert response.status_code == 400
    assert "runs" in response.data
    assert not Run.objects.exists()


def test_bulk_of_1000_is_accepted(api, task, broker) -> None:
    response = api.post(URL + "bulk/", {"runs": [{"task": "noop"}] * 1000}, format="json")
    assert response.status_code == 201
    assert Run.objects.count() == 1000


def test_bulk_reads_each_task_it_names_once(api, task, make_task, broker) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    make_task(name="other")
    bodies = [{"task": "noop"}, {"task": "other"}, {"task": "missing"}] * 10

    with CaptureQueriesContext(connection) as queries:
        response = api.post(URL + "bulk/", {"runs": bodies}, format="json")

    assert response.status_code == 400  # every "missing" is named
    assert sorted(response.data["runs"]) == list(range(2, 30, 3))
    task_reads = [q for q in queries if re.search(r"^SELECT .* FROM [`\"]tasks_app_task[`\"]", q["sql"])]
    assert len(task_reads) == 2 + 10  # noop and other once; a name that is no task each time


def test_bulk_with_a_disabled_task_is_a_409_naming_the_index(api, task, make_task) -> None:
    make_task(name="off", enabled=False)
    response = api.post(URL + "bulk/", {"runs": [{"task": "noop"}, {"task": "off"}]}, format="json")
    assert response.status_code == 409
    assert "runs[1]" in response.data["detail"]
    assert not Run.objects.exists()


def test_repeated_bulk_with_item_keys_returns_the_same_runs_with_200(api, task, broker) -> None:
    bodies = [{"task": "noop", "kwargs": {"i": i}, "idempotency_key": f"item-{i}"} for i in range(3)]
    first = api.post(URL + "bulk/", {"runs": bodies}, format="json")
    again = api.post(URL + "bulk/", {"runs": bodies}, format="json")

    assert (first.status_code, again.status_code) == (201, 200)
    assert [run["id"] for run in again.data] == [run["id"] for run in first.data]
    assert Run.objects.count() == 3


def test_bulk_mixing_repeats_and_new_items_is_a_201_in_order(api, task, broker) -> None:
    first = api.post(URL, {"task": "noop", "idempotency_key": "old"}, format="json")
    bodies = [{"task": "noop", "kwargs": {"new": 1}}, {"task": "noop", "idempotency_key": "old"}]
    response = api.post(URL + "bulk/", {"runs": bodies}, format="json")

    assert response.status_code == 201
    assert response.data[1]["id"] == first.data["id"]
    assert response.data[0]["kwargs"] == {"new": 1}
    assert Run.objects.count() == 2


def test_bulk_item_reusing_a_key_with_another_body_is_a_409_and_creates_nothing(api, task, broker) -> None:
    api.post(URL, {"task": "noop", "kwargs": {"x": 1}, "idempotency_key": "k"}, format="json")
    bodies = [{"task": "noop"}, {"task": "noop", "kwargs": {"x": 2}, "idempotency_key": "k"}]
    response = api.post(URL + "bulk/", {"runs": bodies}, format="json")

    assert response.status_code == 409
    assert "runs[1]" in response.data["detail"]
    assert Run.objects.count() == 1  # all or nothing


def test_bulk_items_with_one_key_are_one_run_or_a_400_if_they_differ(api, task, broker) -> None:
    same = api.post(URL + "bulk/", {"runs": [{"task": "noop", "idempotency_key": "k"}] * 2}, format="json")
    assert same.status_code == 201
    assert same.data[0]["id"] == same.data[1]["id"]

    bodies = [
        {"task": "noop", "idempotency_key": "j"},
        {"task": "noop", "kwargs": {"x": 1}, "idempotency_key": "j"},
    ]
    differ = api.post(URL + "bulk/", {"runs": bodies}, format="json")
    assert differ.status_code == 400
    assert "idempotency_key" in differ.data["runs"][1]
    assert Run.objects.count() == 1


def test_bulk_idempotency_header_keys_each_item_by_its_index(api, task, broker) -> None:
    bodies = [{"task": "noop", "kwargs": {"i": i}} for i in range(3)]
    first = api.post(URL + "bulk/", {"runs": bodies}, format="json", HTTP_IDEMPOTENCY_KEY="batch-7")
    again = api.post(URL + "bulk/", {"runs": bodies}, format="json", HTTP_IDEMPOTENCY_KEY="batch-7")

    assert (first.status_code, again.status_code) == (201, 200)
    assert [run["idempotency_key"] for run in first.data] == ["batch-7:0", "batch-7:1", "batch-7:2"]
    assert [run["id"] for run in again.data] == [run["id"] for run in first.data]


# --- reading ------------------------------------------------------------------------


def test_list_is_newest_first_and_cursor_paginated(api, task, make_run) -> None:
    ids = [make_run(task).pk for _ in range(5)]

    first = api.get(URL, {"page_size": 2})
    second = api.get(first.data["next"])
    third = api.get(second.data["next"])

    assert [r["id"] for r in first.data["results"]] == ids[::-1][:2]
    assert [r["id"] for r in second.data["results"]] == ids[::-1][2:4]
    assert [r["id"] for r in third.data["results"]] == ids[::-1][4:]
    assert third.data["next"] is None
    assert first.data["previous"] is None and second.data["previous"] is not None


def test_list_filters_by_task_and_state(api, make_task, make_run) -> None:
    a, b = make_task(name="a"), make_task(name="b")
    failed_a = make_run(a, S.FAILED)
    make_run(a, S.COMPLETED)
    retrying_b = make_run(b, S.RETRYING)

    by_task = api.get(URL, {"task": "a", "state": "failed"})
    by_states = api.get(URL + "?state=failed&state=retrying")

    assert [r["id"] for r in by_task.data["results"]] == [failed_a.pk]
    assert {r["id"] for r in by_states.data["results"]} == {failed_a.pk, retrying_b.pk}


def test_list_filters_by_creation_time(api, task, make_run) -> None:
    old = make_run(task, created_at=NOW - dt.timedelta(days=2))
    new = make_run(task, created_at=NOW)

    after = api.get(URL, {"created_after": (NOW - dt.timedelta(days=1)).isoformat()})
    before = api.get(URL, {"created_before": (NOW - dt.timedelta(days=1)).isoformat()})

    assert [r["id"] for r in after.data["results"]] == [new.pk]
    assert [r["id"] for r in before.data["results"]] == [old.pk]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"state": "bogus"}, "state"),
        ({"created_after": "yesterday"}, "created_after"),
        ({"schedule": "x"}, "schedule"),
    ],
)
def test_invalid_filter_is_a_400_naming_it(api, task, params, field) -> None:
    response = api.get(URL, params)
    assert response.status_code == 400
    assert field in response.data


def test_filters_on_schedule_and_workflow_run_find_no_run_yet(api, task, make_run) -> None:
    make_run(task)
    assert api.get(URL, {"schedule": 1}).data["results"] == []
    assert api.get(URL, {"workflow_run": 1}).data["results"] == []


def test_one_run_its_events_and_its_logs(api, task, make_run) -> None:
    run = make_run(task, S.PENDING)
    execution.claim(run, 1, "w1")
    RunLog.objects.create(run=run, level="INFO", message="hello")

    one = api.get(f"{URL}{run.pk}/")
    events = api.get(f"{URL}{run.pk}/events/")
    logs = api.get(f"{URL}{run.pk}/logs/")

    assert one.status_code == 200 and one.data["state"] == "running" and one.data["worker"] == "w1"
    assert [(e["from_state"], e["to_state"], e["actor"]) for e in events.data["results"]] == [
        ("pending", "running", "worker")
    ]
    assert set(events.data["results"][0]) >= {"from_state", "to_state", "at", "reason", "actor"}
    assert [(line["level"], line["message"]) for line in logs.data["results"]] == [("INFO", "hello")]
    assert set(logs.data["results"][0]) == {"at", "level", "message"}


def test_a_run_reads_the_same_in_its_page_the_list_and_a_control(api, task, make_run) -> None:
    run = make_run(task, S.PENDING, kwargs={"x": 1})

    one = api.get(f"{URL}{run.pk}/").data
    listed = api.get(URL).data["results"][0]
    paused = api.post(f"{URL}{run.pk}/pause/").data

    assert one == listed
    assert RUN_FIELDS <= set(one) and (one["task"], one["kwargs"]) == ("noop", {"x": 1})
    assert (one["state"], paused["state"]) == ("pending", "paused")
    assert {k: v for k, v in paused.items() if k != "state"} == {k: v for k, v in one.items() if k != "state"}


@pytest.mark.parametrize("suffix", ["", "events/", "logs/", "cancel/"])
def test_unknown_run_is_a_404(api, suffix) -> None:
    method = api.post if suffix == "cancel/" else api.get
    assert method(f"{URL}999999/{suffix}").status_code == 404


# --- controls -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "source", "target"),
    [
        ("cancel", S.CREATED, S.CANCELLED),
        ("cancel", S.PENDING, S.CANCELLED),
        ("cancel", S.RETRYING, S.CANCELLED),
        ("cancel", S.PAUSED, S.CANCELLED),
        ("pause", S.CREATED, S.PAUSED),
        ("pause", S.PENDING, S.PAUSED),
        ("pause", S.RETRYING, S.PAUSED),
        ("resume", S.PAUSED, S.PENDING),
        ("retry", S.FAILED, S.PENDING),
        ("retry", S.CANCELLED, S.PENDING),
    ],
)
def test_control_moves_the_run_and_records_who(api, task, make_run, broker, action, source, target) -> None:
    run = make_run(task, source)

    response = api.post(f"{URL}{run.pk}/{action}/")

    assert response.status_code == 200, response.data
    assert response.data["state"] == target
    event = RunEvent.objects.get(run=run)
    assert (event.from_state, event.to_state, event.actor, event.actor_name) == (
        source,
        target,
        "user",
        "owner",
    )


@pytest.mark.parametrize(
    ("action", "source"),
    [
        ("cancel", S.COMPLETED),
        ("cancel", S.FAILED),
        ("cancel", S.SKIPPED),
        ("pause", S.PAUSED),
        ("pause", S.COMPLETED),
        ("resume", S.PENDING),
        ("resume", S.RUNNING),
        ("retry", S.COMPLETED),
        ("retry", S.RUNNING),
        ("retry", S.SKIPPED),
    ],
)
def test_illegal_control_is_a_409_naming_the_state(api, task, make_run, action, source) -> None:
    run = make_run(task, source)

    response = api.post(f"{URL}{run.pk}/{action}/")

    assert response.status_code == 409
    assert response.data["state"] == source
    assert source in response.data["detail"]
    assert Run.objects.get(pk=run.pk).state == source
    assert not RunEvent.objects.filter(run=run).exists()


def test_resume_and_retry_send_a_new_message(
    api, task, make_run, broker, django_capture_on_commit_callbacks
) -> None:
    paused = make_run(task, S.PAUSED, message_number=1)
    failed = make_run(task, S.FAILED, message_number=2, retries=3, error={"type": "X"})

    with django_capture_on_commit_callbacks(execute=True):
        api.post(f"{URL}{paused.pk}/resume/")
        api.post(f"{URL}{failed.pk}/retry/")

    failed.refresh_from_db()
    assert (failed.retries, failed.finished_at, failed.message_number) == (0, None, 3)
    assert sorted(queued_ids(broker)) == sorted([f"{paused.pk}.2", f"{failed.pk}.3"])


def test_pause_of_a_running_run_needs_a_checkpointing_handler(api, make_task, make_run) -> None:
    plain = make_run(make_task(handler="builtin.noop"), S.RUNNING)
    sleeper = make_run(make_task(handler="builtin.sleep"), S.RUNNING)

    refused = api.post(f"{URL}{plain.pk}/pause/")
    paused = api.post(f"{URL}{sleeper.pk}/pause/")

    assert refused.status_code == 409
    assert "checkpoint" in refused.data["detail"]
    assert Run.objects.get(pk=plain.pk).state == S.RUNNING
    assert paused.status_code == 200 and paused.data["state"] == "paused"


def test_cancel_of_a_running_run_revokes_its_message(api, task, make_run, broker) -> None:
    run = make_run(task, S.RUNNING, message_number=2)
    response = api.post(f"{URL}{run.pk}/cancel/")
    assert response.status_code == 200
    assert response.data["state"] == "cancelled"
    assert response.data["finished_at"] is not None


@pytest.mark.parametrize("action", ["cancel", "pause", "resume", "retry"])
def test_controls_need_the_change_permission(reader, anonymous, task, make_run, action) -> None:
    run = make_run(task, S.PAUSED if action == "resume" else S.FAILED if action == "retry" else S.PENDING)
    assert anonymous.post(f"{URL}{run.pk}/{action}/").status_code == 401
    assert reader.post(f"{URL}{run.pk}/{action}/").status_code == 403
    assert not RunEvent.objects.filter(run=run).exists()


def test_submit_needs_the_add_permission(reader, anonymous, task) -> None:
    assert anonymous.post(URL, {"task": "noop"}, format="json").status_code == 401
    assert reader.post(URL, {"task": "noop"}, format="json").status_code == 403
    assert reader.post(URL + "bulk/", {"runs": [{"task": "noop"}]}, format="json").status_code == 403
    assert not Run.objects.exists()


def test_reader_may_read_runs(reader, anonymous, task, make_run) -> None:
    run = make_run(task)
    assert reader.get(f"{URL}{run.pk}/").status_code == 200
    assert anonymous.get(f"{URL}{run.pk}/").status_code == 401
    assert anonymous.get(URL).status_code == 401


def wsgi(text: str) -> str:
    """A header as WSGI hands it over: its bytes read as latin-1."""
    return text.encode("utf-8").decode("latin-1")


def test_an_idempotency_key_is_read_as_utf8(api, task, broker) -> None:
    first = api.post(URL, {"task": "noop"}, format="json", HTTP_IDEMPOTENCY_KEY=wsgi("clé-✓-𝄞"))
    again = api.post(URL, {"task": "noop"}, format="json", HTTP_IDEMPOTENCY_KEY=wsgi("clé-✓-𝄞"))
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.data["idempotency_key"] == "clé-✓-𝄞" and again.data["id"] == first.data["id"]


@pytest.mark.parametrize(
    ("header", "says"),
    [
        ("key-one,key-two", "one Idempotency-Key"),
        ("\xff\xfe", "UTF-8"),
        ("a\x01b", "control"),
        ("é" * 256, "255"),
    ],
)
def test_a_bad_idempotency_key_is_a_400(api, task, header, says) -> None:
    value = header if header.startswith("\xff") else wsgi(header)
    response = api.post(URL, {"task": "noop"}, format="json", HTTP_IDEMPOTENCY_KEY=value)
    assert response.status_code == 400
    assert says in str(response.data["Idempotency-Key"])
    assert not Run.objects.exists()


def test_key_the_database_holds_equal_is_a_repeat_not_an_error(api, task, broker) -> None:
    from django.db import connection

    first = api.post(URL, {"task": "noop", "idempotency_key": "Order-42"}, format="json")
    again = api.post(URL, {"task": "noop", "idempotency_key": "order-42"}, format="json")

    if connection.vendor == "mysql":  # its collation compares keys without case
        assert (again.status_code, again.data["id"]) == (200, first.data["id"])
    else:
        assert again.status_code == 201
