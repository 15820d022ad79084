from __future__ import annotations

import datetime as dt

import pytest
import time_machine

from tasks_app import scheduling, submission
from tasks_app.lifecycle import RunState
from tasks_app.models import Run
from tasks_app.submission import IdempotencyConflict, RunRequest
from tests.conftest import queued_ids, queued_messages

S = RunState
NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def test_submitted_run_is_pending_and_sent_only_after_commit(
    make_task, broker, django_capture_on_commit_callbacks
) -> None:
    task = make_task(args=[1], kwargs={"a": 1, "b": 2}, priority=3, queue="default")

    with django_capture_on_commit_callbacks() as callbacks:
        run, created = submission.submit(RunRequest(task=task, kwargs={"b": 9}), by="alice")
        assert queued_ids(broker) == []  # nothing before the commit

    assert created
    assert len(callbacks) == 2  # lifecycle's announcement of the run's birth, and the publish
    stored = Run.objects.get(pk=run.pk)
    assert (stored.state, stored.args, stored.kwargs, stored.priority) == (
        S.PENDING,
        [1],
        {"a": 1, "b": 9},
        3,
    )
    assert list(stored.events.values_list("from_state", "to_state", "actor_name")) == [
        ("", S.CREATED, "alice"),
        (S.CREATED, S.PENDING, ""),
    ]
    callbacks[1]()  # the commit's callback publishes
    (message,) = queued_messages(broker)
    assert message["headers"]["id"] == f"{run.pk}.1"
    assert message["headers"]["task"] == "builtin.noop"
    assert message["content-type"] == "application/json"
    assert message["properties"]["priority"] == 6  # API priority 3 -> kombu's 9 - 3


def test_run_with_a_later_run_at_waits_in_created(
    make_task, broker, django_capture_on_commit_callbacks
) -> None:
    task = make_task()
    with time_machine.travel(NOW, tick=False), django_capture_on_commit_callbacks(execute=True):
        run, _ = submission.submit(RunRequest(task=task, run_at=NOW + dt.timedelta(hours=1)))

    run.refresh_from_db()
    assert (run.state, run.due_at, run.message_number) == (S.CREATED, NOW + dt.timedelta(hours=1), 0)
    assert queued_ids(broker) == []


def test_run_at_in_the_past_is_sent_at_once(make_task, broker, django_capture_on_commit_callbacks) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        run, _ = submission.submit(RunRequest(task=make_task(), run_at=NOW))
    assert Run.objects.get(pk=run.pk).state == S.PENDING
    assert queued_ids(broker) == [f"{run.pk}.1"]


def test_due_runs_are_sent_when_their_time_comes(
    make_task, broker, django_capture_on_commit_callbacks
) -> None:
    task = make_task()
    with time_machine.travel(NOW, tick=False):
        later, _ = submission.submit(RunRequest(task=task, run_at=NOW + dt.timedelta(minutes=5)))

    with django_capture_on_commit_callbacks(execute=True):
        assert scheduling.send_due_runs(now=NOW + dt.timedelta(minutes=4)) == 0
    assert Run.objects.get(pk=later.pk).state == S.CREATED

    with django_capture_on_commit_callbacks(execute=True):
        assert scheduling.send_due_runs(now=NOW + dt.timedelta(minutes=5)) == 1
    later.refresh_from_db()
    assert (later.state, later.message_number, later.due_at) == (S.PENDING, 1, None)
    assert later.events.last().reason == "due: sent to the broker"
    assert queued_ids(broker) == [f"{later.pk}.1"]


def test_retrying_run_is_sent_again_after_its_backoff(
    make_task, make_run, broker, django_capture_on_commit_callbacks
) -> None:
    run = make_run(make_task(), S.RETRYING, message_number=2, due_at=NOW)

    with django_capture_on_commit_callbacks(execute=True):
        assert scheduling.send_due_runs(now=NOW - dt.timedelta(seconds=1)) == 0
        assert scheduling.send_due_runs(now=NOW) == 1

    run.refresh_from_db()
    assert (run.state, run.message_number) == (S.PENDING, 3)
    assert list(run.events.values_list("from_state", "to_state")) == [(S.RETRYING, S.PENDING)]
    assert queued_ids(broker) == [f"{run.pk}.3"]


def test_paused_and_undated_runs_are_never_sent_by_the_sweep(make_task, make_run, broker) -> None:
    task = make_task()
    make_run(task, S.PAUSED, due_at=NOW)
    make_run(task, S.CREATED)  # waiting for something else (a step's upstream, a slot)
    assert scheduling.send_due_runs(now=NOW + dt.timedelta(days=1)) == 0


def test_same_idempotency_key_and_body_returns_the_first_run(make_task, broker) -> None:
    task = make_task()
    first, created = submission.submit(RunRequest(task=task, kwargs={"x": 1}, idempotency_key="k"))
    again, created_again = submission.submit(RunRequest(task=task, kwargs={"x": 1}, idempotency_key="k"))

    assert (created, created_again) == (True, False)
    assert again.pk == first.pk
    assert Run.objects.count() == 1


def test_same_idempotency_key_with_another_body_is_a_conflict(make_task, broker) -> None:
    task = make_task()
    first, _ = submission.submit(RunRequest(task=task, kwargs={"x": 1}, idempotency_key="k"))

    with pytest.raises(IdempotencyConflict) as conflict:
        submission.submit(RunRequest(task=task, kwargs={"x": 2}, idempotency_key="k"))

    assert conflict.value.run.pk == first.pk
    assert Run.objects.count() == 1


def test_bulk_submission_sends_every_run_over_one_commit(
    make_task, broker, django_capture_on_commit_callbacks
) -> None:
    task = make_task()
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        runs = submission.submit_many([RunRequest(task=task, kwargs={"i": i}) for i in range(20)])

    assert len(callbacks) == 2  # one announcement of the 20 births, one publish of all 20
    assert [run.kwargs["i"] for run in runs] == list(range(20))
    assert sorted(queued_ids(broker)) == sorted(f"{run.pk}.1" for run in runs)


def test_runs_inserted_in_several_statements_get_their_own_ids_in_order(make_task) -> None:
    from tasks_app.lifecycle import INSERT_BATCH

    task = make_task()
    runs = submission.submit_many([RunRequest(task=task, kwargs={"i": i}) for i in range(INSERT_BATCH + 3)])

    stored = dict(Run.objects.values_list("pk", "kwargs"))
    assert [stored[run.pk]["i"] for run in runs] == list(range(INSERT_BATCH + 3))
    assert all(not run._state.adding for run in runs)
    assert Run.objects.get(pk=runs[-1].pk).events.count() == 2  # created, then pending: the trigger's


@pytest.mark.django_db(transaction=True)  # the insert's own transaction is the outermost
def test_runs_inserted_in_several_statements_are_all_or_none(make_task) -> None:
    from django.db import DatabaseError

    from tasks_app.lifecycle import INSERT_BATCH

    task = make_task()
    requests = [RunRequest(task=task) for _ in range(INSERT_BATCH + 1)]
    requests[-1].priority = -1  # refused by the database, in the second statement

    with pytest.raises(DatabaseError):  # out of range, or its CHECK
        submission.submit_many(requests)

    assert not Run.objects.exists()


def test_publish_failure_leaves_the_run_pending(
    make_task, django_capture_on_commit_callbacks, caplog
) -> None:
    from celery import Celery

    from scheduler_site.celery import app

    unreachable = Celery("unreachable", broker="redis://127.0.0.1:1/0", set_as_current=False)
    unreachable.conf.task_publish_retry = False
    unreachable.conf.broker_connection_retry = False
    unreachable.conf.broker_transport_options = {"max_retries": 1, "interval_start": 0, "interval_step": 0}
    unreachable.set_current()
    try:
        with django_capture_on_commit_callbacks(execute=True):
            run, created = submission.submit(RunRequest(task=make_task()))
    finally:
        app.set_current()
    assert created
    run.refresh_from_db()
    assert run.state == S.PENDING
    assert run.due_at is not None  # to be sent again by beat
    assert f"broker refused 1 run message(s) [{run.pk}]; sending again later" in caplog.text


def test_pending_run_the_broker_refused_is_sent_again_under_a_new_number(
    make_task, make_run, broker, django_capture_on_commit_callbacks
) -> None:
    run = make_run(make_task(), S.PENDING, message_number=1, due_at=NOW)

    with django_capture_on_commit_callbacks(execute=True):
        assert scheduling.send_due_runs(now=NOW - dt.timedelta(seconds=1)) == 0
        assert scheduling.send_due_runs(now=NOW) == 1

    run.refresh_from_db()
    assert (run.state, run.message_number, run.due_at) == (S.PENDING, 2, None)
    assert not run.events.exists()  # no move: it was pending all along
    assert queued_ids(broker) == [f"{run.pk}.2"]
