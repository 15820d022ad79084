"""Several real beat processes firing the same schedules: each instant exactly once."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from django.utils import timezone

from tasks_app.lifecycle import RunState
from tasks_app.models import Run, Schedule, Task
from tests.conftest import wait_until
from tests.integration.conftest import Process, process_env

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def more_beats(platform, tmp_path) -> Iterator[list[Process]]:
    """Two more beats beside the platform fixture's one: three in all."""
    env = process_env()
    beats = [
        Process(
            f"beat{n}",
            ["beat", "-l", "info", "-s", str(tmp_path / f"beat{n}")],
            env,
            tmp_path / f"beat{n}.log",
        )
        for n in (2, 3)
    ]
    try:
        for beat in beats:
            wait_until(
                lambda beat=beat: "beat: Starting" in beat.output(), timeout=60, what=f"{beat.name} to start"
            )
        yield beats
    finally:
        for beat in beats:
            beat.stop()


def test_three_beats_fire_every_instant_exactly_once(platform, more_beats, report) -> None:
    task = Task.objects.create(name="tick", handler="builtin.noop")
    schedules = [
        Schedule.objects.create(task=task, cron="* * * * * *"),
        Schedule.objects.create(task=task, cron="*/3 * * * * *"),
        Schedule.objects.create(task=task, interval_seconds=2),
    ]
    started = timezone.now()
    # Long enough for every schedule to fire a few times under three schedulers.
    wait_until(
        lambda: Run.objects.filter(schedule=schedules[1]).count() >= 3, timeout=30, what="three fires of */3"
    )
    for schedule in schedules:
        Schedule.objects.filter(pk=schedule.pk).update(enabled=False)
    stopped = timezone.now()
    wait_until(
        lambda: not Run.objects.exclude(state=RunState.COMPLETED).exists(),
        timeout=30,
        what="all runs to complete",
    )

    for schedule in schedules:
        schedule.refresh_from_db()
        fired = list(
            Run.objects.filter(schedule=schedule)
            .order_by("scheduled_for")
            .values_list("scheduled_for", flat=True)
        )
        assert len(fired) == len(set(fired)), f"duplicates for {schedule.kind_text}"
        expected = schedule.timer().between(fired[0] - dt.timedelta(microseconds=1), fired[-1], 1000)
        assert fired == expected, f"missing instants for {schedule.kind_text}"
        assert started - dt.timedelta(seconds=3) <= fired[0] and fired[-1] <= stopped
    lateness = [run.lateness.total_seconds() for run in Run.objects.all()]
    firing = [beat.name for beat in [platform["beat"], *more_beats] if "fire due schedules" in beat.output()]
    report(f"runs fired: {len(lateness)}, by {firing}; lateness max {max(lateness):.3f}s")
    assert len(firing) >= 2, "the schedulers did not share the work"
    assert max(lateness) < 5
