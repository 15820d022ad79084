"""Concurrency policies on a real Redis lock per task."""

from __future__ import annotations

import pytest
from django.conf import settings

from tasks_app import concurrency, controls, scheduling, submission
from tasks_app.execution import execute
from tasks_app.lifecycle import InvalidTransition, RunState
from tasks_app.models import Run
from tasks_app.submission import RunRequest
from tests.conftest import queued_ids

S = RunState


@pytest.fixture
def submit(broker, django_capture_on_commit_callbacks):
    def submit_(task, **kwargs) -> Run:
        with django_capture_on_commit_callbacks(execute=True):
            run, _ = submission.submit(RunRequest(task=task, kwargs=kwargs))
        run.refresh_from_db()
        return run

    return submit_


def finish(run: Run, django_capture_on_commit_callbacks) -> Run:
    """Execute the run's latest message as a worker would."""
    with django_capture_on_commit_callbacks(execute=True):
        execute(run.pk, run.message_number, hostname="w1")
    run.refresh_from_db()
    return run


def lock_key(task) -> str:
    return f"{settings.LOCK_KEY_PREFIX}task:{task.pk}"


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
        scheduling.fire_due(now=t0)
        scheduling.fire_due(now=t0 + dt.timedelta(seconds=60))

    first, second = Run.objects.filter(schedule=schedule).order_by("scheduled_for")
    assert (first.state, second.state) == (S.PENDING, S.SKIPPED)
    assert "forbid" in second.events.last().reason


def test_manual_retry_of_a_forbid_run_is_a_409_while_another_is_active(
    make_task, submit, broker, api, django_capture_on_commit_callbacks
) -> None:
    task = make_task(concurrency_policy="forbid", handler="tests.explode")
    failed = finish(submit(task), django_capture_on_commit_callbacks)
    assert failed.state == S.FAILED
    active = submit(task)

    response = api.post(f"/api/v1/runs/{failed.pk}/retry/")

    assert response.status_code == 409
    assert response.json() == {
        "detail": f"run {failed.pk} is failed: it cannot move to pending "
        f"(forbid: run {active.pk} of this task is active)",
        "state": "failed",
    }
    assert Run.objects.get(pk=failed.pk).state == S.FAILED
    assert f"{failed.pk}.2" not in queued_ids(broker)
    assert broker.get(lock_key(task)).decode().startswith(f"{active.pk}:")


def test_manual_retry_of_a_gated_run_takes_the_lock_as_a_new_run_would(
    make_task, submit, broker, django_capture_on_commit_callbacks
) -> None:
    task = make_task(concurrency_policy="forbid", handler="tests.explode")
    failed = finish(submit(task), django_capture_on_commit_callbacks)

    with django_capture_on_commit_callbacks(execute=True):
        controls.retry(failed, by="tester")

    failed.refresh_from_db()
    assert (failed.state, failed.fence) == (S.PENDING, 2)
    assert broker.get(lock_key(task)).decode() == f"{failed.pk}:{failed.lock_token}"
    assert submit(task).state == S.SKIPPED  # it holds the lock now


def test_manual_retry_under_replace_cancels_the_active_run(
    make_task, submit, broker, django_capture_on_commit_callbacks
) -> None:
    task = make_task(concurrency_policy="replace", handler="tests.explode")
    failed = finish(submit(task), django_capture_on_commit_callbacks)
    active = submit(task)

    with django_capture_on_commit_callbacks(execute=True):
        controls.retry(failed, by="tester")

    assert Run.objects.get(pk=active.pk).state == S.CANCELLED
    assert Run.objects.get(pk=failed.pk).state == S.PENDING
    assert broker.get(lock_key(task)).decode().startswith(f"{failed.pk}:")


def test_a_workflow_step_of_a_queue_task_waits_for_its_upstream_not_for_the_lock(
    make_task, submit, broker, django_capture_on_commit_callbacks
) -> None:
    from tasks_app import workflows
    from tasks_app.models import Workflow

    make_task(name="first", handler="builtin.noop")
    task = make_task(name="queued", concurrency_policy="queue")
    workflow = Workflow.objects.create(name="w", steps=[
        {"key": "a", "task": "first", "kwargs": {}, "depends_on": [], "trigger_rule": "all_success"},
        {"key": "b", "task": "queued", "kwargs": {}, "depends_on": ["a"], "trigger_rule": "all_success"},
    ])  # fmt: skip
    with django_capture_on_commit_callbacks(execute=True):
        workflow_run = workflows.start(workflow, by="tester")
    other = submit(task)

    finish(other, django_capture_on_commit_callbacks)  # its release sends the task's next waiting run
    with django_capture_on_commit_callbacks(execute=True):
        concurrency.extend_active()  # and so does beat, for waiting runs whose holder vanished

    assert workflows.latest_runs(workflow_run.pk)["b"].state == S.CREATED  # a has not run yet


def test_resume_of_a_queued_run_paused_in_created_is_refused_while_the_lock_is_held(
    make_task, submit, broker, django_capture_on_commit_callbacks
) -> None:
    task = make_task(concurrency_policy="queue")
    active, waiting = submit(task), submit(task)
    controls.pause(waiting, by="tester")

    with pytest.raises(InvalidTransition, match=f"queue: run {active.pk} of this task is active"):
        controls.resume(waiting, by="tester")

    finish(active, django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=True):
        controls.resume(waiting, by="tester")
    waiting.refresh_from_db()
    assert (waiting.state, waiting.fence) == (S.PENDING, 2)


@pytest.mark.django_db(transaction=True)  # autocommit, as in production: callbacks run at once
def test_replace_outside_a_transaction_keeps_the_run_that_took_over(make_task, broker) -> None:
    # A queue no worker serves: the integration tests' worker may still run in this session,
    # and these commits are real.
    task = make_task(concurrency_policy="replace", queue="replace-only-here")
    old, _ = submission.submit(RunRequest(task=task))
    new, _ = submission.submit(RunRequest(task=task))

    old.refresh_from_db()
    new.refresh_from_db()
    assert (old.state, new.state) == (S.CANCELLED, S.PENDING)
    assert broker.get(lock_key(task)).decode().startswith(f"{new.pk}:")
