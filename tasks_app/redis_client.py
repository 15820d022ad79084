"""The one Redis client of the platform's own code: concurrency locks, the alert rules'
version, and the readiness check. (Celery, the cache and the metrics open their own.)"""

from __future__ import annotations

from functools import cache

import redis
from django.conf import settings

Error = redis.RedisError


@cache
def client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, decode_responses=True)


def ping() -> None:
    """Raise unless Redis answers within a second."""
    probe = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=1, socket_connect_timeout=1)
    try:
        probe.ping()
    finally:
        probe.close()
