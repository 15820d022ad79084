"""Handlers that real worker processes load in the integration tests (EXTRA_INSTALLED_APPS=tests.support)."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import redis
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F

from tasks_app.handlers import RunContext, handler

EXECUTIONS = "tests:executions"


@handler("tests.count")
def count(ctx: RunContext, **kwargs: Any) -> dict[str, int]:
    """Counts its executions per run in Redis: a run executed twice shows 2."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        return {"executions": client.hincrby(EXECUTIONS, str(ctx.run_id), 1)}
    finally:
        client.close()


@handler("tests.record")
def record(ctx: RunContext, seconds: float = 0, **kwargs: Any) -> dict[str, int]:
    """Works `seconds`, then writes its row under the run's id; executed again, it adds to `times`."""
    from tests.support.models import Execution

    time.sleep(seconds)  # the work, long enough to be interrupted
    try:
        with transaction.atomic():
            Execution.objects.create(run_id=ctx.run_id, attempt=ctx.attempt)
    except IntegrityError:
        Execution.objects.filter(run_id=ctx.run_id).update(times=F("times") + 1)
    return {"attempt": ctx.attempt}


@handler("tests.die")
def die(ctx: RunContext, **kwargs: Any) -> None:
    """Kills the process executing it, every time: a poison message."""
    os.kill(os.getpid(), signal.SIGKILL)


@handler("tests.connection")
def database_connection(ctx: RunContext, **kwargs: Any) -> dict[str, int]:
    """Which pool process executed it, over which database connection (MariaDB's CONNECTION_ID())."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT CONNECTION_ID()")
        (connection_id,) = cursor.fetchone()
    return {"pid": os.getpid(), "connection_id": connection_id}
