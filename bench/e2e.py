"""End to end: submit N no-op runs, time submit-to-all-completed, beside stock Celery.

Three scenarios in the same run, each with a prefork worker of 2 on the same broker (Redis, or
RabbitMQ with BENCH_BROKER_URL=amqp://guest:guest@127.0.0.1:5672//; Redis keeps the platform's
locks and the plain side's counter either way):
  plain    stock Celery, no result backend (each task bumps a Redis counter to be seen done)
  results  stock Celery storing results with django-celery-results in the same MariaDB
  platform this project: runs submitted in bulk (as POST /runs/bulk/ does), each with its
           state history, attempts, worker, timings and result recorded
Rounds alternate the scenarios; the median round counts. Figures go to bench/results/e2e.json.

    .venv/bin/python bench/e2e.py [--runs 5000] [--rounds 2]

Needs MariaDB and Redis as for the tests (BENCH_DATABASE_URL, BENCH_REDIS_URL, BENCH_BROKER_URL
override).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import (
    BROKER_URL,
    DB_URL,
    REDIS_URL,
    RESULTS,
    ROOT,
    cpu_seconds,
    empty_broker,
    ensure_database,
    stop_worker,
    wait_until,
    write_results,
)
from bench.common import probe as bench_probe

SCENARIOS = ["plain", "results", "platform"]
CHUNK = 1000  # runs per bulk submission, the API's limit
LOGLEVEL = os.environ.get("BENCH_WORKER_LOGLEVEL", "info")
CONCURRENCY = os.environ.get("BENCH_WORKER_CONCURRENCY", "2")


def env_for(scenario: str) -> dict[str, str]:
    env = {
        **os.environ,
        "BENCH_DATABASE_URL": DB_URL,
        "BENCH_BROKER_URL": BROKER_URL,
        "BENCH_REDIS_URL": REDIS_URL,
        "PYTHONPATH": str(ROOT),
    }
    if scenario == "platform":
        env.update(
            DATABASE_URL=DB_URL,
            REDIS_URL=REDIS_URL,
            BROKER_URL=BROKER_URL,
            DJANGO_SETTINGS_MODULE="scheduler_site.settings",
        )
    else:
        env["BENCH_MODE"] = scenario
        env.pop("DJANGO_SETTINGS_MODULE", None)
        if scenario == "results":
            env["DJANGO_SETTINGS_MODULE"] = "bench.baseline_settings"
    return env


# --- orchestration (the parent process) ------------------------------------------------


def prepare() -> None:
    ensure_database()
    python = sys.executable
    subprocess.run([python, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env_for("platform"), check=True)
    subprocess.run(
        [python, "-m", "django", "migrate", "-v", "0", "django_celery_results"],
        cwd=ROOT,
        env=env_for("results"),
        check=True,
    )


def start_worker(scenario: str) -> subprocess.Popen[bytes]:
    app = "scheduler_site" if scenario == "platform" else "bench.baseline_app"
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", app, "worker", "-c", CONCURRENCY, "-l", LOGLEVEL,
         "--without-gossip", "--without-mingle", "--without-heartbeat", "-n", f"bench-{scenario}@%h"],
        cwd=ROOT,
        env=env_for(scenario),
        start_new_session=True,
    )  # fmt: skip


def run_scenario(scenario: str, runs: int) -> dict[str, Any]:
    empty_broker()
    worker = start_worker(scenario)
    try:
        probe = bench_probe(scenario == "platform")
        wait_until(lambda: probe.control.ping(timeout=0.5), 60, f"the {scenario} worker")
        before = cpu_seconds(worker.pid)
        done = subprocess.run(
            [sys.executable, __file__, "--submit", scenario, "--runs", str(runs)],
            cwd=ROOT,
            env=env_for(scenario),
            check=True,
            capture_output=True,
            text=True,
        )
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        after = cpu_seconds(worker.pid)
        # CPU per run is steadier than the rate on a machine that is busy with something else.
        figures["worker_cpu_ms_per_run"] = {
            part: round(1000 * (after[part] - before[part]) / runs, 3) for part in after
        }
        return figures
    finally:
        stop_worker(worker)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS / "e2e.json"))
    parser.add_argument("--submit", choices=SCENARIOS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.submit:
        print(json.dumps(SUBMITTERS[args.submit](args.runs)))
        return

    prepare()
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in SCENARIOS}
    for number in range(args.rounds):
        for scenario in SCENARIOS:
            figures = run_scenario(scenario, args.runs)
            rounds[scenario].append(figures)
            print(
                f"round {number + 1} {scenario:8s} {figures['runs_per_s']:8.1f} runs/s  {figures}", flush=True
            )

    median = {name: statistics.median(r["runs_per_s"] for r in rounds[name]) for name in SCENARIOS}
    summary = {
        "runs": args.runs,
        "rounds": rounds,
        "median_runs_per_s": median,
        "ratio_vs_plain_celery": median["platform"] / median["plain"],
        "ratio_vs_celery_with_django_celery_results": median["platform"] / median["results"],
        "median_worker_cpu_ms_per_run": {
            name: {
                part: statistics.median(r["worker_cpu_ms_per_run"][part] for r in rounds[name])
                for part in ("main", "pool")
            }
            for name in SCENARIOS
        },
        "broker": BROKER_URL.partition("://")[0],
        "worker": "prefork, concurrency 2; the same broker and MariaDB on every side",
    }
    write_results(args.out, summary, {k: v for k, v in summary.items() if k != "rounds"})


# --- submitters (a child process per scenario) ------------------------------------------


def submit_plain(runs: int) -> dict[str, Any]:
    import redis

    from bench.baseline_app import COUNTER, app

    counter = redis.Redis.from_url(REDIS_URL)
    counter.delete(COUNTER)
    start = time.perf_counter()
    for i in range(runs):
        app.send_task("bench.noop", kwargs={"i": i})
    submitted = time.perf_counter()
    wait_until(lambda: int(counter.get(COUNTER) or 0) >= runs, 600, "plain Celery to finish")
    return figures_of(runs, start, submitted, time.perf_counter())


def submit_results(runs: int) -> dict[str, Any]:
    import django

    django.setup()  # bench.baseline_settings, from the environment
    from django_celery_results.models import TaskResult

    from bench.baseline_app import app

    TaskResult.objects.all().delete()
    start = time.perf_counter()
    for i in range(runs):
        app.send_task("bench.noop", kwargs={"i": i})
    submitted = time.perf_counter()
    done = TaskResult.objects.filter(status="SUCCESS")
    wait_until(lambda: done.count() >= runs, 600, "Celery with django-celery-results to finish")
    return figures_of(runs, start, submitted, time.perf_counter())


def submit_platform(runs: int) -> dict[str, Any]:
    import django

    django.setup()
    from django.db import connection

    from tasks_app import submission
    from tasks_app.models import Run, RunEvent, Task
    from tasks_app.submission import RunRequest

    with connection.cursor() as cursor:
        cursor.execute("SET FOREIGN_KEY_CHECKS = 0")
        for model in ("tasks_app_runlog", "tasks_app_runevent", "tasks_app_run"):
            cursor.execute(f"TRUNCATE TABLE {model}")
        cursor.execute("SET FOREIGN_KEY_CHECKS = 1")
    task, _ = Task.objects.get_or_create(name="bench-noop", defaults={"handler": "builtin.noop"})
    start = time.perf_counter()
    for first in range(0, runs, CHUNK):
        submission.submit_many(
            [RunRequest(task=task, kwargs={"i": i}) for i in range(first, min(runs, first + CHUNK))]
        )
    submitted = time.perf_counter()
    completed = Run.objects.filter(state="completed")
    wait_until(lambda: completed.count() >= runs, 600, "the platform to finish")
    figures = figures_of(runs, start, submitted, time.perf_counter())
    figures["not_completed"] = Run.objects.exclude(state="completed").count()
    figures["events_per_run"] = RunEvent.objects.count() / runs
    return figures


def figures_of(runs: int, start: float, submitted: float, finished: float) -> dict[str, Any]:
    return {
        "submit_s": round(submitted - start, 3),
        "total_s": round(finished - start, 3),
        "runs_per_s": round(runs / (finished - start), 1),
    }


SUBMITTERS = {"plain": submit_plain, "results": submit_results, "platform": submit_platform}

if __name__ == "__main__":
    main()
