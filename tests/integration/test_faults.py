"""Faults injected into real processes; each test prints what it injected and counted."""

from __future__ import annotations

import datetime as dt
import os
import signal

import pytest
from django.utils import timezone

from tasks_app.lifecycle import RunState
from tasks_app.models import Run, Task, Worker
from tasks_app.querysets import RunRequest
from tests.conftest import wait_until
from tests.integration.conftest import Process, process_env

S = RunState
pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def fragile_worker(name: str, tmp_path) -> Process:
    return Process(
        name,
        [
            "worker",
            "-l",
            "info",
            "-c",
            "1",
            "-Q",
            "fragile",
            "-n",
            f"{name}@%h",
            "--without-gossip",
            "--without-mingle",
        ],
        process_env(),
        tmp_path / f"{name}.log",
    )


def test_platform_worker_records_itself_and_heartbeats(platform) -> None:
    worker = wait_until(
        lambda: Worker.objects.filter(hostname__startswith="itest@").first(), timeout=10, what="it"
    )
    first = worker.last_heartbeat
    wait_until(lambda: Worker.objects.get(pk=worker.pk).last_heartbeat > first, timeout=5, what="a heartbeat")
    assert Worker.objects.get(pk=worker.pk).online
    assert "default" in worker.queues and worker.concurrency == 2


def test_sigkill_of_a_worker_mid_run_ends_with_the_run_completed_once(platform, tmp_path) -> None:
    task = Task.objects.create(
        name="fragile", handler="builtin.sleep", queue="fragile", kwargs={"seconds": 2},
        max_retries=2, retry_backoff=0.1, retry_jitter=False,
    )  # fmt: skip
    victim = fragile_worker("victim", tmp_path)
    rescuer = None
    try:
        wait_until(
            lambda: Worker.objects.filter(hostname__startswith="victim@").exists(), timeout=60, what="victim"
        )
        run, _ = Run.objects.submit(RunRequest(task=task))
        wait_until(lambda: Run.objects.get(pk=run.pk).state == S.RUNNING, timeout=30, what="the run to start")

        os.killpg(victim.popen.pid, signal.SIGKILL)  # main process and its pool, mid-run
        rescuer = fragile_worker("rescuer", tmp_path)

        run = wait_until(
            lambda: Run.objects.filter(pk=run.pk, state=S.COMPLETED).first(), timeout=60, what="completion"
        )
        moves = list(run.events.values_list("from_state", "to_state", "reason"))
        completed = [m for m in moves if m[1] == S.COMPLETED]
        lost = [m for m in moves if m[1] == S.RETRYING]
        print(f"injected: SIGKILL of worker victim during run {run.pk}; counted: completed {len(completed)}, "
              f"moved on after the loss {len(lost)}, attempts {run.attempt}")  # fmt: skip
        assert len(completed) == 1
        assert lost and lost[0][2].startswith("worker lost; retry 1 of 2")
        assert run.attempt == 2 and run.worker.startswith("rescuer@")
    finally:
        victim.stop()
        if rescuer is not None:
            rescuer.stop()


def test_a_pickled_message_runs_nothing(platform) -> None:
    from scheduler_site.celery import app

    task = Task.objects.create(name="noop", handler="builtin.noop")
    # A due_at a day on keeps beat's resend sweep away: only the pickled message could run it.
    run = Run.objects.create(
        task=task, state=S.PENDING, dispatches=1, due_at=timezone.now() + dt.timedelta(days=1)
    )
    # Straight into the queue, as an attacker with broker access would: pickle, not JSON.
    with app.producer_or_acquire() as producer:
        app.send_task("builtin.noop", args=[run.pk, 1], task_id=f"{run.pk}.1", queue="default",
                      serializer="pickle", producer=producer)  # fmt: skip
    wait_until(lambda: "disallowed" in platform["worker"].output().lower(), timeout=20, what="the refusal")

    run.refresh_from_db()
    print(f"injected: a pickled message for run {run.pk}; counted: state {run.state}, attempts {run.attempt}")
    assert (run.state, run.attempt) == (S.PENDING, 0)
