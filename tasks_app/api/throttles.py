"""The submit throttle: runs made per user, whatever path makes them.

DRF's throttles count requests; a bulk of 1,000 runs is one request, and a schedule's
trigger or a workflow's start made runs past any throttle. This one counts runs: each
path that makes runs calls `SubmitThrottle().take(request, runs)` once it knows how many.

The window slides: the count of the current fixed window plus the previous one's,
weighted by how much of it the sliding window still covers. Both counters are atomic
increments in the shared cache, so parallel requests never pass in the same gap.
"""

from __future__ import annotations

import math
import time
from typing import Any

from django.conf import settings
from django.core.cache import cache as default_cache
from django.core.exceptions import ImproperlyConfigured
from rest_framework.exceptions import Throttled

PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_rate(rate: str) -> tuple[int, int]:
    """ "6000/min" -> (6000, 60), as DRF reads its rates."""
    try:
        number, period = rate.split("/")
        return int(number), PERIODS[period.strip()[0]]
    except (ValueError, KeyError, IndexError):
        raise ImproperlyConfigured(f"SUBMIT_THROTTLE_RATE must look like 6000/min, got {rate!r}") from None


class SubmitThrottle:
    cache = default_cache

    def take(self, request: Any, runs: int) -> None:
        """Count `runs` more for the request's user, or raise Throttled (a 429) and count none."""
        limit, window = parse_rate(settings.SUBMIT_THROTTLE_RATE)
        now = time.time()
        current = int(now // window)
        ident = request.user.pk if request.user and request.user.is_authenticated else "anonymous"
        key = f"throttle:submit:{ident}:{current}"
        self.cache.add(key, 0, timeout=2 * window)
        try:
            counted = self.cache.incr(key, runs)
        except ValueError:  # the key went between the two (a flush, an eviction): start it again
            self.cache.set(key, runs, timeout=2 * window)
            counted = runs
        previous = self.cache.get(f"throttle:submit:{ident}:{current - 1}", 0)
        overlap = 1 - (now - current * window) / window
        if counted + previous * overlap > limit:
            try:
                self.cache.decr(key, runs)
            except ValueError:
                pass  # gone meanwhile: nothing left to give back
            wait = window - (now - current * window)
            if runs > limit:
                raise Throttled(
                    detail=f"At most {limit} runs per {window} s may be submitted; this asks for {runs}."
                )
            raise Throttled(wait=math.ceil(wait))
