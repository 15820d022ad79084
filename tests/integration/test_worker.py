"""Runs executed by a real worker process, with a real beat sending due runs."""

from __future__ import annotations

from typing import Any

import pytest

from scheduler_site.celery import app
from tasks_app import controls, run_loader, submission
from tasks_app.lifecycle import RunState
from tasks_app.models import Run, Task
from tasks_app.submission import RunRequest
from tests.conftest import wait_until

S = RunState
pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def submit(task: Task, **kwargs: Any) -> Run:
    run, _ = submission.submit(RunRequest(task=task, kwargs=kwargs), by="tester")
    return run


def wait_for_state(run: Run, *states: RunState, timeout: float = 30) -> Run:
    def reached() -> Run | None:
        run.refresh_from_db()
        return run if run.state in states else None

    return wait_until(
        reached, timeout=timeout, what=f"run {run.pk} to be {'/'.join(states)} (is {run.state})"
    )


def moves(run: Run) -> list[tuple[str, str]]:
    return list(run.events.values_list("from_state", "to_state"))


def idle_worker() -> bool:
    active = app.control.inspect(timeout=1).active() or {}
    return bool(active) and not any(active.values())


def test_noop_run_goes_created_pending_running_completed(platform) -> None:
    task = Task.objects.create(name="noop", handler="builtin.noop")

    run = wait_for_state(submit(task, greeting="hi"), S.COMPLETED)

    assert moves(run) == [
        ("", S.CREATED),
        (S.CREATED, S.PENDING),
        (S.PENDING, S.RUNNING),
        (S.RUNNING, S.COMPLETED),
    ]
    assert run.result == {"kwargs": {"greeting": "hi"}, "upstream": {}}
    assert run.attempt == 1
    assert run.worker.startswith("itest@")
    assert run.created_at <= run.started_at <= run.finished_at


def test_flaky_run_is_retried_with_growing_delays_until_it_completes(platform) -> None:
    task = Task.objects.create(
        name="flaky", handler="builtin.flaky", max_retries=5, retry_backoff=0.3, retry_jitter=False
    )

    run = wait_for_state(submit(task, fail_times=3), S.COMPLETED)

    assert (run.attempt, run.retries, run.result) == (4, 3, {"attempt": 4})
    events = list(run.events.order_by("at", "id"))
    failed_at = [e.at for e in events if e.to_state == S.RETRYING]
    restarted_at = [e.at for e in events if e.from_state == S.PENDING and e.to_state == S.RUNNING][1:]
    gaps = [(start - fail).total_seconds() for fail, start in zip(failed_at, restarted_at, strict=True)]
    planned = [task.retry_delay(n) for n in range(3)]
    assert planned == [0.3, 0.6, 1.2]
    assert all(gap >= plan for gap, plan in zip(gaps, planned, strict=True)), gaps
    assert gaps[0] < gaps[1] < gaps[2], gaps
    assert [e.reason.split(";")[0] for e in events if e.to_state == S.RETRYING] == ["RuntimeError"] * 3


def test_soft_time_limit_fails_the_run_with_reason_timeout(platform) -> None:
    task = Task.objects.create(name="slow", handler="builtin.sleep", soft_time_limit=1, time_limit=10)

    run = wait_for_state(submit(task, seconds=8), S.FAILED)

    assert run.error["type"] == "SoftTimeLimitExceeded"
    assert run.events.last().reason == "timeout"


def test_hard_time_limit_fails_the_run_with_reason_timeout(platform) -> None:
    task = Task.objects.create(name="stuck", handler="builtin.sleep", time_limit=1)

    run = wait_for_state(submit(task, seconds=8), S.FAILED)

    assert run.error["type"] == "TimeLimitExceeded"
    assert run.error["message"] == "hard time limit (1s) exceeded"
    assert run.events.last().reason == "timeout"


def test_run_max_duration_is_every_runs_hard_time_limit(platform, settings) -> None:
    # No limit on the task, and a sleep of 1e9 s: RUN_MAX_DURATION (carried in the message) ends it.
    settings.RUN_MAX_DURATION = 1
    task = Task.objects.create(name="forever", handler="builtin.sleep")

    run = wait_for_state(submit(task, seconds=1e9), S.FAILED)

    assert run.error["message"] == "hard time limit (1s) exceeded"
    assert run.events.last().reason == "timeout"


def test_cancel_stops_a_sleeping_run(platform) -> None:
    sleeper = Task.objects.create(name="sleeper", handler="builtin.sleep")
    noop = Task.objects.create(name="noop", handler="builtin.noop")
    # Both pool processes busy for two minutes...
    runs = [wait_for_state(submit(sleeper, seconds=120), S.RUNNING) for _ in range(2)]

    for run in runs:
        controls.cancel(run, by="tester")

    # ...yet a new run completes at once: the cancelled handlers were stopped.
    wait_for_state(submit(noop), S.COMPLETED, timeout=20)
    for run in runs:
        run.refresh_from_db()
        assert run.state == S.CANCELLED
        assert run.events.last().actor_name == "tester"
    assert "Terminating" in platform["worker"].output()


def test_pause_and_resume_of_a_sleeping_run_continues_from_its_checkpoint(platform) -> None:
    task = Task.objects.create(name="nap", handler="builtin.sleep")
    run = wait_for_state(submit(task, seconds=3), S.RUNNING)
    wait_until(
        lambda: Run.objects.get(pk=run.pk).checkpoint is not None, timeout=10, what="a first checkpoint"
    )

    run.refresh_from_db()
    controls.pause(run, by="tester")
    wait_until(idle_worker, timeout=10, what="the handler to stop at its checkpoint")
    run.refresh_from_db()
    remaining = run.checkpoint["remaining"]
    assert run.state == S.PAUSED
    assert 0 < remaining < 3

    controls.resume(run, by="tester")
    run = wait_for_state(run, S.COMPLETED)

    assert run.result == {"slept": 3.0}
    assert run.attempt == 2
    assert run.checkpoint == {"remaining": 0.0}
    # What it slept, second by second, then the resume from where its checkpoint left it.
    lines = list(run.logs.values_list("message", flat=True))
    assert [line for line in lines if line.startswith("resuming")] == [
        f"resuming with {remaining:.1f}s of 3.0s left"
    ]
    assert lines[-1] == "slept 3.0s of 3.0s"
    assert moves(run)[2:] == [
        (S.PENDING, S.RUNNING),
        (S.RUNNING, S.PAUSED),
        (S.PAUSED, S.PENDING),
        (S.PENDING, S.RUNNING),
        (S.RUNNING, S.COMPLETED),
    ]


def test_workflow_diamond_completes_on_a_worker_with_upstream_results(platform) -> None:
    from tasks_app import workflows
    from tasks_app.models import Workflow, WorkflowRun
    from tasks_app.models.workflows import check_steps

    Task.objects.create(name="noop", handler="builtin.noop")
    steps = [
        {"key": "A", "task": "noop", "kwargs": {"a": 1}},
        {"key": "B", "task": "noop", "depends_on": ["A"], "kwargs": {"b": 1}},
        {"key": "C", "task": "noop", "depends_on": ["A"], "kwargs": {"c": 1}},
        {"key": "D", "task": "noop", "depends_on": ["B", "C"]},
    ]
    workflow = Workflow.objects.create(name="diamond", steps=check_steps(steps, {"noop"}))

    workflow_run = workflows.start(workflow, by="tester")
    wait_until(
        lambda: WorkflowRun.objects.get(pk=workflow_run.pk).state == "completed",
        timeout=30,
        what="the diamond",
    )

    d = workflows.latest_runs(workflow_run.pk)["D"]
    assert set(d.result["upstream"]) == {"B", "C"}
    assert d.result["upstream"]["B"]["kwargs"] == {"b": 1}
    b, c = (workflows.latest_runs(workflow_run.pk)[k] for k in "BC")
    assert d.started_at >= max(b.finished_at, c.finished_at)  # fan-in waited for both


def test_run_whose_handler_the_worker_lacks_fails_after_max_deliveries(platform, settings) -> None:
    # tests.explode is registered in this process (tests/handlers.py), not in the worker.
    task = Task.objects.create(name="missing-on-worker", handler="tests.explode")

    run = wait_for_state(submit(task), S.FAILED, timeout=60)

    assert run.state_reason == "handler not registered"
    assert run.refusals == settings.RUN_MAX_DELIVERIES
    assert run.error["type"] == "NotRegistered"
    lines = list(run.logs.values_list("level", "message"))
    assert len(lines) == settings.RUN_MAX_DELIVERIES
    assert all(
        level == "WARNING" and "worker itest@" in line and "'tests.explode'" in line for level, line in lines
    )
    assert [e.to_state for e in run.events.all()] == [S.CREATED, S.PENDING, S.FAILED]  # no attempt ran
    assert "Received unregistered task of type 'tests.explode'" in platform["worker"].output()


def test_celery_reports_a_failed_run_as_failed_and_its_retry_as_a_retry(platform) -> None:
    task = Task.objects.create(name="flaky-twice", handler="builtin.flaky", max_retries=1, retry_backoff=0.1)

    run = wait_for_state(submit(task, fail_times=2), S.FAILED)

    def logged_failure() -> str | None:
        out = platform["worker"].output()
        return out if f"flaky-twice[{run.pk}.2] raised" in out else None

    log = wait_until(logged_failure, timeout=10, what="the worker to log the failure")
    assert f"Task flaky-twice[{run.pk}.1] retry:" in log
    assert f"Task flaky-twice[{run.pk}.2] raised unexpected: RuntimeError" in log
    assert f"[{run.pk}.1] succeeded" not in log and f"[{run.pk}.2] succeeded" not in log


def test_inspect_shows_the_task_name_and_the_run_and_task_events_are_off(platform) -> None:
    task = Task.objects.create(name="long-nap", handler="builtin.sleep")
    run = wait_for_state(submit(task, seconds=60), S.RUNNING)
    try:
        active = [
            request for requests in app.control.inspect(timeout=1).active().values() for request in requests
        ]
        (request,) = [request for request in active if request["id"] == run.message_id]
        assert request["name"] == "long-nap"
        assert request["type"] == "builtin.sleep"
        kwargs = request["kwargs"]
        assert (kwargs["run_id"], kwargs["message_number"]) == (run.pk, run.message_number)
        carried = run_loader.from_message(kwargs["carried"])  # signed with the same SECRET_KEY
        assert (carried.pk, carried.task.name) == (run.pk, "long-nap")
        (conf,) = app.control.inspect(timeout=1).conf().values()
        assert conf["CELERY_WORKER_SEND_TASK_EVENTS"] is False  # as Celery's own default; -E turns them on
    finally:
        controls.cancel(run, by="tester")
