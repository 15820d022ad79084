"""diagnosis.why_not_running: each reason a waiting run can have, read from the real places
(the run's row, its workflow run, the task's Redis lock, the worker registry, the queue)."""

from __future__ import annotations

import datetime as dt

import pytest
import time_machine

from tasks_app import concurrency, diagnosis, lifecycle, redis_client, workers, workflows
from tasks_app.choices import ConcurrencyPolicy
from tasks_app.diagnosis import Reason, why_not_running
from tasks_app.lifecycle import RunState
from tasks_app.models import Run, Workflow
from tasks_app.models.workflows import check_steps

S = RunState
NOW = dt.datetime(2026, 3, 2, 12, 0, tzinfo=dt.UTC)
LATER = NOW + dt.timedelta(minutes=5)


@pytest.fixture(autouse=True)
def _frozen():
    with time_machine.travel(NOW, tick=False):
        yield


@pytest.fixture
def serving(db):
    """An online worker that takes the default queue and has builtin.noop."""
    workers.record_worker("w1", queues=["default"], concurrency=2, handler_names=["builtin.noop"], now=NOW)


def texts(reasons: list[Reason]) -> list[str]:
    return [reason.text for reason in reasons]


@pytest.mark.parametrize("state", [S.RUNNING, S.COMPLETED, S.FAILED, S.CANCELLED, S.SKIPPED])
def test_a_running_or_finished_run_has_no_reason(task, make_run, serving, state) -> None:
    assert why_not_running(make_run(task, state, due_at=LATER)) == []


def test_a_run_due_later_waits_for_its_time(task, make_run, serving) -> None:
    run = make_run(task, S.CREATED, due_at=LATER)
    assert texts(why_not_running(run)) == ["Waiting for its time: it is due at 2026-03-02 12:05:00 UTC."]


def test_a_run_whose_time_has_come_is_not_said_to_wait_for_it(task, make_run, serving) -> None:
    run = make_run(task, S.CREATED, due_at=NOW - dt.timedelta(seconds=1))
    assert not any("its time" in text for text in texts(why_not_running(run)))


def test_a_retrying_run_waits_out_its_backoff(task, make_run, serving) -> None:
    run = make_run(task, S.RETRYING, attempt=1, due_at=LATER)
    assert texts(why_not_running(run)) == [
        "Waiting out its retry backoff: attempt 2 is due at 2026-03-02 12:05:00 UTC."
    ]


def test_a_pending_run_the_broker_refused_is_sent_again_later(task, make_run, serving) -> None:
    run = make_run(task, S.PENDING, due_at=LATER)
    assert texts(why_not_running(run))[0] == (
        "Its message did not reach the broker: it is sent again at 2026-03-02 12:05:00 UTC."
    )


def test_a_paused_run_says_who_paused_it(task, make_run, serving) -> None:
    run = make_run(task, S.PAUSED, state_actor_name="boss", state_changed_at=NOW)
    assert texts(why_not_running(run)) == [
        "Paused by boss at 2026-03-02 12:00:00 UTC: it is not sent until resumed."
    ]


def test_a_workflow_step_waits_for_its_unfinished_upstream_steps(
    task, serving, broker, django_capture_on_commit_callbacks
) -> None:
    steps = check_steps(
        [
            {"key": "A", "task": "noop"},
            {"key": "B", "task": "noop"},
            {"key": "C", "task": "noop", "depends_on": ["A", "B"]},
        ],
        {"noop"},
    )
    with django_capture_on_commit_callbacks(execute=True):
        workflow_run = workflows.start(Workflow.objects.create(name="join", steps=steps), by="boss")
    runs = workflows.latest_runs(workflow_run.pk)
    lifecycle.move(runs["B"], S.RUNNING)
    lifecycle.move(runs["B"], S.COMPLETED)  # its advance is left out: C stays created

    reasons = [reason for reason in why_not_running(runs["C"]) if "upstream" in reason.text]

    assert reasons == [
        Reason("Waiting for upstream step A (pending; its trigger rule is all_success).", run_id=runs["A"].pk)
    ]


def test_a_workflow_step_whose_upstream_steps_finished_waits_for_none(
    task, serving, broker, django_capture_on_commit_callbacks
) -> None:
    steps = check_steps(
        [{"key": "A", "task": "noop"}, {"key": "B", "task": "noop", "depends_on": ["A"]}], {"noop"}
    )
    with django_capture_on_commit_callbacks(execute=True):
        workflow_run = workflows.start(Workflow.objects.create(name="pair", steps=steps), by="boss")
    runs = workflows.latest_runs(workflow_run.pk)
    lifecycle.move(runs["A"], S.RUNNING)
    lifecycle.move(runs["A"], S.COMPLETED)  # not advanced yet

    assert not any("upstream" in text for text in texts(why_not_running(runs["B"])))


def test_a_run_held_by_a_concurrency_policy_names_the_run_holding_the_slot(
    make_task, make_run, serving, broker
) -> None:
    task = make_task(concurrency_policy=ConcurrencyPolicy.QUEUE)
    holder = make_run(task, S.CREATED)
    concurrency.gate([holder])  # takes the task's lock and is sent
    waiting = make_run(task, S.CREATED)

    reasons = why_not_running(waiting)

    assert reasons == [
        Reason(
            f"Waiting for a concurrency slot (policy queue): run {holder.pk} holds task {task.name}'s lock.",
            run_id=holder.pk,
        )
    ]


def test_a_run_waiting_for_a_free_slot_is_said_to_be_sent_soon(make_task, make_run, serving, broker) -> None:
    waiting = make_run(make_task(concurrency_policy=ConcurrencyPolicy.QUEUE), S.CREATED)
    assert texts(why_not_running(waiting)) == [
        "Waiting for a concurrency slot (policy queue): it is free, and beat sends the run within seconds."
    ]


def test_a_slot_whose_holder_cannot_be_read_says_so(make_task, make_run, serving, settings) -> None:
    waiting = make_run(make_task(concurrency_policy=ConcurrencyPolicy.FORBID), S.CREATED)
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    redis_client.client.cache_clear()
    try:
        reasons = texts(why_not_running(waiting))
    finally:
        redis_client.client.cache_clear()

    assert len(reasons) == 1
    assert reasons[0].startswith(
        "Waiting for a concurrency slot (policy forbid); who holds it cannot be read now"
    )


def test_a_disabled_task_is_named(make_task, make_run, serving) -> None:
    run = make_run(make_task(name="off", enabled=False), S.CREATED, due_at=LATER)
    assert "Task off is disabled: it takes no new runs (this one, submitted before, is still sent)." in (
        texts(why_not_running(run))
    )


@pytest.mark.parametrize(
    ("seen", "says"),
    [
        ([], "No worker is online: it waits until one starts."),
        (
            [("w1", ["other"], ["builtin.noop"], NOW)],
            "No online worker takes queue default: start one with -Q default.",
        ),
        (
            [("w1", ["default"], ["reports.build"], NOW), ("w2", ["default", "x"], [], NOW)],
            "2 online worker(s) take queue default, but none has handler builtin.noop: "
            "after 5 refused deliveries the run fails.",
        ),
        # It served the queue, but its last heartbeat is a minute old: offline.
        ([("w1", ["default"], ["builtin.noop"], NOW - dt.timedelta(minutes=1))], "No worker is online"),
    ],
)
def test_a_run_no_online_worker_serves_says_what_is_missing(task, make_run, settings, seen, says) -> None:
    settings.RUN_MAX_DELIVERIES = 5
    for hostname, queues, handler_names, beat in seen:
        workers.record_worker(hostname, queues=queues, concurrency=1, handler_names=handler_names, now=beat)

    reasons = texts(why_not_running(make_run(task, S.CREATED, due_at=LATER)))

    assert reasons[0].startswith("Waiting for its time")
    assert reasons[1].startswith(says) and len(reasons) == 2


def test_a_run_an_online_worker_serves_has_no_worker_reason(task, make_run, serving) -> None:
    assert not any(
        "worker" in text for text in texts(why_not_running(make_run(task, S.CREATED, due_at=LATER)))
    )


def test_a_pending_run_counts_the_runs_ahead_of_it_on_its_queue(make_task, make_run, serving) -> None:
    task, elsewhere = make_task(), make_task(queue="other")
    sent = NOW - dt.timedelta(minutes=1)

    def pending(on=task, priority: int = 3, at: dt.datetime = sent, state: RunState = S.PENDING):
        return make_run(on, state, priority=priority, state_changed_at=at)

    earlier = sent - dt.timedelta(seconds=1)
    pending(priority=3, at=earlier)  # ahead: the same priority, sent before
    pending(priority=7, at=sent + dt.timedelta(seconds=5))  # ahead: higher, whenever it was sent
    before_at_same_instant = pending(priority=3)  # ahead: sent at the same instant, a lower id
    run = pending(priority=3)
    pending(priority=3)  # behind: the same instant, a higher id
    pending(priority=3, at=sent + dt.timedelta(seconds=1))  # behind: sent later
    pending(priority=2, at=earlier)  # behind: lower, though sent before
    pending(on=elsewhere, priority=9, at=earlier)  # another queue
    pending(priority=9, at=earlier, state=S.RUNNING)  # taken already
    assert before_at_same_instant.pk < run.pk

    assert diagnosis.ahead_of(run) == 3
    assert texts(why_not_running(run)) == ["3 run(s) are ahead of it on queue default."]


def test_a_pending_run_first_in_line_is_taken_by_the_first_free_worker(task, make_run, serving) -> None:
    run = make_run(task, S.PENDING, state_changed_at=NOW)
    assert texts(why_not_running(run)) == ["It is next on queue default: the first free worker takes it."]


def test_the_diagnosis_of_a_workflow_step_takes_a_few_queries(
    task, serving, broker, django_capture_on_commit_callbacks, django_assert_max_num_queries
) -> None:
    steps = [{"key": f"s{i}", "task": "noop"} for i in range(20)]
    steps.append({"key": "last", "task": "noop", "depends_on": [f"s{i}" for i in range(20)]})
    with django_capture_on_commit_callbacks(execute=True):
        workflow_run = workflows.start(
            Workflow.objects.create(name="wide", steps=check_steps(steps, {"noop"}))
        )
    last = Run.objects.select_related("task").get(pk=workflows.latest_runs(workflow_run.pk)["last"].pk)

    with django_assert_max_num_queries(3):  # the steps, the upstream states, the online workers
        reasons = why_not_running(last)

    assert len(reasons) == 20


def test_a_backlog_ahead_is_counted_only_so_far(task, make_run, serving, monkeypatch) -> None:
    monkeypatch.setattr(diagnosis, "AHEAD_COUNTED", 3)
    for _ in range(5):
        make_run(task, S.PENDING, state_changed_at=NOW - dt.timedelta(minutes=1))
    run = make_run(task, S.PENDING, state_changed_at=NOW)

    assert diagnosis.ahead_of(run) == 4  # one past the limit: "more than"
    assert texts(why_not_running(run)) == ["More than 3 run(s) are ahead of it on queue default."]
