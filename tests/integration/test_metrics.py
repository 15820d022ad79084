"""/metrics counts what real worker and beat processes did: the counters are kept in Redis, so
the test process (which sends), the worker's pool processes (which run) and beat (which fires)
all add to the same ones."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tasks_app import submission
from tasks_app.lifecycle import RunState
from tasks_app.models import Run, Schedule, Task
from tasks_app.submission import RunRequest
from tests.conftest import wait_until

S = RunState
pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
N = 8


def total(client: Any, metric: str, **labels: str) -> float:
    """The sum of `metric`'s samples whose labels include `labels`."""
    response = client.get("/metrics")
    assert response.status_code == 200
    return sum(
        sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
        if sample.name == metric and labels.items() <= sample.labels.items()
    )


def test_runs_a_real_worker_executed_are_counted_once_each(platform, reader) -> None:
    task = Task.objects.create(name="metrics-counted", handler="builtin.noop")

    runs = [submission.submit(RunRequest(task=task), by="tester")[0] for _ in range(N)]
    wait_until(
        lambda: Run.objects.filter(pk__in=[r.pk for r in runs], state=S.COMPLETED).count() == N,
        timeout=60,
        what=f"{N} runs to complete",
    )
    # The worker counts a completion just after its commit: wait for the last of them.
    wait_until(
        lambda: total(reader, "celery_task_succeeded_total", name=task.name) == N,
        timeout=10,
        what="the worker's counts",
    )

    assert total(reader, "celery_task_sent_total", name=task.name, hostname="") == N  # by this process
    assert total(reader, "celery_task_started_total", name=task.name) == N  # by the pool processes
    assert total(reader, "scheduler_runs_total", name=task.name, state="completed") == N
    # Sent here, started there: the wait of each is measured across the processes.
    assert total(reader, "celery_task_queue_wait_time_count", name=task.name) == N
    assert total(reader, "celery_task_runtime_count", name=task.name) == N
    worker = Run.objects.filter(pk=runs[0].pk).values_list("worker", flat=True).get()
    # Up by its heartbeats, which come on their own clock: waited for, not assumed.
    wait_until(
        lambda: total(reader, "celery_worker_up", hostname=worker) == 1, timeout=10, what=f"{worker} up"
    )
    assert total(reader, "scheduler_beats_alive") >= 1


def test_fires_beat_made_are_counted_once_each(platform, reader) -> None:
    task = Task.objects.create(name="metrics-fired", handler="builtin.noop")
    schedule = Schedule.objects.create(task=task, interval_seconds=1)
    key = str(schedule.pk)

    wait_until(lambda: Run.objects.filter(schedule=schedule).count() >= 3, timeout=30, what="three fires")
    Schedule.objects.filter(pk=schedule.pk).update(enabled=False)

    def counted_as_fired() -> bool:
        fires = total(reader, "scheduler_schedule_fires_total", schedule=key)
        return fires >= 3 and fires == Run.objects.filter(schedule=schedule).count()

    wait_until(counted_as_fired, timeout=10, what="the fires counted as the runs made")
    assert total(reader, "scheduler_schedule_fire_lateness_seconds_count") >= 3
