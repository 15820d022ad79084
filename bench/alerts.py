"""Alerts: what evaluating them adds to each finished run, and what beat's sweep costs at scale.

In one process on the same MariaDB (figures to bench/results/alerts.json):
  moves   N runs moved pending -> running -> completed and N moved pending -> running -> failed,
          as a worker moves them (get_with_task, execution.claim, then complete or fail: each a
          lifecycle.move, with its after-move hook and every subscriber), with the rules
          disabled and with four enabled rules watching them (failure over everything; failure
          of the task, 3 in a row; overrun; late: the runs are a schedule's). Rounds alternate
          the sides; per run, the median round's wall time and DB queries; the difference is
          what evaluating alerts costs a finished run.
  burst   BURST runs of one task failing, moved by two threads (two workers), under one failure
          rule with two channels: it must make exactly 1 alert and 1 notification per channel.
  sweep   10,000 schedules (next fire tomorrow; bulk-inserted, so without django-celery-beat
          mirrors, as bench/scheduler.py does), 100,000 runs of them (mostly finished, 2 % of
          the latest running, 2 % pending; one INSERT ... SELECT), 20,000 resolved alerts (a
          month's, as retention keeps them), 20 workers, and late, overrun and worker_offline
          rules over everything: alerts.sweep(now) timed --sweeps times each (median, p95, CPU,
          queries) when
            quiet   nothing is late, overrun or offline (every sweep of a healthy system);
            fresh   TROUBLES schedules late, runs late, runs overrun and 5 workers offline, no
                    alert open yet (open alerts deleted before each call): it opens them all;
            steady  the same, their alerts open (what each sweep costs while they stay open);
          then EXPLAIN of every SELECT the sweep made (is each read through an index?), and
          failed runs of the 100,000-run task under its 3-in-a-row rule (the streak query).
The sweep is run with one fixed `now`, so heartbeats written at setup stay fresh.

    .venv/bin/python bench/alerts.py [--runs 1000] [--rounds 2] [--sweeps 20] [--no-stock]
        [--schedules 10000] [--history 100000] [--alert-history 20000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import RESULTS, ROOT, ensure_database, platform_env, run_columns, truncate, write_results
from bench.common import explain as explain_sql
from bench.scheduler import percentile

HOST = "bench@host"
ERROR = {"type": "ValueError", "message": "bench failure", "traceback": ""}
BURST = 1000
TROUBLES = 50  # of each kind, in the sweep's fresh and steady states
OFFLINE = 5
TABLES = (
    "tasks_app_notification",
    "tasks_app_alertevent",
    "tasks_app_alert",
    "tasks_app_alertrule_channels",
    "tasks_app_alertrule",
    "tasks_app_channel",
    "tasks_app_runlog",
    "tasks_app_runevent",
    "tasks_app_run",
    "tasks_app_schedule",
    "tasks_app_worker",
)


class Queries:
    """An execute_wrapper counting statements (and keeping them, if asked)."""

    def __init__(self, keep: bool = False) -> None:
        self.count = 0
        self.kept: list[tuple[str, Any]] | None = [] if keep else None

    def __call__(self, execute: Callable, sql: str, params: Any, many: bool, context: Any) -> Any:
        self.count += 1
        if self.kept is not None:
            self.kept.append((sql, params))
        return execute(sql, params, many, context)


def reset() -> None:
    from tasks_app import alerts

    truncate(TABLES)
    alerts.forget_rules()


def channels() -> list[Any]:
    from tasks_app.choices import ChannelKind
    from tasks_app.models import Channel

    return [
        Channel.objects.create(
            name="bench hook", kind=ChannelKind.WEBHOOK, target="http://127.0.0.1:9/bench"
        ),
        Channel.objects.create(name="bench mail", kind=ChannelKind.EMAIL, target="bench@example.com"),
    ]


def rule(name: str, condition: str, told: list[Any], **fields: Any) -> Any:
    from tasks_app.models import AlertRule

    made = AlertRule.objects.create(name=name, condition=condition, **fields)
    made.channels.set(told)
    return made


def enable_rules(enabled: bool, **only: Any) -> None:
    from tasks_app import alerts
    from tasks_app.models import AlertRule

    AlertRule.objects.update(enabled=False)
    if enabled:
        AlertRule.objects.filter(**only).update(enabled=True)
    alerts.forget_rules()


_instants = iter(range(10**9))


def pending_runs(task: Any, count: int, schedule: Any = None) -> list[int]:
    """Insert `count` runs born pending (as a submission does), of `schedule` if given."""
    from django.utils import timezone

    from tasks_app import lifecycle
    from tasks_app.choices import Actor, RunState, RunTrigger
    from tasks_app.models import Run

    now = timezone.now()
    base = now - dt.timedelta(days=30)
    ids: list[int] = []
    for first in range(0, count, 1000):
        born = []
        for _ in range(first, min(count, first + 1000)):
            run = Run(task=task, trigger=RunTrigger.API)
            if schedule is not None:
                run.trigger, run.schedule = RunTrigger.SCHEDULE, schedule
                run.scheduled_for = base + dt.timedelta(seconds=next(_instants))
            born.append((run, RunState.PENDING, "bench"))
        ids += [run.pk for run in lifecycle.insert_runs(born, at=now, actor=Actor.SYSTEM)]
    return ids


def finish(ids: list[int], failing: bool, load: Callable[[int], Any] | None = None) -> None:
    """What a worker does with each run: load it with its task, claim it, record its outcome."""
    from tasks_app import execution
    from tasks_app.run_loader import get_with_task

    for pk in ids:
        run = (load or get_with_task)(pk)
        execution.claim(run, run.message_number, HOST)
        if failing:
            execution.fail(run, ERROR, reason="ValueError after 1 attempt", hostname=HOST)
        else:
            execution.complete(run, None, HOST)


# --- moves ---------------------------------------------------------------------------


def moves(count: int, rounds: int) -> dict[str, Any]:
    from django.db import connection
    from django.utils import timezone

    from tasks_app.choices import AlertCondition as C
    from tasks_app.choices import AlertState
    from tasks_app.models import Alert, Schedule, Task

    reset()
    task = Task.objects.get_or_create(name="bench-alerts", defaults={"handler": "builtin.noop"})[0]
    schedule = Schedule.objects.bulk_create(
        [Schedule(task=task, cron="* * * * *", next_fire_at=timezone.now() + dt.timedelta(days=1))]
    )[0]
    told = channels()[:1]
    rule("failure of everything", C.FAILURE, told)
    rule("failure of the task, 3 in a row", C.FAILURE, told, task=task, consecutive=3)
    rule("overrun", C.OVERRUN, told, max_seconds=3600)
    rule("late", C.LATE, told, grace_seconds=60)

    cells = [(outcome, side) for outcome in ("completed", "failed") for side in ("no_rules", "rules")]
    samples: dict[tuple[str, str], list[dict[str, float]]] = {cell: [] for cell in cells}
    for _round in range(rounds):
        for outcome, side in cells:
            enable_rules(side == "rules")
            ids = pending_runs(task, count, schedule)
            queries = Queries()
            started = time.perf_counter()
            with connection.execute_wrapper(queries):
                finish(ids, failing=outcome == "failed")
            elapsed = time.perf_counter() - started
            samples[(outcome, side)].append(
                {"us_per_run": elapsed / count * 1e6, "queries_per_run": queries.count / count}
            )
            print(f"  moves {outcome:9s} {side:8s} {samples[(outcome, side)][-1]}", flush=True)

    figures: dict[str, Any] = {"runs_per_cell": count, "rounds": rounds}
    for outcome in ("completed", "failed"):
        sides = {}
        for side in ("no_rules", "rules"):
            rows = samples[(outcome, side)]
            sides[side] = {
                "us_per_run": round(statistics.median(r["us_per_run"] for r in rows), 1),
                "queries_per_run": round(statistics.median(r["queries_per_run"] for r in rows), 3),
                "rounds_us_per_run": [round(r["us_per_run"], 1) for r in rows],
            }
        sides["evaluation_us_per_run"] = round(
            sides["rules"]["us_per_run"] - sides["no_rules"]["us_per_run"], 1
        )
        sides["evaluation_queries_per_run"] = round(
            sides["rules"]["queries_per_run"] - sides["no_rules"]["queries_per_run"], 3
        )
        figures[outcome] = sides
    figures["alerts_made"] = {
        "open": Alert.objects.filter(state=AlertState.OPEN).count(),
        "resolved": Alert.objects.filter(state=AlertState.RESOLVED).count(),
    }
    return figures


def burst(count: int, threads: int = 2) -> dict[str, Any]:
    from django.db import connection
    from django.db.models import Count

    from tasks_app.choices import AlertCondition as C
    from tasks_app.choices import RunState
    from tasks_app.models import Alert, AlertEvent, Notification, Run, Task

    task = Task.objects.get_or_create(name="bench-burst", defaults={"handler": "builtin.noop"})[0]
    told = channels()
    burst_rule = rule("burst: failure of the task", C.FAILURE, told, task=task)
    enable_rules(True, pk=burst_rule.pk)
    ids = pending_runs(task, count)

    def worker(share: list[int]) -> None:
        # The ORM's read, not get_with_task: run_loader caches one loader per alias, holding
        # the connection of the thread that first used it, and from another thread it raises.
        try:
            finish(share, failing=True, load=lambda pk: Run.objects.select_related("task").get(pk=pk))
        finally:
            connection.close()

    workers = [threading.Thread(target=worker, args=(ids[n::threads],)) for n in range(threads)]
    started = time.perf_counter()
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    elapsed = time.perf_counter() - started
    per_channel = dict(
        Notification.objects.filter(alert__rule=burst_rule)
        .values_list("channel__name")
        .annotate(n=Count("id"))
        .values_list("channel__name", "n")
    )
    made = Alert.objects.filter(rule=burst_rule).count()
    failed = Run.objects.filter(task=task, state=RunState.FAILED).count()
    figures = {
        "failed_runs": failed,
        "threads": threads,
        "runs_per_s": round(count / elapsed, 1),
        "alerts": made,
        "alert_events": AlertEvent.objects.filter(alert__rule=burst_rule).count(),
        "notifications_per_channel": {channel.name: per_channel.get(channel.name, 0) for channel in told},
    }
    figures["ok"] = (
        failed == count and made == 1 and all(n == 1 for n in figures["notifications_per_channel"].values())
    )
    return figures


# --- the sweep -----------------------------------------------------------------------


def insert_runs_sql(task: Any, schedule_ids: list[int], runs: int, now: dt.datetime) -> None:
    """`runs` runs of `schedule_ids` in one INSERT ... SELECT from MariaDB's sequence engine: run n
    is schedule n % len's, at minute n // len. bulk_create took 61 s for 100,000 in one run here
    (Django preparing 31 values a row: 4.2 s for 10,000 against 0.7 s for this); the insert trigger
    writes their events all the same."""
    from django.db import connection

    from tasks_app.models import Run

    count = len(schedule_ids)
    if schedule_ids != list(range(schedule_ids[0], schedule_ids[0] + count)):
        raise SystemExit("the schedules' ids are not contiguous (the table was not emptied?)")
    at = connection.ops.adapt_datetimefield_value(now)
    last = runs // count - 1
    index, minute = f"MOD(seq, {count})", f"(seq DIV {count})"
    latest, spread = f"{minute} = {last}", f"MOD({index} + {minute}, 50)"
    state = (
        f"CASE WHEN {latest} AND MOD({index}, 50) = 0 THEN 'running' "
        f"WHEN {latest} AND MOD({index}, 50) = 1 THEN 'pending' "
        f"WHEN {spread} < 45 THEN 'completed' WHEN {spread} < 49 THEN 'failed' ELSE 'cancelled' END"
    )
    # The latest of each schedule 20 s ago, the others a minute apart before it.
    instant = f"TIMESTAMPADD(SECOND, -(({last} - {minute}) * 60 + 20), %s)"
    ended = "st NOT IN ('running', 'pending')"
    given = {
        "task": ("%s", [task.pk]),
        "trigger": ("'schedule'", []),
        "schedule": (f"%s + {index}", [schedule_ids[0]]),
        "scheduled_for": ("instant", []),
        "created_at": ("instant", []),
        "state": ("st", []),
        "message_number": ("1", []),
        "attempt": ("IF(st = 'pending', 0, 1)", []),
        "worker": ("IF(st = 'pending', '', 'w0@bench')", []),
        "started_at": ("IF(st = 'pending', NULL, TIMESTAMPADD(MICROSECOND, 100000, instant))", []),
        "finished_at": (f"IF({ended}, TIMESTAMPADD(SECOND, 1, instant), NULL)", []),
        "state_changed_at": (
            f"IF({ended}, TIMESTAMPADD(SECOND, 1, instant), TIMESTAMPADD(MICROSECOND, 100000, instant))",
            [],
        ),
        "state_reason": ("'bench'", []),
    }
    columns, values, params = run_columns(given)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {Run._meta.db_table} ({', '.join(columns)}) SELECT {', '.join(values)} "
            f"FROM (SELECT seq, {state} AS st, {instant} AS instant FROM seq_0_to_{runs - 1}) AS made",
            [*params, at],
        )


def populate(now: dt.datetime, schedules: int, runs: int) -> dict[str, Any]:
    """`schedules` schedules, `runs` runs (10 a schedule, a minute apart, the latest 20 s ago; the
    latest of 2 % running, of 2 % pending), 20 workers heartbeating and 10 stopped."""
    from django.db.models import Count

    from tasks_app.models import Run, Schedule, Task, Worker

    reset()
    task = Task.objects.get_or_create(name="bench-sweep", defaults={"handler": "builtin.noop"})[0]
    started = time.perf_counter()
    Schedule.objects.bulk_create(
        [
            Schedule(task=task, cron="* * * * *", next_fire_at=now + dt.timedelta(days=1))
            for _ in range(schedules)
        ],
        batch_size=5000,
    )
    schedule_ids = list(Schedule.objects.order_by("pk").values_list("pk", flat=True))
    insert_runs_sql(task, schedule_ids, runs, now)
    Worker.objects.bulk_create(
        [
            Worker(
                hostname=f"w{n}@bench",
                queues=["default"],
                handlers=["builtin.noop"],
                concurrency=2,
                last_heartbeat=now - dt.timedelta(seconds=2),
            )
            for n in range(20)
        ]
        + [
            Worker(
                hostname=f"gone{n}@bench",
                last_heartbeat=now - dt.timedelta(hours=1),
                stopped_at=now - dt.timedelta(hours=1),
            )
            for n in range(10)
        ]
    )
    return {
        "task": task,
        "schedule_ids": schedule_ids,
        "insert_s": round(time.perf_counter() - started, 1),
        "states": dict(Run.objects.values_list("state").annotate(n=Count("id")).values_list("state", "n")),
    }


def make_troubles(now: dt.datetime, schedule_ids: list[int]) -> None:
    """TROUBLES late schedules (none of their instants fired for 10 minutes), late pending runs
    and overrun running runs; OFFLINE workers that stopped heartbeating. Timestamps only: no
    state changes, so no events. A late run is put 70 s back, after its schedule's runs that
    started (80 s back and before): alerts._late_ended resolves a late run's alert as soon as
    any run of its schedule for a later instant started, and the next sweep opens it again."""
    from tasks_app.choices import RunState as S
    from tasks_app.models import Run, Schedule, Worker

    late = [pk for n, pk in enumerate(schedule_ids) if n % 50 == 2][:TROUBLES]
    Schedule.objects.filter(pk__in=late).update(next_fire_at=now - dt.timedelta(minutes=10))
    Run.objects.filter(schedule_id__in=late).delete()
    for state, field, back in ((S.PENDING, "scheduled_for", 70), (S.RUNNING, "state_changed_at", 3600)):
        ids = list(Run.objects.filter(state=state).order_by("pk").values_list("pk", flat=True)[:TROUBLES])
        Run.objects.filter(pk__in=ids).update(**{field: now - dt.timedelta(seconds=back)})
    hosts = [f"w{n}@bench" for n in range(OFFLINE)]
    Worker.objects.filter(hostname__in=hosts).update(last_heartbeat=now - dt.timedelta(minutes=10))


def time_sweeps(now: dt.datetime, calls: int, before: Callable[[], object] | None = None) -> dict[str, Any]:
    from django.db import connection

    from tasks_app import alerts

    walls, cpus, counts, changed = [], [], [], []
    for _ in range(calls):
        if before is not None:
            before()
        queries = Queries()
        with connection.execute_wrapper(queries):
            wall, cpu = time.perf_counter(), time.process_time()
            changed.append(alerts.sweep(now))
            cpus.append((time.process_time() - cpu) * 1000)
            walls.append((time.perf_counter() - wall) * 1000)
        counts.append(queries.count)
    return {
        "median_ms": round(statistics.median(walls), 2),
        "p95_ms": percentile(walls, 0.95),
        "first_ms": round(walls[0], 2),
        "cpu_median_ms": round(statistics.median(cpus), 2),
        "queries_per_sweep": statistics.median(counts),
        "queries_range": [min(counts), max(counts)],
        "alerts_changed_per_sweep": statistics.median(changed),
    }


def shape(sql: str) -> str:
    """A statement with its IN lists folded: one entry per query, whatever its list's length."""
    return re.sub(r"IN \((?:%s, )*%s\)", "IN (...)", sql)


def explain(kept: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    """EXPLAIN each distinct SELECT of `kept`: per table, the access type, key and rows."""
    seen: dict[str, tuple[str, Any]] = {}
    for sql, params in kept:
        if sql.lstrip().upper().startswith("SELECT") and shape(sql) not in seen:
            seen[shape(sql)] = (sql, params)
    plans = []
    for folded, (sql, params) in seen.items():
        where = folded.split(" WHERE ", 1)[1] if " WHERE " in folded else ""
        table = re.search(r"FROM `(\w+)`", folded)
        plans.append(
            {
                "query": f"{table.group(1) if table else '?'}: {where}"[:300],
                "plan": [
                    {k: row[k] for k in ("table", "type", "key", "rows", "Extra") if k in row}
                    for row in explain_sql(sql, params)
                ],
            }
        )
    return plans


def sweep(calls: int, schedules: int, runs: int, history: int) -> dict[str, Any]:
    from django.db import connection
    from django.db.models import Count
    from django.utils import timezone

    from tasks_app import alerts
    from tasks_app.choices import AlertCondition as C
    from tasks_app.choices import AlertState
    from tasks_app.choices import RunState as S
    from tasks_app.models import Alert, Run

    now = timezone.now().replace(microsecond=0)
    made = populate(now, schedules, runs)
    told = channels()[:1]
    sweepers = [
        rule("late", C.LATE, told, grace_seconds=60, reminder_seconds=3600),
        rule("overrun", C.OVERRUN, told, max_seconds=600, reminder_seconds=3600),
        rule("worker offline", C.WORKER_OFFLINE, told, reminder_seconds=3600),
    ]
    # Resolved alerts of the last RUN_RETENTION_DAYS (30), as retention keeps them.
    month = dt.timedelta(days=30) / max(history, 1)
    Alert.objects.bulk_create(
        [
            Alert(
                rule=sweepers[n % 3],
                subject_key=f"history:{n}",
                subject=f"history {n}",
                open_key=None,
                state=AlertState.RESOLVED,
                reason="bench history",
                opened_at=now - dt.timedelta(days=30) + n * month,
                resolved_at=now - dt.timedelta(days=30) + n * month + dt.timedelta(minutes=1),
            )
            for n in range(history)
        ],
        batch_size=5000,
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE TABLE tasks_app_run, tasks_app_schedule, tasks_app_alert")
        cursor.fetchall()
    figures: dict[str, Any] = {
        "schedules": schedules,
        "runs": runs,
        "run_states": made["states"],
        "insert_s": made["insert_s"],
        "troubles_of_each_kind": TROUBLES,
        "workers_offline": OFFLINE,
        "resolved_alerts_kept": history,
    }
    print(f"  sweep: inserted in {made['insert_s']} s: {made['states']}", flush=True)
    figures["quiet"] = time_sweeps(now, calls)
    print(f"  sweep quiet  {figures['quiet']}", flush=True)

    make_troubles(now, made["schedule_ids"])
    figures["fresh"] = time_sweeps(
        now, calls, before=lambda: Alert.objects.filter(state=AlertState.OPEN).delete()
    )
    print(f"  sweep fresh  {figures['fresh']}", flush=True)
    figures["steady"] = time_sweeps(now, calls)
    print(f"  sweep steady {figures['steady']}", flush=True)
    figures["open_alerts"] = dict(
        Alert.objects.filter(state=AlertState.OPEN)
        .values_list("rule__name")
        .annotate(n=Count("id"))
        .values_list("rule__name", "n")
    )

    # One sweep that opens, one that finds them open: every SELECT a sweep makes.
    kept = Queries(keep=True)
    Alert.objects.filter(state=AlertState.OPEN).delete()
    with connection.execute_wrapper(kept):
        alerts.sweep(now)
        alerts.sweep(now)
    figures["explain"] = explain(kept.kept)

    # A failed run of the 100,000-run task under its 3-in-a-row rule: the streak query reads
    # that task's history.
    rule("failure of the task, 3 in a row", C.FAILURE, told, task=made["task"], consecutive=3)
    enable_rules(True, condition=C.FAILURE)
    ids = list(Run.objects.filter(state=S.PENDING).order_by("-pk").values_list("pk", flat=True)[:20])
    kept = Queries(keep=True)
    started = time.perf_counter()
    with connection.execute_wrapper(kept):
        finish(ids, failing=True)
    per_run = (time.perf_counter() - started) / len(ids) * 1e6
    streak = [(sql, params) for sql, params in kept.kept if "ORDER BY `tasks_app_run`.`id` DESC" in sql]
    figures["failed_run_at_full_history"] = {
        "runs": len(ids),
        "us_per_failed_run": round(per_run, 1),
        "queries_per_run": round(kept.count / len(ids), 2),
        "streak_query_ms": round(time_query(*streak[-1]), 2) if streak else None,
        "explain": explain(streak[-1:]),
    }
    return figures


def time_query(sql: str, params: Any, times: int = 20) -> float:
    from django.db import connection

    with connection.cursor() as cursor:
        started = time.perf_counter()
        for _ in range(times):
            cursor.execute(sql, params)
            cursor.fetchall()
        return (time.perf_counter() - started) / times * 1000


def stock_tick(schedules: int) -> dict[str, Any]:
    """bench/scheduler.py's stock child at `schedules` schedules (it empties the tables first)."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "scheduler.py"), "--child", "stock", "--size", str(schedules)],
        cwd=ROOT,
        env=platform_env(LOG_LEVEL="WARNING"),
        check=True,
        capture_output=True,
        text=True,
    )
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return {"schedules": schedules, **{k: figures[k] for k in ("tick_cpu_ms", "start_s", "rss_mb")}}


# --- main ----------------------------------------------------------------------------


def table(figures: dict[str, Any]) -> None:
    moved = figures["moves"]
    print(f"\nper finished run ({moved['runs_per_cell']} runs, median of {moved['rounds']} rounds):")
    head = ("outcome", "no rules us", "rules us", "cost us", "q/run", "q/run", "+q")
    print("  {:10s} {:>12s} {:>10s} {:>9s} {:>6s} {:>6s} {:>5s}".format(*head))
    for outcome in ("completed", "failed"):
        cell = moved[outcome]
        print(
            f"  {outcome:10s} {cell['no_rules']['us_per_run']:12.0f} {cell['rules']['us_per_run']:10.0f} "
            f"{cell['evaluation_us_per_run']:9.0f} {cell['no_rules']['queries_per_run']:6.2f} "
            f"{cell['rules']['queries_per_run']:6.2f} {cell['evaluation_queries_per_run']:5.2f}"
        )
    shot = figures["burst"]
    print(
        f"burst: {shot['failed_runs']} failed runs -> {shot['alerts']} alert, notifications "
        f"{shot['notifications_per_channel']} ({'ok' if shot['ok'] else 'WRONG'}), "
        f"{shot['runs_per_s']} runs/s"
    )
    if "sweep" in figures:
        swept = figures["sweep"]
        print(f"sweep at {swept['schedules']} schedules / {swept['runs']} runs:")
        print(
            f"  {'state':8s} {'median ms':>10s} {'p95 ms':>8s} {'cpu ms':>7s} {'queries':>8s} {'changed':>8s}"
        )
        for state in ("quiet", "fresh", "steady"):
            row = swept[state]
            print(
                f"  {state:8s} {row['median_ms']:10.1f} {row['p95_ms']:8.1f} {row['cpu_median_ms']:7.1f} "
                f"{row['queries_per_sweep']:8} {row['alerts_changed_per_sweep']:8}"
            )
        for plan in swept["explain"] + swept["failed_run_at_full_history"]["explain"]:
            keys = ", ".join(
                f"{row['table']}:{row['type']}/{row['key']}({row['rows']})" for row in plan["plan"]
            )
            print(f"  EXPLAIN {keys:55s} {plan['query'][:110]}")
        slow = swept["failed_run_at_full_history"]
        print(
            f"  a failed run at {swept['runs']} runs of its task (3-in-a-row rule): "
            f"{slow['us_per_failed_run']:.0f} us, "
            f"{slow['queries_per_run']} queries; streak query {slow['streak_query_ms']} ms"
        )
    if figures.get("stock"):
        stock = figures["stock"]
        print(
            f"stock django-celery-beat, one tick at {stock['schedules']} schedules: "
            f"{stock['tick_cpu_ms']} ms CPU"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=1000, help="runs per side, outcome and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sweeps", type=int, default=20)
    parser.add_argument("--schedules", type=int, default=10_000)
    parser.add_argument("--history", type=int, default=100_000, help="runs in the table during the sweep")
    parser.add_argument("--alert-history", type=int, default=20_000, help="resolved alerts kept")
    parser.add_argument("--no-stock", action="store_true", help="skip stock beat's tick (about 25 s)")
    parser.add_argument("--out", default=str(RESULTS / "alerts.json"))
    args = parser.parse_args()
    ensure_database()
    os.environ.update(platform_env(LOG_LEVEL="ERROR"))  # an alert opened logs a warning
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    started = time.perf_counter()
    figures: dict[str, Any] = {"moves": moves(args.runs, args.rounds), "burst": burst(BURST)}
    if not args.no_stock:
        figures["stock"] = stock_tick(args.schedules)
        print(f"  stock beat {figures['stock']}", flush=True)
    figures["sweep"] = sweep(args.sweeps, args.schedules, args.history, args.alert_history)
    reset()
    figures["elapsed_s"] = round(time.perf_counter() - started, 1)
    table(figures)
    swept = figures["sweep"]
    shown = {
        "evaluation_us_per_completed_run": figures["moves"]["completed"]["evaluation_us_per_run"],
        "evaluation_us_per_failed_run": figures["moves"]["failed"]["evaluation_us_per_run"],
        "burst_ok": figures["burst"]["ok"],
        "sweep_median_ms": {state: swept[state]["median_ms"] for state in ("quiet", "fresh", "steady")},
        "stock_beat_tick_cpu_ms": figures.get("stock", {}).get("tick_cpu_ms"),
    }
    write_results(args.out, figures, shown)
    if not figures["burst"]["ok"]:
        raise SystemExit("the burst did not make exactly one alert and one notification per channel")


if __name__ == "__main__":
    main()
