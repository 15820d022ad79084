from __future__ import annotations

import random

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from tasks_app.lifecycle import RunState
from tasks_app.models import Run, Task
from tasks_app.run_loader import get_with_task

S = RunState


def test_task_names_are_unique(make_task) -> None:
    make_task(name="report")
    with pytest.raises(IntegrityError), transaction.atomic():
        Task.objects.create(name="report", handler="builtin.noop")


def test_idempotency_key_is_unique_per_task(make_task, make_run) -> None:
    first, second = make_task(), make_task()
    make_run(first, idempotency_key="k1")
    make_run(second, idempotency_key="k1")  # another task may reuse it
    make_run(first)  # and runs without a key are unconstrained
    make_run(first)
    with pytest.raises(IntegrityError), transaction.atomic():
        make_run(first, idempotency_key="k1")


@pytest.mark.parametrize("state", [S.COMPLETED, S.FAILED, S.CANCELLED, S.SKIPPED])
def test_terminal_state_requires_finished_at(task, state) -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        Run.objects.create(task=task, state=state, finished_at=None)


@pytest.mark.parametrize("state", [S.CREATED, S.PENDING, S.RUNNING, S.RETRYING, S.PAUSED])
def test_finished_at_only_on_terminal_states(task, state) -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        Run.objects.create(task=task, state=state, finished_at=timezone.now())


def test_unknown_state_is_refused_by_the_database(task) -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        Run.objects.create(task=task, state="exploded")


def test_retry_delay_doubles_up_to_the_cap() -> None:
    task = Task(retry_backoff=2, retry_backoff_max=10, retry_jitter=False)
    assert [task.retry_delay(n) for n in range(5)] == [2, 4, 8, 10, 10]


def test_retry_delay_with_jitter_stays_between_half_and_all() -> None:
    task = Task(retry_backoff=4, retry_backoff_max=100, retry_jitter=True)
    rng = random.Random(7)
    delays = [task.retry_delay(2, rng) for _ in range(200)]
    assert all(8 <= d <= 16 for d in delays)
    assert max(delays) - min(delays) > 4  # really spread


def test_get_with_task_loads_what_select_related_loads(make_task, make_run) -> None:
    task = make_task(kwargs={"a": [1, {"b": None}]}, soft_time_limit=5, retry_backoff=0.25)
    run = make_run(
        task,
        S.FAILED,
        kwargs={"x": "é"},
        error={"type": "E", "message": "m", "traceback": ""},
        checkpoint={"remaining": 1.5},
        scheduled_for=timezone.now(),
    )
    expected = Run.objects.select_related("task").get(pk=run.pk)

    loaded = get_with_task(run.pk)

    for field in Run._meta.concrete_fields:
        assert getattr(loaded, field.attname) == getattr(expected, field.attname), field.name
    for field in Task._meta.concrete_fields:
        assert getattr(loaded.task, field.attname) == getattr(expected.task, field.attname), field.name
    assert timezone.is_aware(loaded.finished_at)


def test_get_with_task_of_a_missing_run_raises_does_not_exist(db) -> None:
    with pytest.raises(Run.DoesNotExist):
        get_with_task(123456789)
