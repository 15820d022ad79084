"""Faults injected into real processes; each test prints what it injected and counted."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from tasks_app.lifecycle import RunState
from tasks_app.models import Run, Task, Worker
from tests.conftest import wait_until

S = RunState
pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_platform_worker_records_itself_and_heartbeats(platform) -> None:
    worker = wait_until(
        lambda: Worker.objects.filter(hostname__startswith="itest@").first(), timeout=10, what="it"
    )
    first = worker.last_heartbeat
    wait_until(lambda: Worker.objects.get(pk=worker.pk).last_heartbeat > first, timeout=5, what="a heartbeat")
    assert Worker.objects.get(pk=worker.pk).online
    assert "default" in worker.queues and worker.concurrency == 2


def test_a_pickled_message_runs_nothing(platform, report) -> None:
    from scheduler_site.celery import app

    task = Task.objects.create(name="noop", handler="builtin.noop")
    # A due_at a day on keeps beat's resend sweep away: only the pickled message could run it.
    run = Run.objects.create(
        task=task, state=S.PENDING, message_number=1, due_at=timezone.now() + dt.timedelta(days=1)
    )
    # Straight into the queue, as an attacker with broker access would: pickle, not JSON.
    with app.producer_or_acquire() as producer:
        app.send_task("builtin.noop", args=[run.pk, 1], task_id=f"{run.pk}.1", queue="default",
                      serializer="pickle", producer=producer)  # fmt: skip
    wait_until(lambda: "disallowed" in platform["worker"].output().lower(), timeout=20, what="the refusal")

    run.refresh_from_db()
    report(f"injected: a pickled message for run {run.pk}; counted: {run.state}, attempts {run.attempt}")
    assert (run.state, run.attempt) == (S.PENDING, 0)
