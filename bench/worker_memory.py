"""Worker memory and database connections over a long stream of no-op runs, beside stock Celery.

A real worker (prefork, concurrency 2) executes --runs no-op runs, submitted in chunks of 1,000
(as POST /runs/bulk/ does) with at most --backlog waiting. Every --sample-every completed runs the
resident memory (VmRSS, and its anonymous part RssAnon, from /proc) of the worker's main process
and of each pool process is read; the figures after --warmup runs and at the end give the growth.
Scenarios, one after the other in the same run on the same Redis and MariaDB:
  plain    stock Celery, no result backend: the memory baseline, at the same --runs
  results  stock Celery with django-celery-results: the connections baseline (its Django fixup
           closes the connection around every task), at --results-runs only (it is slow)
  platform this project

Connections: every worker process counts the database connections Django opens in it (the
`connection_created` signal, recorded in Redis by pid and MariaDB connection id: this module,
imported into the worker with `celery worker -I`), so the count is the worker's own whatever
else uses the server; MariaDB's global `Connections` counter from before the worker started
to after it finished is given beside it (everything on the server: the submitter too, and
anyone else's tests). Figures go to bench/results/worker_memory.json.

    .venv/bin/python bench/worker_memory.py [--runs 100000] [--results-runs 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import DB_URL, REDIS_URL, RESULTS, ROOT, stop_worker, wait_until, write_results
from bench.common import probe as bench_probe
from bench.e2e import CONCURRENCY, LOGLEVEL, env_for, prepare

SCENARIOS = ["plain", "results", "platform"]
CHUNK = 1000  # runs per bulk submission, the API's limit
PROBE = "bench.worker_memory"  # this module, imported into the workers to count connections
CONNECTIONS_KEY = "bench:memory:connections"  # a Redis set of "pid:connection id"
COUNT_CONNECTIONS = "BENCH_COUNT_CONNECTIONS"


# --- the probe (imported into each worker with -I) --------------------------------------


def _record_connection(sender: Any, connection: Any, **kwargs: Any) -> None:
    import redis

    thread_id = connection.connection.thread_id()  # MySQLdb's name for CONNECTION_ID()
    redis.Redis.from_url(REDIS_URL).sadd(CONNECTIONS_KEY, f"{os.getpid()}:{thread_id}")


if os.environ.get(COUNT_CONNECTIONS) and __name__ == PROBE:
    from django.db.backends.signals import connection_created

    connection_created.connect(_record_connection)


# --- reading a process's memory ---------------------------------------------------------


def memory_of(pid: int) -> dict[str, int]:
    """VmRSS and RssAnon of `pid`, in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon"):
            fields[name] = int(value.split()[0])
    return {"rss_kib": fields["VmRSS"], "anon_kib": fields["RssAnon"]}


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # gone meanwhile
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:  # the field after the state
                found.append(int(entry.name))
    return sorted(found)


def sample(worker_pid: int, completed: int, start: float) -> dict[str, Any]:
    return {
        "completed": completed,
        "elapsed_s": round(time.perf_counter() - start, 1),
        "main": {"pid": worker_pid, **memory_of(worker_pid)},
        "pool": [{"pid": child, **memory_of(child)} for child in children_of(worker_pid)],
    }


def growth(warm: dict[str, Any], end: dict[str, Any]) -> dict[str, Any]:
    """Per process (the main one, then each pool process by pid): memory after warm-up, at the
    end, and the growth in %."""

    def one(before: dict[str, int], after: dict[str, int]) -> dict[str, Any]:
        return {
            "pid": before["pid"],
            "rss_after_warmup_mib": round(before["rss_kib"] / 1024, 1),
            "rss_end_mib": round(after["rss_kib"] / 1024, 1),
            "rss_growth_pct": round(100 * (after["rss_kib"] - before["rss_kib"]) / before["rss_kib"], 1),
            "anon_growth_pct": round(100 * (after["anon_kib"] - before["anon_kib"]) / before["anon_kib"], 1),
        }

    pool_end = {p["pid"]: p for p in end["pool"]}
    return {
        "main": one(warm["main"], end["main"]),
        "pool": [one(p, pool_end[p["pid"]]) for p in warm["pool"] if p["pid"] in pool_end],
        "pool_replaced": sorted({p["pid"] for p in warm["pool"]} ^ set(pool_end)),
    }


# --- orchestration (the parent process) ------------------------------------------------


def global_connections(cursor: Any) -> int:
    cursor.execute("SHOW GLOBAL STATUS LIKE 'Connections'")
    return int(cursor.fetchone()[1])


def start_worker(scenario: str, log: Path) -> subprocess.Popen[bytes]:
    app = "scheduler_site" if scenario == "platform" else "bench.baseline_app"
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", app, "worker", "-c", CONCURRENCY, "-l", LOGLEVEL,
             "-I", PROBE, "--without-gossip", "--without-mingle", "--without-heartbeat",
             "-n", f"bench-memory-{scenario}@%h"],
            cwd=ROOT,
            env={**env_for(scenario), COUNT_CONNECTIONS: "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def run_scenario(scenario: str, args: argparse.Namespace, cursor: Any) -> dict[str, Any]:
    import redis

    broker = redis.Redis.from_url(REDIS_URL)
    broker.flushdb()
    runs = args.results_runs if scenario == "results" else args.runs
    before = global_connections(cursor)
    worker = start_worker(scenario, RESULTS / f"worker_memory.{scenario}.log")
    try:
        probe = bench_probe(scenario == "platform")
        wait_until(lambda: probe.control.ping(timeout=0.5), 60, f"the {scenario} worker")
        command = [sys.executable, __file__, "--drive", scenario, "--worker-pid", str(worker.pid),
                   "--runs", str(runs), "--warmup", str(args.warmup * runs // args.runs),
                   "--sample-every", str(max(1, args.sample_every * runs // args.runs)),
                   "--backlog", str(args.backlog)]  # fmt: skip
        done = subprocess.run(
            command, cwd=ROOT, env=env_for(scenario), check=True, capture_output=True, text=True
        )
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        after = global_connections(cursor)
    finally:
        stop_worker(worker)
    opened = sorted(member.decode() for member in broker.smembers(CONNECTIONS_KEY))
    by_pid: dict[str, int] = {}
    for member in opened:
        pid = member.split(":")[0]
        by_pid[pid] = by_pid.get(pid, 0) + 1
    figures["connections"] = {
        "worker_opened": len(opened),
        "worker_opened_by_pid": by_pid,
        "per_1000_runs": round(1000 * len(opened) / runs, 2),
        "server_total_during_run": after - before,  # everyone's, the submitter's too
    }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument(
        "--results-runs", type=int, default=2000, help="runs of the django-celery-results side"
    )
    parser.add_argument(
        "--warmup", type=int, help="runs before the first figure (default: a tenth of --runs)"
    )
    parser.add_argument(
        "--sample-every", type=int, help="completed runs between samples (default: --runs / 40)"
    )
    parser.add_argument("--backlog", type=int, default=5000, help="most runs submitted and not yet completed")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--out", default=str(RESULTS / "worker_memory.json"))
    parser.add_argument("--drive", choices=SCENARIOS, help=argparse.SUPPRESS)
    parser.add_argument("--worker-pid", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.warmup = args.runs // 10 if args.warmup is None else args.warmup
    args.sample_every = args.sample_every or max(1, args.runs // 40)
    if args.drive:
        print(json.dumps(drive(args.drive, args)))
        return

    import dj_database_url
    import MySQLdb

    prepare()
    RESULTS.mkdir(parents=True, exist_ok=True)
    db = dj_database_url.parse(DB_URL)
    server = MySQLdb.connect(
        host=db["HOST"], port=int(db["PORT"] or 3306), user=db["USER"], passwd=db["PASSWORD"]
    )
    scenarios: dict[str, Any] = {}
    try:
        for scenario in args.scenarios.split(","):
            scenarios[scenario] = figures = run_scenario(scenario, args, server.cursor())
            print(
                f"{scenario:8s} {json.dumps({k: v for k, v in figures.items() if k != 'samples'})}",
                flush=True,
            )
    finally:
        server.close()
    shown = {
        name: {key: figures[key] for key in ("runs", "runs_per_s", "memory", "connections") if key in figures}
        for name, figures in scenarios.items()
    }
    summary = {
        "runs": args.runs,
        "warmup": args.warmup,
        "worker": f"prefork, concurrency {CONCURRENCY}, log level {LOGLEVEL}; same Redis broker and MariaDB",
        "scenarios": scenarios,
    }
    write_results(args.out, summary, shown)


# --- the drivers (a child process per scenario) ------------------------------------------


def drive(scenario: str, args: argparse.Namespace) -> dict[str, Any]:
    """Submit `args.runs` runs, at most `args.backlog` ahead of the worker, sampling its memory."""
    submit, completed = SIDES[scenario]()
    runs, submitted, samples = args.runs, 0, []
    next_sample = args.warmup if args.warmup else args.sample_every
    start = time.perf_counter()
    deadline = time.monotonic() + 3600
    while True:
        done = completed()
        if done >= next_sample or done >= runs:
            samples.append(sample(args.worker_pid, done, start))
            while next_sample <= done:
                next_sample += args.sample_every
        if done >= runs:
            break
        if submitted < runs and submitted - done < args.backlog:
            count = min(CHUNK, runs - submitted)
            submit(submitted, count)
            submitted += count
            continue
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out: {done} of {runs} runs done")
        time.sleep(0.1)
    elapsed = time.perf_counter() - start
    warm = next(s for s in samples if s["completed"] >= args.warmup)
    return {
        "runs": runs,
        "total_s": round(elapsed, 1),
        "runs_per_s": round(runs / elapsed, 1),
        "memory": growth(warm, samples[-1]),
        "samples": samples,
    }


def plain_side() -> tuple[Any, Any]:
    import redis

    from bench.baseline_app import COUNTER, app

    counter = redis.Redis.from_url(REDIS_URL)
    counter.delete(COUNTER)

    def submit(first: int, count: int) -> None:
        for i in range(first, first + count):
            app.send_task("bench.noop", kwargs={"i": i})

    return submit, lambda: int(counter.get(COUNTER) or 0)


def results_side() -> tuple[Any, Any]:
    import django

    django.setup()  # bench.baseline_settings, from the environment
    from django_celery_results.models import TaskResult

    from bench.baseline_app import app

    TaskResult.objects.all().delete()

    def submit(first: int, count: int) -> None:
        for i in range(first, first + count):
            app.send_task("bench.noop", kwargs={"i": i})

    return submit, TaskResult.objects.filter(status="SUCCESS").count


def platform_side() -> tuple[Any, Any]:
    import django

    django.setup()
    from bench.common import truncate
    from tasks_app import submission
    from tasks_app.models import Run, Task
    from tasks_app.submission import RunRequest

    truncate(("tasks_app_runlog", "tasks_app_runevent", "tasks_app_run"))
    task, _ = Task.objects.get_or_create(name="bench-noop", defaults={"handler": "builtin.noop"})

    def submit(first: int, count: int) -> None:
        submission.submit_many([RunRequest(task=task, kwargs={"i": i}) for i in range(first, first + count)])

    return submit, Run.objects.filter(state="completed").count


SIDES = {"plain": plain_side, "results": results_side, "platform": platform_side}

if __name__ == "__main__":
    main()
