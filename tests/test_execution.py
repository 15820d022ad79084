"""The worker's entry point, called directly (no worker process): outcomes and their records."""

from __future__ import annotations

import datetime as dt
import re

import pytest
import time_machine
from django.core import signing
from django.db import OperationalError
from django.utils import timezone

from tasks_app import controls, submission
from tasks_app.execution import execute, patiently, record_hard_timeout
from tasks_app.lifecycle import RunState
from tasks_app.models import Run, RunLog, Task
from tasks_app.run_loader import _RUN_FIELDS, from_message
from tasks_app.run_loader import _SALT as SALT

S = RunState
NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def states(run: Run) -> list[tuple[str, str]]:
    return list(run.events.values_list("from_state", "to_state"))


def test_noop_run_completes_with_its_result(make_task, make_run) -> None:
    task = make_task(kwargs={"a": 1})
    run = make_run(task, S.PENDING, kwargs={"a": 1, "b": 2})

    execute(run.pk, 1, hostname="w1")

    run.refresh_from_db()
    assert run.state == S.COMPLETED
    assert run.result == {"kwargs": {"a": 1, "b": 2}, "upstream": {}}
    assert (run.attempt, run.worker) == (1, "w1")
    assert run.started_at <= run.finished_at
    assert states(run) == [(S.PENDING, S.RUNNING), (S.RUNNING, S.COMPLETED)]


def test_failure_without_retries_left_fails_with_the_exception(make_task, make_run) -> None:
    run = make_run(make_task(handler="tests.explode"), S.PENDING, kwargs={"message": "no disk"})

    execute(run.pk, 1, hostname="w1")

    run.refresh_from_db()
    assert run.state == S.FAILED
    assert run.error["type"] == "ValueError"
    assert run.error["message"] == "no disk"
    assert "raise ValueError(message)" in run.error["traceback"]
    assert run.events.last().reason == "ValueError after 1 attempt"


@time_machine.travel(NOW, tick=False)
def test_failure_with_retries_left_waits_out_the_backoff(make_task, make_run) -> None:
    task = make_task(handler="tests.explode", max_retries=3, retry_backoff=5, retry_jitter=False)
    run = make_run(task, S.PENDING, retries=1)

    execute(run.pk, 1, hostname="w1")

    run.refresh_from_db()
    assert run.state == S.RETRYING
    assert run.retries == 2
    assert run.due_at == NOW + dt.timedelta(seconds=10)  # 5 s doubled once
    assert run.error["type"] == "ValueError"
    assert run.events.last().reason == "ValueError; retry 2 of 3 in 10.000s"


def test_soft_time_limit_fails_with_reason_timeout(make_task, make_run) -> None:
    task = make_task(handler="tests.soft_timeout", soft_time_limit=3, max_retries=5)
    run = make_run(task, S.PENDING)

    execute(run.pk, 1, hostname="w1")

    run.refresh_from_db()
    assert run.state == S.FAILED  # no retry after a timeout
    assert run.error["type"] == "SoftTimeLimitExceeded"
    assert run.error["message"] == "soft time limit (3s) exceeded"
    assert run.events.last().reason == "timeout"


def test_hard_time_limit_recorded_from_the_main_process(make_task, make_run) -> None:
    run = make_run(make_task(time_limit=2), S.RUNNING)

    record_hard_timeout(run.pk, 1, error={"type": "TimeLimitExceeded", "message": "m", "traceback": ""})

    run.refresh_from_db()
    assert run.state == S.FAILED
    assert run.events.last().reason == "timeout"


def test_hard_time_limit_of_an_older_message_changes_nothing(make_task, make_run) -> None:
    run = make_run(make_task(time_limit=2), S.RUNNING, message_number=2)

    record_hard_timeout(run.pk, 1, error={"type": "TimeLimitExceeded", "message": "m", "traceback": ""})

    assert Run.objects.get(pk=run.pk).state == S.RUNNING


def test_result_that_is_not_json_fails_the_run(make_task, make_run) -> None:
    run = make_run(make_task(handler="tests.not_json"), S.PENDING)

    execute(run.pk, 1, hostname="w1")

    run.refresh_from_db()
    assert (run.state, run.error["type"]) == (S.FAILED, "TypeError")


def test_result_over_the_size_limit_fails_the_run(make_task, make_run, settings) -> None:
    settings.RUN_RESULT_MAX_BYTES = 100
    run = make_run(make_task(handler="tests.echo_big"), S.PENDING, kwargs={"size": 200})

    execute(run.pk, 1, hostname="w1")

    run.refresh_from_db()
    assert run.state == S.FAILED
    assert run.error["type"] == "ResultTooLarge"
    assert "RUN_RESULT_MAX_BYTES=100" in run.error["message"]


def test_stale_message_runs_nothing(make_task, make_run) -> None:
    run = make_run(make_task(handler="tests.explode"), S.PENDING, message_number=3)

    execute(run.pk, 2, hostname="w1")

    run.refresh_from_db()
    assert (run.state, run.attempt) == (S.PENDING, 0)
    assert not run.events.exists()


@pytest.mark.parametrize("state", [S.COMPLETED, S.RUNNING, S.CANCELLED, S.PAUSED])
def test_redelivered_message_never_reruns_the_run(make_task, make_run, state) -> None:
    run = make_run(make_task(handler="tests.explode"), state)

    execute(run.pk, 1, hostname="w2")

    assert Run.objects.get(pk=run.pk).state == state
    assert not run.events.exists()


def test_message_for_a_deleted_run_is_dropped(make_task) -> None:
    execute(987654, 1, hostname="w1")  # must not raise
    assert not Run.objects.exists()


def test_handler_logs_and_progress_are_kept_with_the_run(make_task, make_run) -> None:
    run = make_run(make_task(handler="tests.chatty"), S.PENDING)

    execute(run.pk, 1, hostname="w1")

    run.refresh_from_db()
    assert run.state == S.COMPLETED
    assert run.result == {"progress while running": {"fraction": 0.5, "message": "half way"}}
    assert list(RunLog.objects.filter(run=run).values_list("level", "message")) == [
        ("INFO", "hello world"),
        ("WARNING", "careful"),
    ]


def test_completed_run_progress_ends_at_one(make_task, make_run) -> None:
    run = make_run(make_task(handler="tests.chatty"), S.PENDING)

    execute(run.pk, 1, hostname="w1")

    run.refresh_from_db()
    assert run.progress == {"fraction": 1.0, "message": "completed"}


def test_resumed_run_keeps_its_first_started_at(make_task, make_run) -> None:
    first = NOW - dt.timedelta(minutes=5)
    task = make_task(handler="builtin.sleep")
    run = make_run(task, S.PAUSED, started_at=first, attempt=1, checkpoint={"remaining": 0.0})

    with time_machine.travel(NOW, tick=False):
        controls.resume(run, by="op")
        execute(run.pk, run.message_number, hostname="w1")

    run.refresh_from_db()
    assert (run.state, run.attempt) == (S.COMPLETED, 2)
    assert (run.started_at, run.finished_at) == (first, NOW)


def test_retry_by_hand_starts_the_run_afresh(make_task, make_run) -> None:
    run = make_run(
        make_task(), S.FAILED, started_at=NOW - dt.timedelta(hours=1), attempt=1, retries=2, refusals=5
    )

    with time_machine.travel(NOW, tick=False):
        controls.retry(run, by="op")
        execute(run.pk, run.message_number, hostname="w1")

    run.refresh_from_db()
    assert (run.state, run.attempt, run.retries, run.refusals) == (S.COMPLETED, 2, 0, 0)
    assert run.started_at == NOW


def test_outcome_of_a_run_cancelled_meanwhile_is_discarded(make_task, make_run) -> None:
    run = make_run(make_task(handler="tests.cancelled_meanwhile"), S.PENDING)

    execute(run.pk, 1, hostname="w1")

    run.refresh_from_db()
    assert run.state == S.CANCELLED
    assert run.result is None


def test_checkpoint_after_cancel_stops_the_handler(make_task, make_run) -> None:
    run = make_run(make_task(handler="tests.checkpoint_after_cancel"), S.PENDING)

    execute(run.pk, 1, hostname="w1")

    run.refresh_from_db()
    assert run.state == S.CANCELLED
    assert run.checkpoint is None  # not kept for a cancelled run
    assert run.result is None


def test_paused_sleep_keeps_its_checkpoint_and_resumes_from_it(make_task, make_run) -> None:
    task = make_task(handler="builtin.sleep")
    run = make_run(task, S.PAUSED, checkpoint={"remaining": 0.0}, kwargs={"seconds": 30})

    controls.resume(run, by="op")
    run.refresh_from_db()
    execute(run.pk, run.message_number, hostname="w1")

    run.refresh_from_db()
    assert run.state == S.COMPLETED  # the 30 s were already slept: nothing left
    assert run.result == {"slept": 30.0}
    assert RunLog.objects.get(run=run).message == "resuming with 0.0s of 30.0s left"


def test_timestamps_come_from_the_clock(make_task, make_run) -> None:
    run = make_run(make_task(), S.PENDING)
    with time_machine.travel(NOW, tick=False):
        execute(run.pk, 1, hostname="w1")
    run.refresh_from_db()
    assert run.started_at == run.finished_at == NOW
    assert timezone.is_aware(run.started_at)


def test_worker_tries_again_while_the_database_is_unreachable(db, monkeypatch, settings) -> None:
    # db: between tries it closes the broken connections, which touches the real ones.
    settings.WORKER_DATABASE_PATIENCE = 60
    waits: list[float] = []
    monkeypatch.setattr("tasks_app.execution.time.sleep", waits.append)
    answers = iter([OperationalError(2003, "Can't connect"), OperationalError(2013, "Lost"), "done"])

    def operation() -> str:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert patiently(operation, "record an outcome") == "done"
    assert waits == [0.1, 0.2]  # backing off


def test_worker_gives_up_on_the_database_after_its_patience(monkeypatch, settings) -> None:
    settings.WORKER_DATABASE_PATIENCE = 0
    monkeypatch.setattr("tasks_app.execution.time.sleep", pytest.fail)

    def operation() -> None:
        raise OperationalError(2003, "Can't connect")

    with pytest.raises(OperationalError):
        patiently(operation, "claim a run")


@pytest.mark.parametrize(
    ("limits", "run_max", "sent"),
    [
        ({}, 3600, [3600, None]),
        ({"time_limit": 10}, 3600, [10, None]),
        ({"soft_time_limit": 5, "time_limit": 10}, 3600, [10, 5]),
        ({"time_limit": 10**6, "soft_time_limit": 10**5}, 60, [60, 60]),  # written past validation
    ],
)
def test_every_message_carries_a_hard_limit_no_longer_than_run_max_duration(
    make_task, broker, settings, django_capture_on_commit_callbacks, limits, run_max, sent
) -> None:
    from tasks_app.submission import RunRequest
    from tests.conftest import queued_messages

    settings.RUN_MAX_DURATION = run_max
    task = make_task()
    Task.objects.filter(pk=task.pk).update(**limits)
    task.refresh_from_db()
    with django_capture_on_commit_callbacks(execute=True):
        submission.submit(RunRequest(task=task))
    (message,) = queued_messages(broker)
    assert message["headers"]["timelimit"] == sent


# --- what Celery is told: its tools (worker log, Flower, events) agree with the run ----


def celery_state(run: Run, message_number: int = 1) -> str:
    """The state Celery's own tracer ends the run's message in."""
    from celery.signals import task_prerun

    from tasks_app.execution import _check_connections_after_idle, celery_task_for

    task = celery_task_for(run.task.handler)
    # A worker's connection check would close the test's connection, which is in a transaction.
    task_prerun.disconnect(_check_connections_after_idle)
    try:
        return task.apply(kwargs={"run_id": run.pk, "message_number": message_number}).state
    finally:
        task_prerun.connect(_check_connections_after_idle)


def test_failed_run_ends_its_celery_task_failed(make_task, make_run) -> None:
    run = make_run(make_task(handler="tests.explode"), S.PENDING)

    assert celery_state(run) == "FAILURE"
    run.refresh_from_db()
    assert run.state == S.FAILED


def test_attempt_to_be_retried_ends_its_celery_task_retrying(make_task, make_run) -> None:
    run = make_run(make_task(handler="tests.explode", max_retries=2), S.PENDING)

    assert celery_state(run) == "RETRY"
    run.refresh_from_db()
    assert run.state == S.RETRYING


def test_completed_run_ends_its_celery_task_succeeded(make_task, make_run) -> None:
    run = make_run(make_task(), S.PENDING)

    assert celery_state(run) == "SUCCESS"


def test_message_that_runs_nothing_ends_its_celery_task_ignored(make_task, make_run) -> None:
    run = make_run(make_task(), S.PENDING, message_number=2)

    assert celery_state(run, message_number=1) == "IGNORED"  # a stale message
    run.refresh_from_db()
    assert run.state == S.PENDING


def test_run_cancelled_while_its_handler_ran_ends_its_celery_task_ignored(make_task, make_run) -> None:
    run = make_run(make_task(handler="tests.checkpoint_after_cancel"), S.PENDING)

    assert celery_state(run) == "IGNORED"


def test_message_names_the_task_and_the_run(
    make_task, broker, settings, django_capture_on_commit_callbacks
) -> None:
    from tasks_app.submission import RunRequest
    from tests.conftest import queued_messages

    task = make_task(name="nightly-report")
    with django_capture_on_commit_callbacks(execute=True):
        run, _ = submission.submit(RunRequest(task=task))
    (message,) = queued_messages(broker)
    assert message["headers"]["task"] == "builtin.noop"  # what the worker executes
    assert message["headers"]["shadow"] == "nightly-report"  # what its log and inspect show
    assert message["headers"]["id"] == f"{run.pk}.1"
    assert message["headers"]["kwargsrepr"] == repr({"run_id": run.pk, "message_number": 1})


@time_machine.travel(NOW, tick=False)  # the carried inputs' signature is timestamped
def test_a_run_message_is_the_one_celery_send_task_would_publish(make_task, make_run, broker) -> None:
    from celery import current_app

    from tasks_app import broker as platform_broker
    from tasks_app import run_loader
    from tests.conftest import queued_messages

    task = make_task(name="nightly-report", queue="reports", soft_time_limit=30, time_limit=60)
    run = make_run(task, S.PENDING, priority=7, kwargs={"day": "monday"})
    platform_broker.publish([run])
    (ours,) = queued_messages(broker, "reports")
    broker.flushdb()
    names = {"run_id": run.pk, "message_number": run.message_number}
    current_app.send_task(
        task.handler,
        kwargs={**names, **run_loader.carried(run)},
        kwargsrepr=repr(names),
        task_id=run.message_id,
        shadow=task.name,
        queue=task.queue,
        priority=platform_broker.message_priority(run.priority),
        soft_time_limit=30,
        time_limit=60,
    )
    (celerys,) = queued_messages(broker, "reports")

    # Only what is unique to every message, and what send_task() adds for result backends
    # (reply_to) or copies from its options (kwargsrepr, already in the headers) differs.
    for message in (ours, celerys):
        for key in ("delivery_tag", "reply_to", "kwargsrepr"):
            message["properties"].pop(key, None)
    assert ours == celerys
    assert ours["headers"]["timelimit"] == [60, 30]
    assert ours["properties"]["priority"] == platform_broker.message_priority(7)


# --- a message that carries its run ----------------------------------------------------


def sent(broker, run_or_task, **kwargs):
    """Submit a run (of a task) or publish a run, and return (the run, its message's kwargs as
    the worker decodes them)."""
    import base64

    from kombu.utils.json import loads

    from tasks_app import broker as platform_broker
    from tasks_app.submission import RunRequest
    from tests.conftest import queued_messages

    if isinstance(run_or_task, Task):
        run, _ = submission.submit(RunRequest(task=run_or_task, kwargs=kwargs))
    else:
        run = run_or_task
    platform_broker.publish([run])
    (message,) = queued_messages(broker)
    broker.flushdb()
    _args, message_kwargs, _embed = loads(base64.b64decode(message["body"]))
    return run, message_kwargs


def apply_message(run: Run, message_kwargs: dict) -> str:
    from celery.signals import task_prerun

    from tasks_app.execution import _check_connections_after_idle, celery_task_for

    task_prerun.disconnect(_check_connections_after_idle)
    try:
        return celery_task_for(run.task.handler).apply(kwargs=message_kwargs).state
    finally:
        task_prerun.connect(_check_connections_after_idle)


def test_a_message_carries_its_run_and_the_worker_does_not_read_it(make_task, broker) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    run, message_kwargs = sent(broker, make_task(), a=1)
    carried = from_message(message_kwargs["carried"])
    assert (carried.pk, carried.task.pk, carried.kwargs) == (run.pk, run.task_id, {"a": 1})

    with CaptureQueriesContext(connection) as queries:
        assert apply_message(run, message_kwargs) == "SUCCESS"

    reads = [q["sql"] for q in queries if re.search(r"^SELECT .* FROM [`\"]tasks_app_run[`\"]", q["sql"])]
    assert reads == []
    run.refresh_from_db()
    assert (run.state, run.attempt, run.result["kwargs"]) == (S.COMPLETED, 1, {"a": 1})
    assert states(run)[-2:] == [(S.PENDING, S.RUNNING), (S.RUNNING, S.COMPLETED)]


def test_carried_inputs_reach_the_handler_as_stored_even_what_looks_like_a_typed_value(
    make_task, broker
) -> None:
    typed = {"__type__": "datetime", "__value__": "2020-01-01T00:00:00"}  # kombu's own marker
    run, message_kwargs = sent(broker, make_task(), when=typed, many=[1.5, None, "x"])

    assert apply_message(run, message_kwargs) == "SUCCESS"

    run.refresh_from_db()
    assert run.result["kwargs"] == {"when": typed, "many": [1.5, None, "x"]}


def test_a_carried_run_that_moved_on_since_runs_nothing(make_task, broker) -> None:
    run, message_kwargs = sent(broker, make_task())
    controls.cancel(run, by="op")

    assert apply_message(run, message_kwargs) == "IGNORED"

    run.refresh_from_db()
    assert (run.state, run.attempt) == (S.CANCELLED, 0)


def test_a_carried_run_sent_again_is_claimed_only_by_its_latest_message(make_task, make_run, broker) -> None:
    run = make_run(make_task(), S.PENDING)
    _, first = sent(broker, run)
    Run.objects.filter(pk=run.pk).update(message_number=2)  # sent again meanwhile (recovery)
    run.refresh_from_db()
    _, second = sent(broker, run)

    assert apply_message(run, first) == "IGNORED"
    assert apply_message(run, second) == "SUCCESS"
    run.refresh_from_db()
    assert (run.state, run.attempt) == (S.COMPLETED, 1)


def test_a_failed_attempt_is_judged_by_its_task_as_it_is_now(make_task, broker) -> None:
    task = make_task(handler="tests.explode", max_retries=0)
    run, message_kwargs = sent(broker, task)
    Task.objects.filter(pk=task.pk).update(max_retries=2)  # edited after the message was sent

    assert apply_message(run, message_kwargs) == "RETRY"

    run.refresh_from_db()
    assert (run.state, run.retries) == (S.RETRYING, 1)


def test_a_message_of_another_shape_is_read_from_the_database(make_task, make_run) -> None:
    run = make_run(make_task(), S.PENDING)
    other_shape = signing.dumps({"shape": "another", "run": [run.pk], "task": [run.task_id]}, salt=SALT)

    assert from_message(None) is None
    assert from_message(other_shape) is None  # another version's fields
    message = {"run_id": run.pk, "message_number": 1, "carried": other_shape, "added_later": 1}
    assert apply_message(run, message) == "SUCCESS"
    run.refresh_from_db()
    assert run.state == S.COMPLETED


def test_a_carried_run_not_signed_with_our_key_runs_the_stored_inputs(make_task, broker) -> None:
    run, message_kwargs = sent(broker, make_task(), a=1)
    payload = signing.loads(message_kwargs["carried"], salt=SALT)
    payload["run"][_RUN_FIELDS.index("kwargs")] = {"a": "forged"}
    forged = dict(message_kwargs, carried=signing.dumps(payload, key="a forger's key", salt=SALT))

    assert from_message(forged["carried"]) is None
    assert apply_message(run, forged) == "SUCCESS"
    run.refresh_from_db()
    assert run.result["kwargs"] == {"a": 1}  # the stored inputs, not the message's


def test_inputs_too_large_to_carry_are_read_from_the_database(make_task, broker) -> None:
    from tasks_app.run_loader import CARRIED_MAX_BYTES

    big = "x" * CARRIED_MAX_BYTES
    run, message_kwargs = sent(broker, make_task(), big=big)

    assert "carried" not in message_kwargs
    assert apply_message(run, message_kwargs) == "SUCCESS"
    run.refresh_from_db()
    assert run.result["kwargs"] == {"big": big}


def test_a_run_sent_again_by_an_operator_carries_the_row_not_a_stale_copy(
    make_task, make_run, broker
) -> None:
    run = make_run(make_task(), S.FAILED, attempt=1)
    stale = Run.objects.select_related("task").get(pk=run.pk)
    Run.objects.filter(pk=run.pk).update(attempt=3, checkpoint={"page": 7})  # written elsewhere meanwhile

    controls.retry(stale, by="op")

    assert (stale.attempt, stale.checkpoint, stale.message_number) == (3, {"page": 7}, run.message_number + 1)
    _, message_kwargs = sent(broker, stale)
    carried = from_message(message_kwargs["carried"])
    assert (carried.attempt, carried.checkpoint) == (3, {"page": 7})
    assert apply_message(stale, message_kwargs) == "SUCCESS"
    stale.refresh_from_db()
    assert stale.attempt == 4


def test_hard_time_limit_finds_the_run_of_named_and_older_positional_arguments() -> None:
    from tasks_app.execution import message_of

    assert message_of([], {"run_id": 7, "message_number": 2}) == (7, 2)
    assert message_of([7, 2], {}) == (7, 2)  # a message sent before the arguments were named


def test_task_events_are_off_unless_asked_for() -> None:
    from scheduler_site.celery import app

    assert app.conf.worker_send_task_events is False


# --- a message for a handler the worker lacks -----------------------------------------


@time_machine.travel(NOW, tick=False)
def test_refused_delivery_is_logged_on_the_run_and_sent_again_later(make_task, make_run, settings) -> None:
    from tasks_app.execution import refuse_delivery

    settings.PENDING_RESEND_AFTER = 30
    run = make_run(make_task(handler="reports.build"), S.PENDING)

    refuse_delivery(run.message_id, "reports.build", hostname="w1@host")

    run.refresh_from_db()
    assert (run.state, run.refusals) == (S.PENDING, 1)
    assert run.due_at == NOW + dt.timedelta(seconds=30)  # scheduling.send_due_runs() sends it then
    (line,) = RunLog.objects.filter(run=run)
    assert line.level == "WARNING"
    assert line.message == (
        f"worker w1@host refused message {run.pk}.1: handler 'reports.build' is not registered there"
    )


def test_run_refused_max_deliveries_times_fails_with_handler_not_registered(
    make_task, make_run, settings
) -> None:
    from tasks_app.execution import refuse_delivery

    settings.RUN_MAX_DELIVERIES = 3
    run = make_run(make_task(handler="reports.build"), S.PENDING)

    for number in (1, 2, 3):
        Run.objects.filter(pk=run.pk).update(message_number=number, due_at=None)  # sent again
        refuse_delivery(f"{run.pk}.{number}", "reports.build", hostname=f"w{number}")

    run.refresh_from_db()
    assert (run.state, run.state_reason, run.refusals) == (S.FAILED, "handler not registered", 3)
    assert run.error["type"] == "NotRegistered"
    assert "'reports.build'" in run.error["message"] and "w3" in run.error["message"]
    assert RunLog.objects.filter(run=run, level="WARNING").count() == 3
    assert run.events.last().actor_name == "w3"

    controls.retry(run, by="op")  # once a worker has the handler: a fresh budget
    run.refresh_from_db()
    assert (run.state, run.refusals) == (S.PENDING, 0)


def test_refusal_of_a_stale_message_changes_nothing(make_task, make_run) -> None:
    from tasks_app.execution import refuse_delivery

    run = make_run(make_task(), S.PENDING, message_number=2)

    refuse_delivery(f"{run.pk}.1", "builtin.noop", hostname="w1")
    refuse_delivery("not-a-run-message", "builtin.noop", hostname="w1")

    run.refresh_from_db()
    assert (run.refusals, run.due_at) == (0, None)
    assert not RunLog.objects.exists()
