"""The console's dashboard with a million runs in the table: rollup against the naive query.

    .venv/bin/python bench/console.py [--runs 1000000] [--requests 20]

1. Inserts `--runs` finished runs of 20 tasks over the last 7 days (one INSERT ... SELECT from
   MariaDB's sequence engine; the insert trigger writes each run's event as always): 93 %
   completed, 5 % failed, 1 % cancelled, 1 % skipped; durations from 10 ms to 2 min; a third
   fired by schedules; two workers.
2. Brings the rollup up to date as beat would (`rollups.refresh()` until caught up), timed,
   then times a steady pass (what beat pays each ROLLUP_INTERVAL).
3. Times the dashboard (GET /admin/?window=1h|24h|7d, signed in as a superuser, in-process
   through Django's test client: the view, its queries and the template) `--requests` times per
   window after two warm-ups: median, p95, max, and its queries.
4. The baseline: the same window figures read the naive way, straight from the runs table
   (what a dashboard without a rollup does: GROUP BY over the window's runs through the
   run_finished_at index, and every duration fetched for the percentiles). Stock Celery,
   Flower and django-celery-results have no dashboard over history to compare with: Flower
   keeps recent tasks in memory only.

The issue's target: the dashboard under 300 ms with 1,000,000 runs in the table.
Figures to bench/results/console.json. It empties its tables before and after.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import (
    FAILED_ERROR,
    RESULTS,
    ensure_database,
    explain,
    platform_env,
    run_columns,
    truncate,
    write_results,
)

TASKS = 20
SPAN = dt.timedelta(days=7)
TABLES = (
    "tasks_app_runrollup",
    "tasks_app_rollupprogress",
    "tasks_app_runlog",
    "tasks_app_runevent",
    "tasks_app_run",
    "tasks_app_schedule",
    "tasks_app_worker",
    "tasks_app_task",
)


def reset() -> None:
    truncate(TABLES)


def populate(runs: int, now: dt.datetime) -> dict[str, Any]:
    from django.db import connection

    from tasks_app.models import Run, Task, Worker

    tasks = [Task.objects.create(name=f"bench-{i:02d}", handler="builtin.noop") for i in range(TASKS)]
    first = tasks[0].pk
    for i in range(2):
        Worker.objects.create(hostname=f"w{i}@bench", queues=["default"], concurrency=4, last_heartbeat=now)
    span_s = int(SPAN.total_seconds())
    # Run n finished n * span / runs seconds ago (newest first), of task n % 20, on worker
    # (n div 20) % 2, its state from (n div 40) % 100: every task, worker and state together in
    # every hour, the rollup's most rows.
    finished = f"TIMESTAMPADD(MICROSECOND, -(seq * {span_s * 1_000_000 // runs}), %s)"
    state = (
        "CASE WHEN MOD(seq DIV 40, 100) < 93 THEN 'completed' WHEN MOD(seq DIV 40, 100) < 98 THEN 'failed' "
        "WHEN MOD(seq DIV 40, 100) = 98 THEN 'cancelled' ELSE 'skipped' END"
    )
    # Durations 10 ms .. 2 min, by task and run.
    duration_us = "(10000 + MOD(seq * 7919, 1000) * (1 + MOD(seq, 20)) * 6000)"
    ran = "st IN ('completed', 'failed', 'cancelled')"
    given = {
        "task": (f"{first} + MOD(seq, {TASKS})", []),
        "trigger": ("IF(MOD(seq, 3) = 0, 'schedule', 'api')", []),
        "state": ("st", []),
        "message_number": ("1", []),
        "attempt": (f"IF({ran}, 1, 0)", []),
        "worker": (f"IF({ran}, CONCAT('w', MOD(seq DIV 20, 2), '@bench'), '')", []),
        "created_at": (f"TIMESTAMPADD(MICROSECOND, -{duration_us} - 50000, fin)", []),
        "scheduled_for": (
            f"IF(MOD(seq, 3) = 0, TIMESTAMPADD(MICROSECOND, -{duration_us} - 300000, fin), NULL)",
            [],
        ),
        "started_at": (f"IF({ran}, TIMESTAMPADD(MICROSECOND, -{duration_us}, fin), NULL)", []),
        "finished_at": ("fin", []),
        "state_changed_at": ("fin", []),
        "state_reason": ("'bench'", []),
        "error": FAILED_ERROR,
    }
    columns, values, params = run_columns(given)
    at = connection.ops.adapt_datetimefield_value(now)
    started = time.perf_counter()
    chunk = 100_000
    with connection.cursor() as cursor:
        for low in range(0, runs, chunk):
            high = min(runs, low + chunk) - 1
            cursor.execute(
                f"INSERT INTO {Run._meta.db_table} ({', '.join(columns)}) SELECT {', '.join(values)} "
                f"FROM (SELECT seq, {state} AS st, {finished} AS fin FROM seq_{low}_to_{high}) AS made",
                [*params, at],
            )
        cursor.execute("ANALYZE TABLE tasks_app_run")
        cursor.fetchall()
    return {"runs": Run.objects.count(), "insert_s": round(time.perf_counter() - started, 1)}


def backfill(now: dt.datetime) -> dict[str, Any]:
    from tasks_app import rollups
    from tasks_app.models import RollupProgress, RunRollup

    started = time.perf_counter()
    passes = buckets = 0
    longest = 0.0
    while True:  # beat's passes, back to back
        t0 = time.perf_counter()
        buckets += rollups.refresh(now)
        longest = max(longest, time.perf_counter() - t0)
        passes += 1
        if RollupProgress.objects.get(name=rollups.PROGRESS).upto >= now:
            break
    backfill_s = time.perf_counter() - started
    steady = []
    for i in range(10):  # beat's pass every ROLLUP_INTERVAL, nothing new meanwhile
        at = now + dt.timedelta(seconds=15 * (i + 1))
        t0 = time.perf_counter()
        rollups.refresh(at)
        steady.append((time.perf_counter() - t0) * 1000)
    return {
        "backfill_s": round(backfill_s, 1),
        "passes": passes,
        "backfill_pass_ms_max": round(longest * 1000, 1),  # what one beat tick pays at most
        "buckets": buckets,
        "rows": {grain.label: RunRollup.objects.filter(grain=grain).count() for grain in rollups.Grain},
        "steady_pass_ms_median": round(statistics.median(steady), 1),
        "steady_pass_ms_max": round(max(steady), 1),
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def time_dashboard(requests: int) -> dict[str, Any]:
    from django.contrib.auth.models import User
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    User.objects.filter(username="bench-boss").delete()
    client = Client()
    client.force_login(User.objects.create_superuser("bench-boss", password="pw"))
    figures = {}
    for window in ("1h", "24h", "7d"):
        url = f"/admin/?window={window}"
        for _ in range(2):
            assert client.get(url).status_code == 200
        times = []
        for _ in range(requests):
            t0 = time.perf_counter()
            response = client.get(url)
            times.append((time.perf_counter() - t0) * 1000)
            assert response.status_code == 200
        with CaptureQueriesContext(connection) as captured:
            html = client.get(url).content.decode()
        figures[window] = {
            "median_ms": round(statistics.median(times), 1),
            "p95_ms": round(percentile(times, 0.95), 1),
            "max_ms": round(max(times), 1),
            "queries": len(captured),
            "bars": html.count('<g class="bar"'),
        }
        print(f"  dashboard {window}: {figures[window]}", flush=True)
    return figures


def naive(window_name: str, now: dt.datetime) -> dict[str, Any]:
    """The window's figures straight from the runs table: counts per bar and state, per task
    and state, and each task's p50/p95 from every duration in the window."""
    from django.db import connection

    from tasks_app import rollups

    window = rollups.WINDOWS[window_name]
    since = now - window.span
    interval = int(window.interval.total_seconds())
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT FLOOR(UNIX_TIMESTAMP(finished_at) / %s), state, COUNT(*) FROM tasks_app_run "
            "WHERE finished_at >= %s GROUP BY 1, 2",
            [interval, since],
        )
        bars = cursor.fetchall()
        cursor.execute(
            "SELECT task_id, state, COUNT(*) FROM tasks_app_run WHERE finished_at >= %s GROUP BY 1, 2",
            [since],
        )
        cursor.fetchall()
        cursor.execute(
            "SELECT task_id, TIMESTAMPDIFF(MICROSECOND, started_at, finished_at) FROM tasks_app_run "
            "WHERE finished_at >= %s AND state IN ('completed', 'failed') AND started_at IS NOT NULL",
            [since],
        )
        durations: dict[int, list[int]] = {}
        for task_id, micros in cursor.fetchall():
            durations.setdefault(task_id, []).append(micros)
    for values in durations.values():
        values.sort()
        values[len(values) // 2], values[int(len(values) * 0.95)]
    return {"ms": round((time.perf_counter() - started) * 1000, 1), "bar_rows": len(bars)}


def time_naive(times: int, now: dt.datetime) -> dict[str, Any]:
    figures = {}
    for window in ("1h", "24h", "7d"):
        runs = [naive(window, now)["ms"] for _ in range(times)]
        figures[window] = {"median_ms": round(statistics.median(runs), 1), "max_ms": round(max(runs), 1)}
        print(f"  naive {window}: {figures[window]}", flush=True)
    return figures


def totals_match(now: dt.datetime) -> dict[str, Any]:
    """The rollup's counts of each window against a COUNT over the runs table from the same
    start: the dashboard shows what happened."""
    from django.db.models import Count

    from tasks_app import rollups
    from tasks_app.models import Run

    checked = {}
    for name, window in rollups.WINDOWS.items():
        summary = rollups.summary(window, now)
        counted = dict(
            Run.objects.filter(finished_at__gte=summary.start, finished_at__lte=now)
            .values_list("state")
            .annotate(n=Count("id"))
            .order_by()
        )
        # The summary lists every final state, 0 included; the GROUP BY only those it found.
        rolled = {state: n for state, n in summary.counts.items() if n}
        checked[name] = {"rollup": rolled, "runs": counted, "equal": rolled == counted}
    return checked


def explain_rollup_read(now: dt.datetime) -> list[dict[str, Any]]:
    from tasks_app import rollups
    from tasks_app.models import RunRollup

    plans = []
    for name, window in rollups.WINDOWS.items():
        query = RunRollup.objects.filter(grain=window.grain, bucket__gte=now - window.span)
        plans += [
            {"window": name, "key": plan.get("key"), "rows": plan.get("rows")}
            for plan in explain(*query.query.sql_with_params())
        ]
    return plans


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--naive", type=int, default=3, help="timings of the naive query per window")
    parser.add_argument("--out", default=str(RESULTS / "console.json"))
    args = parser.parse_args()
    ensure_database()
    os.environ.update(platform_env(LOG_LEVEL="ERROR"))
    import django

    django.setup()
    from django.core.management import call_command
    from django.utils import timezone

    call_command("migrate", verbosity=0)
    reset()
    now = timezone.now()
    started = time.perf_counter()
    made = populate(args.runs, now)
    print(f"  inserted {made['runs']} runs in {made['insert_s']} s", flush=True)
    rolled = backfill(now)
    print(f"  rollup: {rolled}", flush=True)
    figures: dict[str, Any] = {
        "populate": made,
        "rollup": rolled,
        "dashboard": time_dashboard(args.requests),
        "naive": time_naive(args.naive, now),
        "explain": explain_rollup_read(now),
        "totals": totals_match(now),
    }
    reset()
    figures["elapsed_s"] = round(time.perf_counter() - started, 1)
    shown = {
        "runs": made["runs"],
        "dashboard_median_ms": {w: f["median_ms"] for w, f in figures["dashboard"].items()},
        "dashboard_p95_ms": {w: f["p95_ms"] for w, f in figures["dashboard"].items()},
        "naive_median_ms": {w: f["median_ms"] for w, f in figures["naive"].items()},
        "rollup_backfill_s": rolled["backfill_s"],
        "rollup_steady_pass_ms": rolled["steady_pass_ms_median"],
        "target_met": all(f["p95_ms"] < 300 for f in figures["dashboard"].values()),
        "totals_equal": all(t["equal"] for t in figures["totals"].values()),
    }
    write_results(args.out, figures, shown)
    if not shown["totals_equal"]:
        raise SystemExit(f"the rollup's counts differ from the runs table's: {figures['totals']}")


if __name__ == "__main__":
    main()
