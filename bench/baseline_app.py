"""Stock Celery apps the benchmarks compare against (same broker, same no-op work).

BENCH_MODE=plain: no result backend; each task bumps a Redis counter (BENCH_REDIS_URL) so
completion can be seen.
BENCH_MODE=results: django-celery-results stores every result in the benchmark database.
"""

from __future__ import annotations

import os

import redis
from celery import Celery

MODE = os.environ.get("BENCH_MODE", "plain")
BROKER_URL = os.environ["BENCH_BROKER_URL"]
COUNTER = "bench:plain:done"

if MODE == "results":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.baseline_settings")
    import django

    django.setup()

app = Celery("baseline", broker=BROKER_URL)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    result_serializer="json",
    broker_connection_retry_on_startup=True,
)
if MODE == "results":
    app.conf.result_backend = "django-db"
else:
    app.conf.task_ignore_result = True

_counter = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"]) if MODE == "plain" else None


@app.task(name="bench.noop")
def noop(**kwargs: object) -> dict[str, object]:
    if _counter is not None:
        _counter.incr(COUNTER)
    return {"kwargs": kwargs}
