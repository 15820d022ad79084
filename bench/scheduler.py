"""The platform's scheduler beside stock django-celery-beat, at 1,000 / 10,000 / 50,000 schedules,
and the platform's alone at 1,000,000 (opt-in).

For each size, in the same run and on the same MariaDB and Redis, each scheduler runs in
a process of its own (so its memory is its own) and reports:
  start_s          constructing the scheduler and its first tick (stock beat loads every entry)
  tick_cpu_ms      CPU of one tick when nothing is due
  fires_per_s      with every schedule due at once, fires dispatched per second
                   (stock: counted over a bounded window, FIRE_WINDOW seconds)
  rss_mb           resident memory after the fires
  burst            BURST (10,000; all of them at 1,000) schedules due in the same second:
                   lateness of their dispatch, each message's arrival in the broker's queue
                   (sampled after every tick) minus the instant, p50/p99/max; the platform
                   also reports run.created_at - scheduled_for (created_p50_s/p99_s), and stock
                   counts within the FIRE_WINDOW
Every schedule is an every-minute cron. Fired runs are not executed (no worker): the
broker database is emptied between steps. Figures go to bench/results/scheduler.json.

A size above LARGE (1,000,000, say) is the platform's alone, and only its start_s,
tick_cpu_ms and rss_mb: its rows (a Schedule and its django-celery-beat mirror each) are
written by INSERT ... SELECT from MariaDB's sequence engine, in seconds. Stock beat is not
run there: its DatabaseScheduler loads every enabled entry into memory at start, an Entry
and a PeriodicTask each (at 10,000 it took 3.4 s and 215 MB, at 50,000 832 MB): at
1,000,000 that is some 16 GB and minutes before its first tick, and again at every change
of any PeriodicTask and every 5 minutes.

    .venv/bin/python bench/scheduler.py [--sizes 1000,10000,50000[,1000000]]
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
from bench.common import REDIS_URL, RESULTS, ROOT, ensure_database, platform_env, write_results

FIRE_WINDOW = float(os.environ.get("BENCH_FIRE_WINDOW", "15"))
BURST = 10_000
LARGE = 50_000  # above it: the platform alone, start, idle tick and memory
LOAD_CHUNK = 100_000  # rows per INSERT ... SELECT at a large size
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


def started_and_idle() -> tuple[Any, float, float]:
    """The platform's scheduler as beat starts it: (it, seconds to construct it and tick once,
    ms of CPU of one tick of its own when nothing is due, the mean of 20)."""
    from scheduler_site.celery import app
    from tasks_app.scheduling import PlatformScheduler

    started = time.perf_counter()
    scheduler = PlatformScheduler(app=app)
    scheduler.tick()
    start_s = time.perf_counter() - started
    cpu = time.process_time()
    for _ in range(20):
        scheduler.platform_tick()
    return scheduler, start_s, (time.process_time() - cpu) / 20 * 1000


def platform(size: int) -> dict[str, Any]:
    import django

    django.setup()
    import redis
    from django.utils import timezone

    from tasks_app.models import Run, Schedule

    broker = redis.Redis.from_url(REDIS_URL)
    task = _reset(size)
    later = timezone.now() + dt.timedelta(days=1)
    Schedule.objects.bulk_create(
        [Schedule(task=task, cron="* * * * *", next_fire_at=later) for _ in range(size)], batch_size=5000
    )

    scheduler, start_s, tick_cpu_ms = started_and_idle()

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

    # A burst: `burst` schedules due in the same second, a tick loop as beat runs it. Their
    # cron fires yearly: what follows the burst is not another fire of them.
    burst = min(BURST, size)
    _reset(size)
    Schedule.objects.bulk_create(
        [Schedule(task=task, cron="0 0 1 1 *", next_fire_at=later) for _ in range(burst)]
        + [Schedule(task=task, cron="* * * * *", next_fire_at=later) for _ in range(size - burst)],
        batch_size=5000,
    )
    broker.flushdb()
    instant = timezone.now().replace(microsecond=0) + dt.timedelta(seconds=2)
    Schedule.objects.filter(cron="0 0 1 1 *").update(next_fire_at=instant)
    deadline = time.monotonic() + 60
    dispatched: list[float] = []  # per message, when it was seen in the broker's queue
    while len(dispatched) < burst and time.monotonic() < deadline:
        wait = scheduler.tick()
        count = queued(broker)
        dispatched += [(timezone.now() - instant).total_seconds()] * (count - len(dispatched))
        time.sleep(min(wait, 0.1))
    created = [
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
            "size": burst,
            "dispatched": len(dispatched),
            "p50_s": percentile(dispatched, 0.5) if dispatched else None,
            "p99_s": percentile(dispatched, 0.99) if len(dispatched) == burst else ">60",
            "max_s": round(max(dispatched), 3) if dispatched else None,
            "created_p50_s": percentile(created, 0.5) if created else None,
            "created_p99_s": percentile(created, 0.99) if created else None,
        },
    }


def large(size: int) -> dict[str, Any]:
    """The platform at a size stock beat is not run at: start, idle tick, memory."""
    import django

    django.setup()
    from django.db import connection
    from django.utils import timezone
    from django_celery_beat.models import CrontabSchedule

    from tasks_app.definitions import MIRROR_TASK

    task = _reset(size)
    every_minute = CrontabSchedule.objects.create(minute="*", hour="*", timezone="UTC")  # as mirror() makes
    now, later = timezone.now(), timezone.now() + dt.timedelta(days=1)
    started = time.perf_counter()
    with connection.cursor() as cursor:
        for low in range(1, size + 1, LOAD_CHUNK):
            high = min(size, low + LOAD_CHUNK - 1)
            # Each schedule and its mirror, as definitions.mirror() writes them, sharing the id.
            seq = f"FROM seq_{low}_to_{high}"
            cursor.execute(
                "INSERT INTO django_celery_beat_periodictask (id, name, task, args, kwargs, enabled, "
                "total_run_count, date_changed, description, crontab_id, one_off, headers) "
                "SELECT seq, CONCAT('platform schedule ', seq), %s, '[]', "
                "CONCAT('{\"schedule\": ', seq, '}'), 1, 0, %s, "
                "CONCAT('Mirror of schedule ', seq, ': cron * * * * * (UTC): Every minute. The platform "
                "fires it, not this entry: edit, pause or delete schedule ', seq, ' there.'), %s, 0, '{}' "
                + seq,
                [MIRROR_TASK, now, every_minute.pk],
            )
            cursor.execute(
                "INSERT INTO tasks_app_schedule (id, task_id, cron, timezone, kwargs, misfire_policy, "
                "enabled, next_fire_at, missed_fires, invalid_reason, periodic_task_id, created_at, "
                "updated_at) SELECT seq, %s, '* * * * *', 'UTC', '{}', 'skip', 1, %s, 0, '', seq, %s, %s "
                + seq,
                [task.pk, later, now, now],
            )
        for table in ("tasks_app_schedule", "django_celery_beat_periodictask"):
            cursor.execute(f"ANALYZE TABLE {table}")
            cursor.fetchall()
    load_s = time.perf_counter() - started
    connection.close()  # the scheduler starts as beat does, on a connection of its own

    scheduler, start_s, tick_cpu_ms = started_and_idle()
    cpu = time.process_time()
    for _ in range(20):
        scheduler.tick()  # beat's whole tick: django-celery-beat's part too
    beat_tick_cpu_ms = (time.process_time() - cpu) / 20 * 1000
    return {
        "load_s": round(load_s, 1),
        "start_s": round(start_s, 3),
        "tick_cpu_ms": round(tick_cpu_ms, 3),
        "beat_tick_cpu_ms": round(beat_tick_cpu_ms, 3),
        "rss_mb": rss_mb(),
        "entries_loaded": len(scheduler.schedule),
    }


def stock(size: int) -> dict[str, Any]:
    import django

    django.setup()
    import redis
    from django.utils import timezone
    from django_celery_beat.models import CrontabSchedule, PeriodicTask
    from django_celery_beat.schedulers import DatabaseScheduler

    from scheduler_site.celery import app

    broker = redis.Redis.from_url(REDIS_URL)
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
            "size": min(BURST, size),
            "dispatched": len(burst),
            "p50_s": percentile(burst, 0.5) if burst else None,
            "p99_s": percentile(burst, 0.99) if len(burst) == min(BURST, size) else f">{FIRE_WINDOW}",
        },
        "note": "stock beat sends at most one due entry per tick; counted for FIRE_WINDOW seconds",
    }


CHILDREN = {"platform": platform, "stock": stock, "large": large}


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
        for child in ("large",) if size > LARGE else ("platform", "stock"):
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
        if size > LARGE:
            continue
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
