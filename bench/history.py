"""A history of millions: the runs list, a run's page and the admin's list at 10,000,000 runs,
and pruning a million of them while submissions go on.

    .venv/bin/python bench/history.py [--runs 10000000] [--requests 50] [--prune 1000000]

1. Inserts `--runs` runs over the last 30 days (INSERT ... SELECT from MariaDB's sequence
   engine, 100,000 a statement; the insert trigger writes each run's birth event as always),
   then each run's later moves as event rows (created -> pending -> running -> its end: a
   finished run has 4 events). 20 tasks (one rare: a run in 1,000), 50 schedules firing a
   third of the runs, workflow runs of 5 steps holding a tenth; 90 % completed, 6 % failed,
   2 % cancelled, 2 % skipped, a paused run in 100,000 spread over the history, the newest
   100 running and 100 pending. Timed per million; then checks, on a sample, that every run
   has its events.
2. Times, in-process through Django's test client (token-authenticated, as a client is; the
   app loaded through scheduler_site/wsgi.py, as gunicorn loads it, and the pauses of full
   garbage collections recorded),
   `--requests` times each after two warm-ups (p50, p99, max, queries): GET /api/v1/runs/,
   its filters (task, state, schedule, workflow_run, created_after/created_before), pages 2..5
   through the cursor's `next`, a run's page and its /events/ (runs picked across the
   history), and the admin's run list (/admin/tasks_app/run/, signed in as a superuser: plain,
   filtered by state and by task, searched, page 2).
3. Prunes `--prune` finished runs (retention.prune() with `now` set so that as many fall
   before its cutoff) while a thread submits runs one by one (POST /api/v1/runs/): the
   submissions' p50/p99 idle, then during the prune; the target is p99 under twice idle.
4. The EXPLAIN of each list query: the index it uses (the names in tasks_app/models/runs.py).

The issue's targets: list and filters p99 < 50 ms, a run and its events < 20 ms, the admin's
list < 300 ms, submit p99 during the prune < 2x idle. Figures to bench/results/history.json.
It empties its tables before it starts; `--keep` leaves the history in place afterwards.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import threading
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

TASKS = 20  # the last one rare: a run in 1,000
SCHEDULES = 50
STEPS = 5  # per workflow run; one run in ten is a step
SPAN = dt.timedelta(days=30)
CHUNK = 100_000
TABLES = (
    "tasks_app_runrollup",
    "tasks_app_rollupprogress",
    "tasks_app_runlog",
    "tasks_app_runevent",
    "tasks_app_run",
    "tasks_app_workflowrunevent",
    "tasks_app_workflowrun",
    "tasks_app_workflow",
    "tasks_app_schedule",
    "tasks_app_task",
)


def reset() -> None:
    truncate(TABLES)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def figures_of(times: list[float], **extra: Any) -> dict[str, Any]:
    return {
        "p50_ms": round(statistics.median(times), 1),
        "p99_ms": round(percentile(times, 0.99), 1),
        "max_ms": round(max(times), 1),
        **extra,
    }


class FullCollections:
    """The pauses of the garbage collector's full collections (ms), as a request sees them."""

    def __init__(self) -> None:
        self.pauses: list[float] = []
        self._started = 0.0

    def observe(self, phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses.append(round((time.perf_counter() - self._started) * 1000, 1))


full_collections = FullCollections()


# --- 1. the history ---------------------------------------------------------------------


def populate(runs: int, now: dt.datetime) -> dict[str, Any]:
    from django.db import connection

    from tasks_app.models import Run, Schedule, Task, Workflow, WorkflowRun

    tasks = [Task.objects.create(name=f"bench-{i:02d}", handler="builtin.noop") for i in range(TASKS)]
    first_task = tasks[0].pk
    schedules = [Schedule.objects.create(task=tasks[i % 19], interval_seconds=60) for i in range(SCHEDULES)]
    first_schedule = schedules[0].pk
    workflow = Workflow.objects.create(name="bench-flow", steps=[])
    span_us = int(SPAN.total_seconds() * 1_000_000)
    step_us = span_us // runs
    at = connection.ops.adapt_datetimefield_value(now)
    # Run n (0 the oldest) was created n * step after now - 30 days - 2 min: ids and
    # created_at grow together, as submissions make them.
    created = f"TIMESTAMPADD(MICROSECOND, CAST(seq AS SIGNED) * {step_us} - {span_us + 120_000_000}, %s)"
    state = (
        f"CASE WHEN seq >= {runs - 100} THEN 'pending' WHEN seq >= {runs - 200} THEN 'running' "
        "WHEN MOD(seq, 100000) = 7 THEN 'paused' "
        "WHEN MOD(seq DIV 7, 100) < 90 THEN 'completed' WHEN MOD(seq DIV 7, 100) < 96 THEN 'failed' "
        "WHEN MOD(seq DIV 7, 100) < 98 THEN 'cancelled' ELSE 'skipped' END"
    )
    duration_us = "(10000 + MOD(seq * 7919, 1000) * 60000)"  # 10 ms .. 1 min
    ran = "st IN ('completed', 'failed', 'cancelled', 'running')"
    in_workflow = f"MOD(seq, 50) < {STEPS}"
    scheduled = f"NOT ({in_workflow}) AND MOD(seq, 3) = 0"

    started = time.perf_counter()
    with connection.cursor() as cursor:
        # The workflow runs first: run n is step MOD(n, 50) of workflow run n DIV 50.
        workflow_runs = (runs + 49) // 50
        wr_created = (
            f"TIMESTAMPADD(MICROSECOND, CAST(seq AS SIGNED) * 50 * {step_us} - {span_us + 120_000_000}, %s)"
        )
        # Their ids are given: an INSERT ... SELECT's auto-increment may leave gaps between
        # statements, and the runs find their workflow run by arithmetic.
        for low in range(0, workflow_runs, CHUNK):
            high = min(workflow_runs, low + CHUNK) - 1
            cursor.execute(
                f"INSERT INTO {WorkflowRun._meta.db_table} (id, workflow_id, state, steps, created_by, "
                "awaiting_retry, created_at, started_at, finished_at, state_changed_at, state_reason, "
                "state_actor, state_actor_name) "
                f"SELECT n + 1, {workflow.pk}, 'completed', '[]', 'bench', '[]', c, c, "
                "TIMESTAMPADD(SECOND, 70, c), TIMESTAMPADD(SECOND, 70, c), 'bench', 'system', '' "
                f"FROM (SELECT seq AS n, {wr_created} AS c FROM seq_{low}_to_{high}) AS made",
                [at],
            )
        first_workflow_run = WorkflowRun.objects.order_by("pk").values_list("pk", flat=True).first()
        given = {
            "task": (
                f"IF(MOD(seq, 1000) = 999, {first_task + TASKS - 1}, {first_task} + MOD(seq, {TASKS - 1}))",
                [],
            ),
            "trigger": (f"IF({in_workflow}, 'workflow', IF({scheduled}, 'schedule', 'api'))", []),
            "state": ("st", []),
            "kwargs": ("JSON_OBJECT('n', seq)", []),
            "message_number": ("IF(st IN ('skipped', 'paused'), 0, 1)", []),
            "attempt": (f"IF({ran}, 1, 0)", []),
            "worker": (f"IF({ran}, CONCAT('w', MOD(seq, 2), '@bench'), '')", []),
            "schedule": (f"IF({scheduled}, {first_schedule} + MOD(seq DIV 3, {SCHEDULES}), NULL)", []),
            "scheduled_for": (f"IF({scheduled}, TIMESTAMPADD(MICROSECOND, -300000, made.c), NULL)", []),
            "workflow_run": (f"IF({in_workflow}, {first_workflow_run} + seq DIV 50, NULL)", []),
            "step": (f"IF({in_workflow}, CONCAT('s', MOD(seq, 50)), '')", []),
            "created_at": ("made.c", []),
            "started_at": (f"IF({ran}, TIMESTAMPADD(MICROSECOND, 50000, made.c), NULL)", []),
            "finished_at": (
                "CASE WHEN st IN ('completed', 'failed', 'cancelled') "
                f"THEN TIMESTAMPADD(MICROSECOND, 50000 + {duration_us}, made.c) "
                "WHEN st = 'skipped' THEN made.c END",
                [],
            ),
            # The birth event (the insert trigger's) is at created_at, from this column.
            "state_changed_at": ("made.c", []),
            "state_reason": ("'submitted'", []),
            "state_actor": ("'user'", []),
            "state_actor_name": ("'bench'", []),
            "error": FAILED_ERROR,
        }
        columns, values, params = run_columns(given)
        moves = (
            # (from, to, at, which runs)
            (
                "created",
                "pending",
                "TIMESTAMPADD(MICROSECOND, 10000, created_at)",
                "state NOT IN ('skipped')",
            ),
            ("pending", "running", "started_at", "started_at IS NOT NULL"),
            ("pending", "paused", "TIMESTAMPADD(SECOND, 1, created_at)", "state = 'paused'"),
            ("running", "completed", "finished_at", "state = 'completed'"),
            ("running", "failed", "finished_at", "state = 'failed'"),
            ("running", "cancelled", "finished_at", "state = 'cancelled'"),
            ("created", "skipped", "finished_at", "state = 'skipped'"),
        )
        per_million = []
        last_id, mark = 0, time.perf_counter()
        for low in range(0, runs, CHUNK):
            high = min(runs, low + CHUNK) - 1
            cursor.execute(
                f"INSERT INTO {Run._meta.db_table} ({', '.join(columns)}) SELECT {', '.join(values)} "
                f"FROM (SELECT seq, {state} AS st, {created} AS c FROM seq_{low}_to_{high}) AS made",
                [*params, at],
            )
            cursor.execute(f"SELECT MAX(id) FROM {Run._meta.db_table}")
            top = cursor.fetchone()[0]
            # The moves after the birth, as lifecycle would have recorded them (pending runs
            # already have theirs from the trigger).
            for source, target, when, which in moves:
                cursor.execute(
                    "INSERT INTO tasks_app_runevent (run_id, from_state, to_state, at, reason, actor, "
                    f"actor_name) SELECT id, '{source}', '{target}', {when}, 'bench', 'worker', "
                    f"worker FROM {Run._meta.db_table} WHERE id > %s AND id <= %s AND {which} "
                    "AND state <> 'pending'",
                    [last_id, top],
                )
            last_id = top
            if (high + 1) % 1_000_000 == 0 or high + 1 == runs:
                per_million.append(round(time.perf_counter() - mark, 1))
                mark = time.perf_counter()
                print(
                    f"  {high + 1:>10,} runs inserted, {per_million[-1]} s for the last million", flush=True
                )
        for table in ("tasks_app_run", "tasks_app_runevent", "tasks_app_workflowrun"):
            cursor.execute(f"ANALYZE TABLE {table}")
            cursor.fetchall()
    return {
        "runs": runs,
        "insert_s": round(time.perf_counter() - started, 1),
        "s_per_million": per_million,
        "first_task": first_task,
        "first_schedule": first_schedule,
        "first_workflow_run": first_workflow_run,
    }


def check_events(sample: int = 2000) -> dict[str, Any]:
    """Every run of a sample across the history has its events: the birth (from no state) and
    one per later move (4 for a finished run that ran)."""
    from django.db.models import Count, Max, Min, Q

    from tasks_app.models import Run, RunEvent

    bounds = Run.objects.aggregate(low=Min("id"), high=Max("id"))
    ids = random.Random(7).sample(range(bounds["low"], bounds["high"] + 1), sample)
    states = dict(Run.objects.filter(pk__in=ids).values_list("pk", "state"))
    counts = dict(
        RunEvent.objects.filter(run_id__in=ids)
        .values_list("run_id")
        .annotate(n=Count("id"), born=Count("id", filter=Q(from_state="")))
        .values_list("run_id", "n")
    )
    expected = {
        "completed": 4,
        "failed": 4,
        "cancelled": 4,
        "skipped": 2,
        "paused": 3,
        "running": 3,
        "pending": 2,
    }
    wrong = [pk for pk, state in states.items() if counts.get(pk, 0) != expected[state]]
    born = RunEvent.objects.filter(run_id__in=ids, from_state="").count()
    return {
        "sampled": len(states),
        "births": born,
        "wrong": wrong[:20],
        "ok": not wrong and born == len(states),
    }


# --- 2. the reads -----------------------------------------------------------------------


def token_client() -> Any:
    from django.contrib.auth.models import User
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    User.objects.filter(username="bench-reader").delete()
    user = User.objects.create_superuser("bench-reader", password="pw")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


def timed(client: Any, url: str, requests: int, data: dict[str, Any] | None = None) -> dict[str, Any]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    for _ in range(2):
        response = client.get(url, data)
        assert response.status_code == 200, (url, data, response.status_code)
    times = []
    for _ in range(requests):
        t0 = time.perf_counter()
        response = client.get(url, data)
        times.append((time.perf_counter() - t0) * 1000)
        assert response.status_code == 200, (url, data, response.status_code)
    with CaptureQueriesContext(connection) as captured:
        client.get(url, data)
    slowest = max(captured.captured_queries, key=lambda q: float(q["time"]), default={"time": 0, "sql": ""})
    return figures_of(times, queries=len(captured), slowest_query_ms=round(float(slowest["time"]) * 1000, 1))


def time_api(requests: int, made: dict[str, Any], now: dt.datetime) -> dict[str, Any]:
    from tasks_app.models import Run

    client = token_client()
    url = "/api/v1/runs/"
    old_workflow_run = made["first_workflow_run"] + 10
    new_workflow_run = made["first_workflow_run"] + made["runs"] // 50 - 2
    day = dt.timedelta(days=1)
    cases: dict[str, dict[str, Any]] = {
        "first page": {},
        "task (common)": {"task": "bench-03"},
        "task (rare)": {"task": f"bench-{TASKS - 1:02d}"},
        "state=completed": {"state": "completed"},
        "state=failed": {"state": "failed"},
        "state=paused (rare, spread)": {"state": "paused"},
        "state=running (newest)": {"state": "running"},
        "state=failed&cancelled": {"state": ["failed", "cancelled"]},
        "schedule": {"schedule": made["first_schedule"] + 7},
        "workflow_run (old)": {"workflow_run": old_workflow_run},
        "workflow_run (new)": {"workflow_run": new_workflow_run},
        "created_after 1 h ago": {"created_after": (now - dt.timedelta(hours=1)).isoformat()},
        "created_before 20 d ago": {"created_before": (now - 20 * day).isoformat()},
        "created 15..14 d ago": {
            "created_after": (now - 15 * day).isoformat(),
            "created_before": (now - 14 * day).isoformat(),
        },
        "task + state + created range": {
            "task": "bench-05",
            "state": "failed",
            "created_after": (now - 10 * day).isoformat(),
            "created_before": (now - 9 * day).isoformat(),
        },
    }
    figures: dict[str, Any] = {}
    for name, data in cases.items():
        figures[name] = timed(client, url, requests, data)
        print(f"  GET /runs/ {name}: {figures[name]}", flush=True)
    for name, data in (
        ("first page", {}),
        ("task (rare)", cases["task (rare)"]),
        ("created 15..14 d ago", cases["created 15..14 d ago"]),
    ):
        page = client.get(url, data).data
        for number in range(2, 6):
            if page["next"] is None:
                break
            key = f"{name}: page {number} (cursor)"
            figures[key] = timed(client, page["next"], requests)
            print(f"  GET /runs/ {key}: {figures[key]}", flush=True)
            page = client.get(page["next"]).data
    low = Run.objects.order_by("id").values_list("id", flat=True).first()
    high = Run.objects.order_by("-id").values_list("id", flat=True).first()

    def picked(seed: int) -> list[int]:  # runs across the history (ids have gaps)
        at = random.Random(seed).sample(range(low, high + 1), requests)
        return [Run.objects.filter(pk__gte=pk).order_by("pk").values_list("pk", flat=True)[0] for pk in at]

    picks = picked(3)
    for kind, suffix in (("run", ""), ("run events", "events/")):
        times = []
        for pk in picks:
            client.get(f"{url}{pk}/{suffix}")  # not warmed: each run its own
            t0 = time.perf_counter()
            response = client.get(f"{url}{pk}/{suffix}")
            times.append((time.perf_counter() - t0) * 1000)
            assert response.status_code == 200
        cold = []
        for pk in picked(4):
            t0 = time.perf_counter()
            client.get(f"{url}{pk}/{suffix}")
            cold.append((time.perf_counter() - t0) * 1000)
        figures[kind] = figures_of(times, first_read=figures_of(cold))
        print(f"  GET /runs/{{id}}/{suffix}: {figures[kind]}", flush=True)
    return figures


def time_admin(requests: int, made: dict[str, Any]) -> dict[str, Any]:
    from django.contrib.auth.models import User
    from django.test import Client

    User.objects.filter(username="bench-boss").delete()
    client = Client()
    client.force_login(User.objects.create_superuser("bench-boss", password="pw"))
    url = "/admin/tasks_app/run/"
    cases = {
        "list": {},
        "state=failed": {"state__exact": "failed"},
        "state=paused (rare)": {"state__exact": "paused"},
        "task": {"task__id__exact": made["first_task"] + 3},
        "created past 7 days": {"created_at__gte": "", "created_at__lt": ""},
        "search (task name)": {"q": "bench-05"},
        "search (run id)": {"q": str(made["runs"] // 2)},
        "page 2": {"p": "2"},
    }
    from django.utils import timezone

    today = timezone.localtime().date()
    cases["created past 7 days"] = {
        "created_at__gte": str(today - dt.timedelta(days=7)),
        "created_at__lt": str(today + dt.timedelta(days=1)),
    }
    figures = {}
    for name, data in cases.items():
        figures[name] = timed(client, url, max(10, requests // 5), data)
        print(f"  admin run list {name}: {figures[name]}", flush=True)
    return figures


# --- 3. pruning under submissions --------------------------------------------------------


class Submitter:
    """A child process submitting runs one by one over the API (POST /api/v1/runs/), timing
    each, until told to stop: apart from this process, so the prune shares no GIL with it."""

    def __init__(self) -> None:
        self.child = subprocess.Popen(
            [sys.executable, __file__, "--submitter"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=os.environ,
            text=True,
        )
        assert self.child.stdout.readline().strip() == "ready"

    def stop(self) -> dict[str, Any]:
        self.child.stdin.close()
        times, failed = json.loads(self.child.stdout.read())
        self.child.wait()
        return figures_of(times, submitted=len(times), failed=failed)


def submitter_main() -> None:
    """The child's side: submit until stdin closes, then print the times."""
    import django

    django.setup()
    from django.contrib.auth.models import User
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    user, _ = User.objects.get_or_create(username="bench-submitter", defaults={"is_superuser": True})
    token, _ = Token.objects.get_or_create(user=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    times, failed = [], 0
    print("ready", flush=True)
    while not stop.is_set():
        t0 = time.perf_counter()
        response = client.post("/api/v1/runs/", {"task": "bench-01"}, format="json")
        times.append((time.perf_counter() - t0) * 1000)
        failed += response.status_code != 201
        time.sleep(0.005)  # a steady client, not a flood
    print(json.dumps([times, failed]), flush=True)


def submissions_for(seconds: float) -> dict[str, Any]:
    submitter = Submitter()
    time.sleep(seconds)
    return submitter.stop()


def prune_under_submissions(prune: int, idle_s: float) -> dict[str, Any]:
    from django.conf import settings
    from django.db.models import Count

    from tasks_app import retention
    from tasks_app.choices import TERMINAL_STATES
    from tasks_app.models import Run

    # The cutoff that leaves `prune` finished runs (outside workflows) before it: runs finish
    # in id order, so it is the finish of the prune-th such run.
    prunable = Run.objects.filter(state__in=TERMINAL_STATES, workflow_run__isnull=True).order_by("id")
    cutoff = prunable.values_list("finished_at", flat=True)[prune - 1 : prune][0]
    cutoff += dt.timedelta(microseconds=1)
    now = cutoff + dt.timedelta(days=settings.RUN_RETENTION_DAYS)
    before = Run.objects.count() if prune < 2_000_000 else None
    idle = submissions_for(idle_s)
    print(f"  submit idle: {idle}", flush=True)
    submitter = Submitter()
    t0 = time.perf_counter()
    deleted = retention.prune(now=now)
    prune_s = time.perf_counter() - t0
    during = submitter.stop()
    print(f"  prune: {deleted} runs in {prune_s:.1f} s; submit during: {during}", flush=True)
    left = Run.objects.filter(state__in=TERMINAL_STATES, finished_at__lt=cutoff, workflow_run__isnull=True)
    by_state = dict(
        Run.objects.filter(finished_at__lt=cutoff).values_list("state").annotate(n=Count("id")).order_by()
    )
    return {
        "runs_before": before,
        "deleted": deleted,
        "prune_s": round(prune_s, 1),
        "runs_per_s": round(deleted / prune_s) if prune_s else None,
        "left_before_cutoff": left.count(),
        "kept_before_cutoff_by_state": by_state,  # workflow steps (their workflow runs go whole)
        "submit_idle": idle,
        "submit_during": during,
        "p99_ratio": round(during["p99_ms"] / idle["p99_ms"], 2),
    }


# --- 4. the plans -----------------------------------------------------------------------


def explain_lists(made: dict[str, Any], now: dt.datetime) -> list[dict[str, Any]]:
    """EXPLAIN of the SQL each list request makes (captured from the request itself)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    api = token_client()
    from django.contrib.auth.models import User
    from django.test import Client

    admin = Client()
    admin.force_login(User.objects.get(username="bench-boss"))
    day = dt.timedelta(days=1)
    requests = {
        "api first page": (api, "/api/v1/runs/", {}),
        "api task": (api, "/api/v1/runs/", {"task": "bench-03"}),
        "api state": (api, "/api/v1/runs/", {"state": "paused"}),
        "api schedule": (api, "/api/v1/runs/", {"schedule": made["first_schedule"] + 7}),
        "api workflow_run": (api, "/api/v1/runs/", {"workflow_run": made["first_workflow_run"] + 10}),
        "api created range": (
            api,
            "/api/v1/runs/",
            {"created_after": (now - 15 * day).isoformat(), "created_before": (now - 14 * day).isoformat()},
        ),
        "admin list": (admin, "/admin/tasks_app/run/", {}),
        "admin state": (admin, "/admin/tasks_app/run/", {"state__exact": "failed"}),
    }
    plans = []
    for name, (client, url, data) in requests.items():
        with CaptureQueriesContext(connection) as captured:
            assert client.get(url, data).status_code == 200
        for query in captured.captured_queries:
            sql = query["sql"]
            if "tasks_app_run" not in sql or not sql.startswith("SELECT"):
                continue
            for row in explain(sql):
                if row["table"] in ("tasks_app_run", "tasks_app_runevent"):
                    plans.append({
                        "request": name,
                        "query_ms": round(float(query["time"]) * 1000, 1),
                        "sql": sql[:160],
                        "key": row["key"],
                        "rows": row["rows"],
                        "extra": row["Extra"],
                    })  # fmt: skip
    for plan in plans:
        print(
            f"  EXPLAIN {plan['request']}: key={plan['key']} rows={plan['rows']} {plan['extra']}", flush=True
        )
    return plans


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=10_000_000)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--prune", type=int, default=1_000_000, help="finished runs to prune (0: skip)")
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of submissions timed idle")
    parser.add_argument("--reuse", action="store_true", help="time the history already loaded (no insert)")
    parser.add_argument("--keep", action="store_true", help="leave the history in place afterwards")
    parser.add_argument("--out", default=str(RESULTS / "history.json"))
    parser.add_argument("--submitter", action="store_true", help=argparse.SUPPRESS)  # the child
    args = parser.parse_args()
    os.environ.update(platform_env(LOG_LEVEL="ERROR", SUBMIT_THROTTLE_RATE="1000000/min"))
    if args.submitter:
        submitter_main()
        return
    ensure_database()
    import django

    django.setup()
    from django.core.management import call_command
    from django.utils import timezone

    from tasks_app.models import Run, Schedule, Task, WorkflowRun

    call_command("migrate", verbosity=0)
    started = time.perf_counter()
    if args.reuse:
        newest = Run.objects.filter(trigger="api", state="pending").order_by("id").first()
        now = newest.created_at + dt.timedelta(minutes=2) if newest else timezone.now()
        made = {
            "runs": Run.objects.filter(kwargs__has_key="n").count(),
            "reused": True,
            "first_task": Task.objects.order_by("pk").first().pk,
            "first_schedule": Schedule.objects.order_by("pk").first().pk,
            "first_workflow_run": WorkflowRun.objects.order_by("pk").first().pk,
        }
    else:
        reset()
        now = timezone.now()
        made = populate(args.runs, now)
        print(f"  inserted {made['runs']:,} runs in {made['insert_s']} s", flush=True)
    events = check_events()
    print(f"  events: {events}", flush=True)
    figures: dict[str, Any] = {"populate": made, "events": events}
    # Loaded as gunicorn loads it, which freezes what loading left out of the collector's way:
    # without that, a full collection of this process (Django's test client leaves 3 objects
    # behind a request) paused the request it fell in by 90-120 ms.
    import scheduler_site.wsgi  # noqa: F401

    gc.callbacks.append(full_collections.observe)
    figures["api"] = time_api(args.requests, made, now)
    figures["admin"] = time_admin(args.requests, made)
    gc.callbacks.remove(full_collections.observe)
    figures["full_collections_ms"] = full_collections.pauses
    figures["explain"] = explain_lists(made, now)
    if args.prune:
        figures["prune"] = prune_under_submissions(min(args.prune, args.runs // 2), args.idle)
    if not args.keep:
        reset()
    figures["elapsed_s"] = round(time.perf_counter() - started, 1)
    lists = {k: v for k, v in figures["api"].items() if k not in ("run", "run events")}
    shown = {
        "runs": made["runs"],
        "load_s_per_million": made.get("s_per_million"),
        "api_p99_ms": {k: v["p99_ms"] for k, v in figures["api"].items()},
        "admin_p99_ms": {k: v["p99_ms"] for k, v in figures["admin"].items()},
        "full_collections_ms": figures["full_collections_ms"],
        "prune": {k: figures["prune"][k] for k in ("deleted", "prune_s", "p99_ratio")}
        if args.prune
        else None,
        "targets_met": {
            "lists_p99_under_50ms": all(v["p99_ms"] < 50 for v in lists.values()),
            "run_and_events_p99_under_20ms": all(
                figures["api"][k]["p99_ms"] < 20 for k in ("run", "run events")
            ),
            "admin_p99_under_300ms": all(v["p99_ms"] < 300 for v in figures["admin"].values()),
            "submit_p99_during_prune_under_2x": figures["prune"]["p99_ratio"] < 2 if args.prune else None,
        },
        "events_ok": events["ok"],
    }
    write_results(args.out, figures, shown)
    if not events["ok"]:
        raise SystemExit(f"runs without their events: {events}")


if __name__ == "__main__":
    main()
