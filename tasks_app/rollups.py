"""The dashboard's rollup of finished runs (models.RunRollup), brought up to date by beat.

`refresh()` recomputes, from the runs table through the run_finished_at index, each
five-minute bucket that can still change: from where the last pass got to (RollupProgress)
to now. The hour buckets over them are summed from the five-minute ones. Each bucket is
replaced whole, and a pass is one transaction: a pass that dies changes nothing, and the next
does its buckets again. Nothing is counted twice or lost, and no run's move pays for the rollup
(XXL-JOB's report thread keeps its daily counts the same way). Pruned runs stay counted.

`summary()` is what the dashboard shows of a window, read from the rollup alone.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction
from django.db.models import Count, DurationField, ExpressionWrapper, F, Max, Q, Sum
from django.db.models.lookups import LessThanOrEqual
from django.utils import timezone

from tasks_app.choices import RunState
from tasks_app.models import RollupProgress, Run, RunRollup
from tasks_app.models.rollups import (
    DURATION_BOUNDS,
    DURATION_COLUMNS,
    LATENESS_BOUNDS,
    LATENESS_COLUMNS,
    Grain,
)

S = RunState
FINE, COARSE = Grain.FIVE_MINUTES, Grain.HOUR
# A run's finished_at is its move's time, taken before its transaction commits: a bucket
# this long past may still gain runs, so each pass does it again.
SETTLE = dt.timedelta(seconds=60)
# A pass works at most this long (seconds), and at most this many five-minute buckets (a day):
# a first one over a long history leaves the rest to the next passes, and beat's tick, which
# it runs in, stays short.
PASS_BUDGET = 0.5
MAX_BUCKETS_PER_PASS = 288
FINE_KEPT = dt.timedelta(days=2)  # five-minute buckets are for the last hour's chart
COARSE_KEPT = dt.timedelta(days=90)
PROGRESS = "runs"
HISTOGRAM_COLUMNS = (*DURATION_COLUMNS, *LATENESS_COLUMNS)
_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


def floor(at: dt.datetime, grain: int) -> dt.datetime:
    """The start of the bucket of `grain` seconds that holds `at` (UTC)."""
    seconds = (at - _EPOCH) // dt.timedelta(seconds=1)
    return _EPOCH + dt.timedelta(seconds=seconds - seconds % grain)


def refresh(
    now: dt.datetime | None = None, max_buckets: int = MAX_BUCKETS_PER_PASS, budget: float = PASS_BUDGET
) -> int:
    """Bring the rollups towards `now`: the five-minute buckets from where the last pass got to,
    for at most `budget` seconds of work (at least one bucket), and the hours over them. Returns
    the buckets recomputed (0 when another beat is at it); `RollupProgress.upto` says how far
    they are complete."""
    now = now or timezone.now()
    started = time.monotonic()
    RollupProgress.objects.get_or_create(name=PROGRESS)
    with transaction.atomic():
        progress = RollupProgress.objects.select_for_update(skip_locked=True).filter(name=PROGRESS).first()
        if progress is None:
            return 0  # another beat holds it
        if progress.upto is None:
            first = Run.objects.filter(finished_at__gte=now - COARSE_KEPT).order_by("finished_at")
            first_at = first.values_list("finished_at", flat=True).first()
            start = floor(first_at or now, FINE)
        else:
            start = floor(progress.upto - SETTLE, FINE)
        step = dt.timedelta(seconds=FINE)
        bucket, done = start, []
        while bucket <= now and len(done) < max_buckets:
            _recompute_fine(bucket)
            done.append(bucket)
            bucket += step
            if time.monotonic() - started > budget:
                break
        for hour in sorted({floor(bucket, COARSE) for bucket in done}):
            _recompute_coarse(hour)
        progress.upto = min(now, done[-1] + step) if done else now
        progress.save(update_fields=["upto"])
        # An hour is summed from its five-minute buckets: those of the hour the next pass starts
        # in stay, however old (a backfill of an old history goes through it in several passes).
        keep_from = min(now - FINE_KEPT, floor(progress.upto - SETTLE, COARSE))
        RunRollup.objects.filter(grain=FINE, bucket__lt=keep_from).delete()
        RunRollup.objects.filter(grain=COARSE, bucket__lt=now - COARSE_KEPT).delete()
    return len(done)


def catch_up(now: dt.datetime | None = None) -> int:
    """Pass after pass until the rollups are complete up to `now` (a backfill at once, as the
    bench and the tests want it); the buckets recomputed."""
    now = now or timezone.now()
    done = 0
    while True:
        done += refresh(now)
        upto = RollupProgress.objects.filter(name=PROGRESS).values_list("upto", flat=True).first()
        if upto is not None and upto >= now:
            return done


def _cumulative(
    columns: tuple[str, ...], value: Any, bounds: tuple[float, ...], counted: Q
) -> dict[str, Count]:
    return {
        column: Count("id", filter=counted & LessThanOrEqual(value, dt.timedelta(seconds=bound)))
        if not math.isinf(bound)
        else Count("id", filter=counted)
        for column, bound in zip(columns, bounds, strict=True)
    }


def _recompute_fine(bucket: dt.datetime) -> None:
    duration = ExpressionWrapper(F("finished_at") - F("started_at"), output_field=DurationField())
    lateness = ExpressionWrapper(F("started_at") - F("scheduled_for"), output_field=DurationField())
    started = Q(started_at__isnull=False)
    scheduled = started & Q(scheduled_for__isnull=False)
    rows = list(
        Run.objects.filter(finished_at__gte=bucket, finished_at__lt=bucket + dt.timedelta(seconds=FINE))
        .order_by()
        .values("task_id", "worker", "state")
        .annotate(
            n=Count("id"),
            duration=Sum(duration, filter=started),
            last=Max("id"),
            **_cumulative(DURATION_COLUMNS, duration, DURATION_BOUNDS, started),
            **_cumulative(LATENESS_COLUMNS, lateness, LATENESS_BOUNDS, scheduled),
        )
    )
    failed_last = [row["last"] for row in rows if row["state"] == S.FAILED]
    errors = dict(Run.objects.filter(pk__in=failed_last).values_list("pk", "error")) if failed_last else {}
    for row in rows:
        row["duration"] = (row["duration"] or dt.timedelta()).total_seconds()
        row["last_error"] = error_text(errors.get(row["last"]))
    _replace(FINE, bucket, rows)


def _replace(grain: int, bucket: dt.datetime, rows: list[dict[str, Any]]) -> None:
    """The bucket's rows, in place of those it had."""
    RunRollup.objects.filter(grain=grain, bucket=bucket).delete()
    RunRollup.objects.bulk_create(RunRollup(grain=grain, bucket=bucket, **_fields(row)) for row in rows)


def _fields(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "task_id": row["task_id"],
        "worker": row["worker"],
        "state": row["state"],
        "count": row["n"],
        "duration_sum": row["duration"],
        "last_run": row["last"],
        "last_error": row["last_error"],
        **{column: row[column] for column in HISTOGRAM_COLUMNS},
    }


def error_text(error: Any) -> str:
    """A run's error in one line: "Type: message"."""
    if not isinstance(error, dict):
        return ""
    text = ": ".join(str(part) for part in (error.get("type"), error.get("message")) if part)
    return " ".join(text.split())[:500]


def _recompute_coarse(hour: dt.datetime) -> None:
    end = hour + dt.timedelta(seconds=COARSE)
    fine = RunRollup.objects.filter(grain=FINE, bucket__gte=hour, bucket__lt=end)
    rows = list(
        fine.order_by()
        .values("task_id", "worker", "state")
        .annotate(
            n=Sum("count"),
            duration=Sum("duration_sum"),
            last=Max("last_run"),
            **{column: Sum(column) for column in HISTOGRAM_COLUMNS},
        )
    )
    # The error of each failed group's newest run.
    errors = dict(fine.filter(state=S.FAILED).order_by("last_run").values_list("last_run", "last_error"))
    for row in rows:
        row["last_error"] = errors.get(row["last"], "") if row["state"] == S.FAILED else ""
    _replace(COARSE, hour, rows)


# --- reading -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    name: str
    span: dt.timedelta
    grain: int  # the rollup rows read
    interval: dt.timedelta  # one bar of the chart
    bar_text: str


WINDOWS = {
    window.name: window
    for window in (
        Window("1h", dt.timedelta(hours=1), FINE, dt.timedelta(minutes=5), "5 minutes"),
        Window("24h", dt.timedelta(hours=24), COARSE, dt.timedelta(hours=1), "hour"),
        Window("7d", dt.timedelta(days=7), COARSE, dt.timedelta(hours=6), "6 hours"),
    )
}
FINISHED = (S.COMPLETED, S.FAILED, S.CANCELLED, S.SKIPPED)


def quantile(q: float, cumulative: list[int], bounds: tuple[float, ...]) -> float | None:
    """The q-quantile of a cumulative histogram, interpolated within its bucket as
    Prometheus' histogram_quantile() does; None without observations."""
    total = cumulative[-1] if cumulative else 0
    if not total:
        return None
    rank = q * total
    below, lower = 0, 0.0
    for count, upper in zip(cumulative, bounds, strict=True):
        if count >= rank:
            if math.isinf(upper):
                return lower  # beyond the last finite bound: say that bound
            inside = count - below
            return lower + (upper - lower) * ((rank - below) / inside if inside else 1)
        below, lower = count, upper
    return lower


@dataclass
class TaskFigures:
    task_id: int
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    durations: list[int] = field(default_factory=lambda: [0] * len(DURATION_BOUNDS))
    last_failed_run: int | None = None
    last_error: str = ""

    @property
    def failed(self) -> int:
        return self.counts[S.FAILED]

    @property
    def p50(self) -> float | None:
        return quantile(0.5, self.durations, DURATION_BOUNDS)

    @property
    def p95(self) -> float | None:
        return quantile(0.95, self.durations, DURATION_BOUNDS)

    @property
    def success_rate(self) -> float | None:
        return success_rate(self.counts)


def success_rate(counts: dict[str, int]) -> float | None:
    """Completed among the runs that completed or failed; None when there were none."""
    judged = counts.get(S.COMPLETED, 0) + counts.get(S.FAILED, 0)
    return counts.get(S.COMPLETED, 0) / judged if judged else None


@dataclass
class Summary:
    window: Window
    start: dt.datetime  # of the first bar
    upto: dt.datetime | None  # the rollup is complete to here
    bars: list[tuple[dt.datetime, dict[str, int]]]
    counts: dict[str, int]
    tasks: dict[int, TaskFigures]
    lateness: list[int]

    @property
    def success_rate(self) -> float | None:
        return success_rate(self.counts)

    @property
    def lateness_p99(self) -> float | None:
        return quantile(0.99, self.lateness, LATENESS_BOUNDS)

    @property
    def scheduled_runs(self) -> int:
        return self.lateness[-1] if self.lateness else 0

    def top_failing(self, n: int = 5) -> list[TaskFigures]:
        failing = [figures for figures in self.tasks.values() if figures.failed]
        return sorted(failing, key=lambda f: (-f.failed, f.task_id))[:n]


def summary(window: Window, now: dt.datetime | None = None) -> Summary:
    """The window's figures, summed in the database from the rollup rows of its grain (a
    range of index rollup_one_per_bucket): a few hundred rows come back, whatever the history."""
    now = now or timezone.now()
    interval = int(window.interval.total_seconds())
    start = floor(now - window.span + window.interval, interval)
    rows = RunRollup.objects.filter(grain=window.grain, bucket__gte=start).order_by()
    bars: dict[dt.datetime, dict[str, int]] = {}
    bar = start
    while bar <= now:
        bars[bar] = dict.fromkeys(FINISHED, 0)
        bar += window.interval
    for bucket, state, n in rows.values_list("bucket", "state").annotate(n=Sum("count")):
        bars.setdefault(floor(bucket, interval), dict.fromkeys(FINISHED, 0))[state] += n
    counts: dict[str, int] = dict.fromkeys(FINISHED, 0)
    tasks: dict[int, TaskFigures] = {}
    for task_id, state, n in rows.values_list("task_id", "state").annotate(n=Sum("count")):
        counts[state] += n
        figures = tasks.get(task_id) or tasks.setdefault(task_id, TaskFigures(task_id))
        figures.counts[state] += n
    judged = rows.filter(state__in=[S.COMPLETED, S.FAILED])
    for task_id, *durations in judged.values_list("task_id").annotate(
        *(Sum(column) for column in DURATION_COLUMNS)
    ):
        tasks[task_id].durations = list(durations)
    lateness = rows.aggregate(**{column: Sum(column) for column in LATENESS_COLUMNS})
    result = Summary(
        window=window,
        start=start,
        upto=RollupProgress.objects.filter(name=PROGRESS).values_list("upto", flat=True).first(),
        bars=sorted(bars.items()),
        counts=counts,
        tasks=tasks,
        lateness=[lateness[column] or 0 for column in LATENESS_COLUMNS],
    )
    _add_last_errors(result, rows)
    return result


def _add_last_errors(summary: Summary, rows: Any) -> None:
    """The newest error of each task failing most (their failed rows in the window only)."""
    top = {figures.task_id: figures for figures in summary.top_failing()}
    failed = rows.filter(state=S.FAILED, task_id__in=top).order_by("bucket", "last_run")
    for task_id, last_run, last_error in failed.values_list("task_id", "last_run", "last_error"):
        top[task_id].last_failed_run, top[task_id].last_error = last_run, last_error


def worker_totals(since: dt.datetime) -> dict[str, dict[str, int]]:
    """Runs each worker finished since `since`, by final state, from the hour buckets (the
    hour holding `since` counted whole)."""
    rows = (
        RunRollup.objects.filter(grain=COARSE, bucket__gte=floor(since, COARSE))
        .exclude(worker="")
        .values_list("worker", "state")
        .annotate(n=Sum("count"))
        .order_by()
    )
    totals: dict[str, dict[str, int]] = defaultdict(dict)
    for worker, state, n in rows:
        totals[worker][state] = n
    return dict(totals)
