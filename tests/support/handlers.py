"""Handlers that real worker processes load in the integration tests (EXTRA_INSTALLED_APPS=tests.support)."""

from __future__ import annotations

from typing import Any

import redis
from django.conf import settings

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
