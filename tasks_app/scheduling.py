"""Beat integration: the platform's scheduler, Celery beat's default here.

It is django-celery-beat's DatabaseScheduler (PeriodicTask rows stay the source of
periodic entries, visible in its admin) plus, on every tick, the sending of runs
that have become due: a `run_at` reached, or a retry's backoff over.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.db import close_old_connections
from django_celery_beat.schedulers import DatabaseScheduler

logger = logging.getLogger(__name__)

DISPATCH_BATCH = 500


class PlatformScheduler(DatabaseScheduler):
    def tick(self, *args: Any, **kwargs: Any) -> float:
        interval = super().tick(*args, **kwargs)
        sent = self.dispatch_due_runs()
        if sent >= DISPATCH_BATCH:
            return 0  # more are waiting: go again at once
        return min(interval, settings.RUN_DISPATCH_INTERVAL)

    def dispatch_due_runs(self) -> int:
        from tasks_app.models import Run

        close_old_connections()
        try:
            sent = Run.objects.dispatch_due(limit=DISPATCH_BATCH)
        except Exception:
            # A database outage must not stop beat: try again next tick.
            logger.exception("could not send due runs")
            return 0
        if sent:
            logger.info("sent %d due run(s)", sent)
        return sent
