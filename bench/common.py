"""What the benchmarks share: where they run, and waiting on a condition."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DB_URL = os.environ.get("BENCH_DATABASE_URL", "mysql://root@127.0.0.1:3306/bench_scheduler")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
# The broker of every side of a benchmark: Redis by default, or RabbitMQ
# (BENCH_BROKER_URL=amqp://guest:guest@127.0.0.1:5672//; bench/e2e.py). Redis keeps the locks.
BROKER_URL = os.environ.get("BENCH_BROKER_URL", REDIS_URL)
BROKER_IS_REDIS = BROKER_URL.startswith(("redis://", "rediss://"))


# The platform's broker keys are under this prefix (scheduler_site/settings.py BROKER_KEY_PREFIX);
# a client that pings its workers must use it too. Stock Celery's keys have none.
PLATFORM_BROKER_OPTIONS = {"global_keyprefix": "broker:"} if BROKER_IS_REDIS else {}


def probe(platform: bool) -> Any:
    """A Celery client on the benchmark's broker, to ping the workers of one side."""
    from celery import Celery

    return Celery(broker=BROKER_URL, broker_transport_options=PLATFORM_BROKER_OPTIONS if platform else {})


def empty_broker(queues: tuple[str, ...] = ("default", "celery")) -> None:
    """Empty the benchmark's Redis database and, on RabbitMQ, the queues both sides use."""
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()
    if BROKER_IS_REDIS:
        return
    import kombu
    from amqp.exceptions import NotFound

    with kombu.Connection(BROKER_URL) as connection:
        for queue in queues:
            channel = connection.channel()  # one each: RabbitMQ closes it on an unknown queue
            try:
                channel.queue_purge(queue)
            except NotFound:
                continue
            channel.close()


def platform_env(settings_module: str = "scheduler_site.settings", **extra: str) -> dict[str, str]:
    """The environment of a process running the platform against the benchmark's database and Redis."""
    return {
        **os.environ,
        "DATABASE_URL": DB_URL,
        "REDIS_URL": REDIS_URL,
        "BROKER_URL": BROKER_URL,
        "DJANGO_SETTINGS_MODULE": settings_module,
        "PYTHONPATH": str(ROOT),
        **extra,
    }


def ensure_database(url: str = DB_URL) -> None:
    import dj_database_url
    import MySQLdb

    db = dj_database_url.parse(url)
    conn = MySQLdb.connect(
        host=db["HOST"], port=int(db["PORT"] or 3306), user=db["USER"], passwd=db["PASSWORD"]
    )
    try:
        conn.cursor().execute(f"CREATE DATABASE IF NOT EXISTS `{db['NAME']}` CHARACTER SET utf8mb4")
    finally:
        conn.close()


def truncate(tables: tuple[str, ...]) -> None:
    """Empty `tables` (MariaDB), whatever their foreign keys."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SET FOREIGN_KEY_CHECKS = 0")
        for table in tables:
            cursor.execute(f"TRUNCATE TABLE {table}")
        cursor.execute("SET FOREIGN_KEY_CHECKS = 1")


# A failed run's error, as the benches' INSERT ... SELECT of runs write it (run_columns):
# `st` is the selected state, `seq` the sequence number.
FAILED_ERROR = (
    "IF(st = 'failed', JSON_OBJECT('type', 'ConnectionError', 'message', "
    "CONCAT('refused by host ', MOD(seq, 7)), 'traceback', ''), NULL)",
    [],
)


def explain(sql: str, params: Any = None) -> list[dict[str, Any]]:
    """MariaDB's EXPLAIN of `sql`: a row per table read, by column name."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + sql, params)
        columns = [column[0] for column in cursor.description]
        return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]


def run_columns(given: dict[str, tuple[str, list[Any]]]) -> tuple[list[str], list[str], list[Any]]:
    """The runs table's columns, the SQL of each value and their parameters, for an
    INSERT ... SELECT: `given` (field name -> (SQL, params)) where it says, else the model's
    default as the ORM would write it."""
    from django.db import connection

    from tasks_app.models import Run

    columns, values, params = [], [], []
    for field in Run._meta.concrete_fields:
        if field.primary_key:
            continue
        columns.append(connection.ops.quote_name(field.column))
        if field.name in given:
            sql, extra = given[field.name]
        else:
            sql, extra = "%s", [field.get_db_prep_save(field.get_default(), connection)]
        values.append(sql)
        params += extra
    return columns, values, params


def write_results(path: str, figures: dict[str, Any], shown: dict[str, Any]) -> None:
    """Write a benchmark's figures as JSON and print the headline ones."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2))
    print(json.dumps(shown, indent=2))
    print(f"written to {out}")


def cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of process `pid` ("main") and of its children ("pool"), summed."""
    ticks = os.sysconf("SC_CLK_TCK")

    def of(process: int) -> float:
        fields = Path(f"/proc/{process}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / ticks

    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return {"main": of(pid), "pool": sum(of(int(child)) for child in children)}


def stop_worker(worker: subprocess.Popen[bytes]) -> None:
    """Stop a worker started in a session of its own: warm shutdown, then a kill after 30 s."""
    os.killpg(worker.pid, signal.SIGTERM)
    try:
        worker.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.02)
