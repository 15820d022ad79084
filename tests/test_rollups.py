"""The dashboard's rollup: buckets recomputed from the runs table, summed into hours, read
back as a window's figures (tasks_app.rollups)."""

from __future__ import annotations

import datetime as dt

import pytest

from tasks_app import rollups
from tasks_app.choices import RunState
from tasks_app.models import RollupProgress, Run, RunRollup
from tasks_app.models.rollups import DURATION_BOUNDS, LATENESS_BOUNDS

S = RunState
T0 = dt.datetime(2026, 12, 3, 10, 0, tzinfo=dt.UTC)


@pytest.fixture
def finished(make_run):
    """A run that finished at `at` after `seconds`, in `state`."""

    def make(task, state=S.COMPLETED, *, at, seconds=1.0, worker="w1", late=None, error=None):
        started = at - dt.timedelta(seconds=seconds)
        scheduled_for = None if late is None else started - dt.timedelta(seconds=late)
        return make_run(
            task, state, finished_at=at, started_at=started, worker=worker, scheduled_for=scheduled_for,
            error=error, created_at=started,
        )  # fmt: skip

    return make


def test_a_bucket_counts_its_runs_by_task_worker_and_state(task, make_task, finished) -> None:
    other = make_task()
    finished(task, at=T0 + dt.timedelta(seconds=10), seconds=0.2)
    finished(task, at=T0 + dt.timedelta(seconds=20), seconds=3)
    finished(
        task, S.FAILED, at=T0 + dt.timedelta(seconds=30), error={"type": "ValueError", "message": "bad\nrow"}
    )
    finished(other, at=T0 + dt.timedelta(seconds=40), worker="w2")
    finished(task, at=T0 + dt.timedelta(minutes=5), seconds=1)  # the next bucket

    rollups.refresh(T0 + dt.timedelta(minutes=6))

    fine = {(r.bucket, r.task_id, r.worker, r.state): r for r in RunRollup.objects.filter(grain=rollups.FINE)}
    completed = fine[(T0, task.pk, "w1", S.COMPLETED)]
    assert completed.count == 2
    assert completed.duration_sum == pytest.approx(3.2)
    # Cumulative: 0.2 s is under the 0.25 bound, 3 s under 5 s, both under +Inf.
    assert completed.durations[DURATION_BOUNDS.index(0.25)] == 1
    assert completed.durations[DURATION_BOUNDS.index(5)] == 2
    assert completed.durations[-1] == 2
    failed = fine[(T0, task.pk, "w1", S.FAILED)]
    assert (failed.count, failed.last_error) == (1, "ValueError: bad row")
    assert fine[(T0, other.pk, "w2", S.COMPLETED)].count == 1
    assert fine[(T0 + dt.timedelta(minutes=5), task.pk, "w1", S.COMPLETED)].count == 1
    hour = {(r.task_id, r.state): r.count for r in RunRollup.objects.filter(grain=rollups.COARSE, bucket=T0)}
    assert hour == {(task.pk, S.COMPLETED): 3, (task.pk, S.FAILED): 1, (other.pk, S.COMPLETED): 1}


def test_a_run_that_finishes_after_a_pass_is_counted_by_the_next(task, finished) -> None:
    finished(task, at=T0 + dt.timedelta(seconds=10))
    rollups.refresh(T0 + dt.timedelta(seconds=30))
    finished(task, at=T0 + dt.timedelta(seconds=40))
    finished(task, at=T0 + dt.timedelta(seconds=50))
    rollups.refresh(T0 + dt.timedelta(seconds=60))
    rollups.refresh(T0 + dt.timedelta(seconds=61))  # again: nothing counted twice

    assert RunRollup.objects.get(grain=rollups.FINE, bucket=T0).count == 3
    assert RunRollup.objects.get(grain=rollups.COARSE, bucket=T0).count == 3


def test_a_first_pass_starts_at_the_oldest_finished_run_and_a_long_history_takes_several(
    task, finished
) -> None:
    finished(task, at=T0 - dt.timedelta(days=1))
    finished(task, at=T0)
    done = rollups.refresh(T0 + dt.timedelta(minutes=1), max_buckets=100, budget=60)
    assert done == 100
    assert RollupProgress.objects.get().upto == T0 - dt.timedelta(days=1) + dt.timedelta(minutes=500)
    rollups.catch_up(T0 + dt.timedelta(minutes=1))
    hours = dict(RunRollup.objects.filter(grain=rollups.COARSE).values_list("bucket", "count"))
    assert hours == {T0 - dt.timedelta(days=1): 1, T0: 1}
    assert RollupProgress.objects.get().upto == T0 + dt.timedelta(minutes=1)


def test_a_backfill_older_than_the_five_minute_buckets_kept_counts_each_hour_whole(task, finished) -> None:
    hour = T0 - dt.timedelta(days=3)
    for minute in range(0, 60, 5):  # one run in each five-minute bucket of an hour 3 days ago
        finished(task, at=hour + dt.timedelta(minutes=minute, seconds=30))

    while rollups.refresh(T0, max_buckets=6, budget=60) == 6:  # the hour over several passes
        pass

    assert RunRollup.objects.get(grain=rollups.COARSE, bucket=hour).count == 12
    assert not RunRollup.objects.filter(grain=rollups.FINE, bucket__lt=T0 - rollups.FINE_KEPT).exists()


def test_a_pass_stops_when_its_time_is_spent_and_the_next_goes_on(task, finished) -> None:
    finished(task, at=T0 - dt.timedelta(hours=2))
    assert rollups.refresh(T0, budget=0) == 1  # one bucket, then its time was up
    assert rollups.catch_up(T0) > 1
    assert RunRollup.objects.get(grain=rollups.COARSE, bucket=T0 - dt.timedelta(hours=2)).count == 1


def test_pruned_runs_stay_counted(task, finished) -> None:
    finished(task, at=T0 + dt.timedelta(seconds=5))
    rollups.refresh(T0 + dt.timedelta(minutes=10))
    Run.objects.all().delete()
    rollups.refresh(T0 + dt.timedelta(minutes=20))  # buckets past SETTLE are not recomputed
    assert RunRollup.objects.get(grain=rollups.COARSE, bucket=T0).count == 1


def test_five_minute_buckets_go_after_two_days_and_hours_stay(task, finished) -> None:
    finished(task, at=T0)
    rollups.refresh(T0 + dt.timedelta(minutes=1))
    rollups.refresh(T0 + dt.timedelta(days=3))
    assert not RunRollup.objects.filter(grain=rollups.FINE, bucket=T0).exists()
    assert RunRollup.objects.filter(grain=rollups.COARSE, bucket=T0).exists()


def test_a_window_summary_reads_bars_rates_quantiles_and_top_failures(task, make_task, finished) -> None:
    flaky = make_task(name="flaky")
    now = T0 + dt.timedelta(minutes=59)
    for minute in range(0, 50, 10):
        finished(task, at=T0 + dt.timedelta(minutes=minute), seconds=0.5, late=0.3)
    finished(flaky, S.FAILED, at=T0 + dt.timedelta(minutes=12), error={"type": "OSError", "message": "one"})
    finished(flaky, S.FAILED, at=T0 + dt.timedelta(minutes=31), error={"type": "KeyError", "message": "two"})
    finished(flaky, at=T0 + dt.timedelta(minutes=32), worker="w2")
    rollups.refresh(now)

    summary = rollups.summary(rollups.WINDOWS["1h"], now)

    assert len(summary.bars) == 12  # five-minute bars over the hour
    assert sum(counts[S.COMPLETED] for _at, counts in summary.bars) == 6
    assert sum(counts[S.FAILED] for _at, counts in summary.bars) == 2
    bar_at = dict(summary.bars)
    assert bar_at[T0 + dt.timedelta(minutes=10)][S.FAILED] == 1
    assert summary.success_rate == pytest.approx(6 / 8)
    [top] = summary.top_failing()
    assert (top.task_id, top.failed, top.last_error) == (flaky.pk, 2, "KeyError: two")
    figures = summary.tasks[task.pk]
    assert 0.25 < figures.p50 <= 0.5 and 0.25 < figures.p95 <= 0.5
    assert summary.scheduled_runs == 5
    assert 0.25 < summary.lateness_p99 <= 0.5
    assert rollups.worker_totals(T0) == {"w1": {S.COMPLETED: 5, S.FAILED: 2}, "w2": {S.COMPLETED: 1}}

    day = rollups.summary(rollups.WINDOWS["24h"], now)
    assert len(day.bars) == 24 and day.counts[S.COMPLETED] == 6


def test_quantile_interpolates_within_the_bucket_as_prometheus_does() -> None:
    bounds = (1.0, 2.0, float("inf"))
    assert rollups.quantile(0.5, [0, 10, 10], bounds) == pytest.approx(1.5)
    assert rollups.quantile(0.99, [0, 0, 4], bounds) == 2.0  # beyond the last finite bound
    assert rollups.quantile(0.5, [0, 0, 0], bounds) is None
    assert len(LATENESS_BOUNDS) == 11
