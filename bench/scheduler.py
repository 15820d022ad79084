"""The platform's scheduler beside stock django-celery-beat, at 1,000 / 10,000 / 50,000 schedules.

For each size, in the same run and on the same MariaDB and Redis, each scheduler runs in
a process of its own (so its memory is its own) and reports:
  start_s          constructing the scheduler and its first tick (stock beat loads every entry)
  tick_cpu_ms      CPU of one tick when nothing is due
  fires_per_s      with every schedule due at once, fires dispatched per second
                   (stock: counted over a bounded window, FIRE_WINDOW seconds)
  rss_mb           resident memory after the fires
  burst            1,000 schedules due in the same second: lateness of their fires
                   (platform: run.created_at - scheduled_for, and when its tick had
                   published them; stock: when each message reached the broker, within
                   the window; its queue is sampled after every tick)
Every schedule is an every-minute cron. Fired runs are not executed (no worker): the
broker database is emptied between steps. Figures go to bench/results/scheduler.json.

    .venv/bin/python bench/scheduler.py [--sizes 1000,10000,50000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import BROKER_URL, RESULTS, ROOT, ensure_database, platform_env, write_results

FIRE_WINDOW = float(os.environ.get("BENCH_FIRE_WINDOW", "15"))
BURST = 1000
ENV = platform_env(LOG_LEVEL="WARNING")


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))], 3)


def queued(client: Any) -> int:
    return sum(client.llen(key) for key in client.keys("*default*") if client.type(key) == b"list")


def _reset(size: int) -> Any:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SET FOREIGN_KEY_CHECKS = 0")
        for table in (
            "tasks_app_runlog",
            "tasks_app_runevent",
            "tasks_app_run",
            "tasks_app_schedule",
            "django_celery_beat_periodictask",
            "django_celery_beat_crontabschedule",
        ):
            cursor.execute(f"TRUNCATE TABLE {table}")
        cursor.execute("SET FOREIGN_KEY_CHECKS = 1")
    from tasks_app.models import Task

    return Task.objects.get_or_create(name="bench-tick", defaults={"handler": "builtin.noop"})[0]


def platform(size: int) -> dict[str, Any]:
    import django

    django.setup()
    import redis
    from django.utils import timezone

    from scheduler_site.celery import app
    from tasks_app.models import Run, Schedule
    from tasks_app.scheduling import PlatformScheduler

    broker = redis.Redis.from_url(BROKER_URL)
    task = _reset(size)
    later = timezone.now() + dt.timedelta(days=1)
    Schedule.objects.bulk_create(
        [Schedule(task=task, cron="* * * * *", next_fire_at=later) for _ in range(size)], batch_size=5000
    )

    started = time.perf_counter()
    scheduler = PlatformScheduler(app=app)
    scheduler.tick()
    start_s = time.perf_counter() - started

    cpu = time.process_time()
    for _ in range(20):
        scheduler.platform_tick()
    tick_cpu_ms = (time.process_time() - cpu) / 20 * 1000

    # Every schedule due at once.
    Schedule.objects.update(next_fire_at=timezone.now().replace(second=0, microsecond=0))
    broker.flushdb()
    started = time.perf_counter()
    while scheduler.platform_tick():
        pass
    scheduler.platform_tick()
    elapsed = time.perf_counter() - started
    fired = Run.objects.count()
    memory = rss_mb()

    # A burst: BURST schedules due in the same second, a tick loop as beat runs it.
    _reset(size)
    Schedule.objects.bulk_create(
        [Schedule(task=task, cron="* * * * * *", next_fire_at=later) for _ in range(BURST)]
        + [Schedule(task=task, cron="* * * * *", next_fire_at=later) for _ in range(size - BURST)],
        batch_size=5000,
    )
    broker.flushdb()
    instant = timezone.now().replace(microsecond=0) + dt.timedelta(seconds=2)
    burst_ids = Schedule.objects.filter(cron="* * * * * *").values_list("pk", flat=True)
    Schedule.objects.filter(pk__in=list(burst_ids)).update(next_fire_at=instant)
    deadline = time.monotonic() + 30
    dispatched: list[float] = []  # per run: when the tick that fired it had published it
    while len(dispatched) < BURST and time.monotonic() < deadline:
        wait = scheduler.tick()
        count = Run.objects.filter(scheduled_for=instant).count()
        dispatched += [(timezone.now() - instant).total_seconds()] * (count - len(dispatched))
        time.sleep(min(wait, 0.1))
    lateness = [
        (created - scheduled).total_seconds()
        for created, scheduled in Run.objects.filter(scheduled_for=instant).values_list(
            "created_at", "scheduled_for"
        )
    ]
    broker.flushdb()
    return {
        "start_s": round(start_s, 3),
        "tick_cpu_ms": round(tick_cpu_ms, 3),
        "fires_per_s": round(fired / elapsed, 1),
        "fired": fired,
        "rss_mb": memory,
        "burst": {
            "fired": len(lateness),
            "p50_s": percentile(lateness, 0.5),
            "p99_s": percentile(lateness, 0.99),
            "max_s": round(max(lateness), 3),
            "dispatched_p99_s": percentile(dispatched, 0.99),
        },
    }


def stock(size: int) -> dict[str, Any]:
    import django

    django.setup()
    import redis
    from django.utils import timezone
    from django_celery_beat.models import CrontabSchedule, PeriodicTask
    from django_celery_beat.schedulers import DatabaseScheduler

    from scheduler_site.celery import app

    broker = redis.Redis.from_url(BROKER_URL)
    _reset(size)
    every_minute = CrontabSchedule.objects.create(minute="*", hour="*", timezone="UTC")
    # Last run two minutes ago: every entry is due as soon as the scheduler has loaded.
    due = timezone.now() - dt.timedelta(minutes=2)
    PeriodicTask.objects.bulk_create(
        [
            PeriodicTask(
                name=f"bench {i}", task="builtin.noop", crontab=every_minute, last_run_at=due, queue="default"
            )
            for i in range(size)
        ],
        batch_size=5000,
    )
    broker.flushdb()

    started = time.perf_counter()
    scheduler = DatabaseScheduler(app=app)
    loaded = time.perf_counter()
    start_s = loaded - started

    # Fires in a bounded window; each message's arrival sampled for the burst figure.
    sent_at: list[float] = []
    while time.perf_counter() - loaded < FIRE_WINDOW:
        scheduler.tick()
        count = queued(broker)
        sent_at += [time.perf_counter() - loaded] * (count - len(sent_at))
    # All fired before the window closed: the rate up to the last one.
    fires_per_s = len(sent_at) / (sent_at[-1] if len(sent_at) == size else FIRE_WINDOW)
    memory = rss_mb()

    # An idle tick: after the window, nothing new is due for the fired entries.
    cpu = time.process_time()
    for _ in range(5):
        scheduler.tick()
    tick_cpu_ms = (time.process_time() - cpu) / 5 * 1000
    burst = sent_at[:BURST]
    broker.flushdb()
    return {
        "start_s": round(start_s, 3),
        "tick_cpu_ms": round(tick_cpu_ms, 3),
        "fires_per_s": round(fires_per_s, 1),
        "fired": len(sent_at),
        "rss_mb": memory,
        "burst": {
            "fired_within_window": len(burst),
            "p50_s": percentile(burst, 0.5) if burst else None,
            "p99_s": percentile(burst, 0.99) if len(burst) == BURST else f">{FIRE_WINDOW}",
        },
        "note": "stock beat sends at most one due entry per tick; counted for FIRE_WINDOW seconds",
    }


CHILDREN = {"platform": platform, "stock": stock}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1000,10000,50000")
    parser.add_argument("--out", default=str(RESULTS / "scheduler.json"))
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(CHILDREN[args.child](args.size)))
        return

    ensure_database()
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=ENV, check=True)
    results: dict[str, dict[str, Any]] = {}
    for size in [int(s) for s in args.sizes.split(",")]:
        for child in ("platform", "stock"):
            done = subprocess.run(
                [sys.executable, __file__, "--child", child, "--size", str(size)],
                cwd=ROOT,
                env=ENV,
                check=True,
                capture_output=True,
                text=True,
            )
            figures = json.loads(done.stdout.strip().splitlines()[-1])
            results.setdefault(str(size), {})[child] = figures
            print(f"{size:6d} {child:8s} {figures}", flush=True)
        pair = results[str(size)]
        pair["tick_cpu_ratio_stock_over_platform"] = round(
            pair["stock"]["tick_cpu_ms"] / max(pair["platform"]["tick_cpu_ms"], 1e-6), 1
        )
        pair["fires_ratio_platform_over_stock"] = round(
            pair["platform"]["fires_per_s"] / max(pair["stock"]["fires_per_s"], 1e-6), 1
        )
    ratios = {size: {k: v for k, v in pair.items() if "ratio" in k} for size, pair in results.items()}
    write_results(args.out, results, ratios)


if __name__ == "__main__":
    main()
