from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.db import models
from django.utils import timezone


class Worker(models.Model):
    """A Celery worker seen alive: it records itself and heartbeats (tasks_app.workers)."""

    hostname = models.CharField(max_length=255, unique=True)
    queues = models.JSONField(default=list)
    concurrency = models.PositiveIntegerField(default=0)
    pid = models.PositiveIntegerField(default=0)
    version = models.CharField(max_length=50, blank=True)
    started_at = models.DateTimeField(default=timezone.now)
    last_heartbeat = models.DateTimeField(default=timezone.now)
    stopped_at = models.DateTimeField(null=True, blank=True)
    # Message ids ("<run>.<n>") the worker was executing at its last heartbeat; None
    # when it does not say (then recovery judges its runs by its heartbeat alone).
    executing = models.JSONField(null=True, blank=True, default=None)
    # Message ids the worker had received and not yet finished at its last heartbeat (those it
    # executes, and those it holds for its next free process); None when it does not say. The
    # lost-message sweep (recovery.py) counts them as found, on any broker.
    held = models.JSONField(null=True, blank=True, default=None)
    # Names of the handlers registered in the worker: it can run only tasks of these.
    handlers = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["hostname"]

    def __str__(self) -> str:
        return self.hostname

    @staticmethod
    def online_since(now: dt.datetime | None = None) -> dt.datetime:
        """Heartbeats after this instant mean online."""
        missed = settings.WORKER_HEARTBEAT_INTERVAL * settings.WORKER_MISSED_HEARTBEATS
        return (now or timezone.now()) - dt.timedelta(seconds=missed)

    def serves(self, queue: str, handler: str) -> bool:
        """Whether it takes messages from `queue` and can run `handler`."""
        return queue in self.queues and handler in self.handlers

    @property
    def online(self) -> bool:
        return self.stopped_at is None and self.last_heartbeat > self.online_since()
