"""Concurrency policies on a real Redis lock per task."""

from __future__ import annotations

import pytest

from tasks_app import concurrency
from tasks_app.execution import execute
from tasks_app.lifecycle import RunState
from tasks_app.models import Run
from tasks_app.querysets import RunRequest
from tests.conftest import queued_ids

S = RunState


@pytest.fixture
def submit(broker, django_capture_on_commit_callbacks):
    def submit_(task, **kwargs) -> Run:
        with django_capture_on_commit_callbacks(execute=True):
            run, _ = Run.objects.submit(RunRequest(task=task, kwargs=kwargs))
        run.refresh_from_db()
        return run

    return submit_


def finish(run: Run, django_capture_on_commit_callbacks) -> Run:
    """Execute the run's latest message as a worker would."""
    with django_capture_on_commit_callbacks(execute=True):
        execute(run.pk, run.dispatches, hostname="w1")
    run.refresh_from_db()
    return run


def lock_key(task) -> str:
    return f"tasks_app:task:{task.pk}:lock"


def test_allow_runs_side_by_side_without_a_lock(make_task, submit, broker) -> None:
    task = make_task(concurrency_policy="allow")
    first, second = submit(task), submit(task)
    assert (first.state, second.state) == (S.PENDING, S.PENDING)
    assert first.fence is None and not broker.exists(lock_key(task))


def test_first_run_takes_the_lock_with_a_fencing_token(make_task, submit, broker) -> None:
    task = make_task(concurrency_policy="forbid")
    run = submit(task)
    assert run.state == S.PENDING
    assert run.fence == 1 and run.lock_token
    assert broker.get(lock_key(task)).decode() == f"{run.pk}:{run.lock_token}"
    assert 0 < broker.pttl(lock_key(task)) <= 60_000
    assert queued_ids(broker) == [f"{run.pk}.1"]


def test_forbid_skips_a_run_while_another_is_active(
    make_task, submit, django_capture_on_commit_callbacks
) -> None:
    task = make_task(concurrency_policy="forbid")
    active = submit(task)
    refused = submit(task)

    assert refused.state == S.SKIPPED
    assert refused.events.last().reason == f"forbid: run {active.pk} of this task is active"

    assert finish(active, django_capture_on_commit_callbacks).state == S.COMPLETED
    later = submit(task)
    assert (later.state, later.fence) == (S.PENDING, 2)


def test_replace_cancels_the_active_run_and_takes_over(make_task, submit, broker) -> None:
    task = make_task(concurrency_policy="replace")
    old = submit(task)
    new = submit(task)

    old.refresh_from_db()
    assert old.state == S.CANCELLED
    assert old.events.last().actor_name == f"replace policy (run {new.pk})"
    assert (new.state, new.fence) == (S.PENDING, 2)
    assert broker.get(lock_key(task)).decode().startswith(f"{new.pk}:")


def test_queue_waits_in_created_until_the_active_run_ends(
    make_task, submit, django_capture_on_commit_callbacks
) -> None:
    task = make_task(concurrency_policy="queue")
    first, second, third = submit(task), submit(task), submit(task)
    assert (first.state, second.state, third.state) == (S.PENDING, S.CREATED, S.CREATED)

    finish(first, django_capture_on_commit_callbacks)

    second.refresh_from_db()
    third.refresh_from_db()
    assert (second.state, second.fence, third.state) == (S.PENDING, 2, S.CREATED)
    finish(second, django_capture_on_commit_callbacks)
    third.refresh_from_db()
    assert third.state == S.PENDING


def test_a_run_that_lost_its_lock_cannot_finish_over_its_successor(
    make_task, submit, broker, django_capture_on_commit_callbacks
) -> None:
    task = make_task(concurrency_policy="forbid")
    stale = submit(task)
    broker.delete(lock_key(task))  # its lock expired (beat was down)...
    successor = submit(task)  # ...and a newer run took it
    assert (successor.state, successor.fence) == (S.PENDING, 2)

    stale = finish(stale, django_capture_on_commit_callbacks)

    assert stale.state == S.FAILED
    assert stale.error["type"] == "LockLost"
    assert stale.events.last().reason == "lost its concurrency lock to a newer run"
    assert broker.get(lock_key(task)).decode().startswith(f"{successor.pk}:")  # untouched


def test_release_is_refused_to_anyone_but_the_holder(make_task, submit, broker) -> None:
    task = make_task(concurrency_policy="forbid")
    holder = submit(task)
    impostor = Run(pk=holder.pk + 1000, task=task, lock_token="not-the-token")
    concurrency.release(impostor)
    assert broker.get(lock_key(task)).decode().startswith(f"{holder.pk}:")


def test_beat_extends_the_locks_of_active_runs(make_task, submit, broker) -> None:
    task = make_task(concurrency_policy="forbid")
    run = submit(task)
    broker.pexpire(lock_key(task), 1000)

    assert concurrency.extend_active() == 1
    assert broker.pttl(lock_key(task)) > 50_000
    assert Run.objects.get(pk=run.pk).state == S.PENDING


def test_beat_sends_a_queued_run_whose_holder_vanished(
    make_task, submit, broker, django_capture_on_commit_callbacks
) -> None:
    task = make_task(concurrency_policy="queue")
    first, waiting = submit(task), submit(task)
    Run.objects.filter(pk=first.pk).update(state=S.CANCELLED, finished_at=first.created_at)  # ended unseen
    broker.delete(lock_key(task))

    with django_capture_on_commit_callbacks(execute=True):
        concurrency.extend_active()

    waiting.refresh_from_db()
    assert waiting.state == S.PENDING


def test_schedule_of_a_forbid_task_records_a_skipped_fire(
    make_task, broker, django_capture_on_commit_callbacks
) -> None:
    import datetime as dt

    from tasks_app.models import Schedule

    task = make_task(concurrency_policy="forbid")
    t0 = dt.datetime(2026, 3, 2, 12, tzinfo=dt.UTC)
    schedule = Schedule.objects.create(task=task, interval_seconds=60, start_at=t0, next_fire_at=t0)
    with django_capture_on_commit_callbacks(execute=True):
        Schedule.objects.fire_due(now=t0)
        Schedule.objects.fire_due(now=t0 + dt.timedelta(seconds=60))

    first, second = Run.objects.filter(schedule=schedule).order_by("scheduled_for")
    assert (first.state, second.state) == (S.PENDING, S.SKIPPED)
    assert "forbid" in second.events.last().reason
