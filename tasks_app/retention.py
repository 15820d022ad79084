"""Pruning old history: finished runs, their events and logs, finished workflow runs,
resolved alerts with their events and notifications (and old channel tests), and the metrics'
series of workers, tasks and schedules that are gone.

A built-in beat entry (CELERY_BEAT_SCHEDULE, "prune old runs") sends `tasks_app.prune`
daily. Rows go in batches of short DELETEs, so the tables are never locked for long.
"""

from __future__ import annotations

import datetime as dt
import logging
import time

import redis
from celery import shared_task
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from tasks_app import metrics
from tasks_app.choices import TERMINAL_STATES, AlertState
from tasks_app.models import Alert, Notification, Run, RunEvent, RunLog, WorkflowRun, WorkflowRunEvent

logger = logging.getLogger(__name__)


# After each batch of runs the prune rests as long as the batch took: a daily job at half pace
# leaves half the database's time to the submissions that go on meanwhile (bench/history.py
# measures their p99 during a prune of 1,000,000 runs).
REST_PER_BATCH = 1.0


def prune(now: dt.datetime | None = None, batch: int = 1000) -> int:
    """Delete what finished more than RUN_RETENTION_DAYS ago; returns the runs deleted."""
    cutoff = (now or timezone.now()) - dt.timedelta(days=settings.RUN_RETENTION_DAYS)
    deleted = 0
    # Oldest finish first through index run_finished_at, each batch starting where the last
    # ended: the runs kept (workflow steps, which go with their workflow run) are read once,
    # not again by every batch. Each batch is its own short transaction, so submissions wait
    # on none of its locks for long (bench/history.py: 1,000,000 runs pruned as runs are
    # submitted).
    since = None
    while True:
        finished = Run.objects.filter(
            state__in=TERMINAL_STATES, finished_at__lt=cutoff, workflow_run__isnull=True
        )
        if since is not None:
            finished = finished.filter(finished_at__gte=since)
        rows = list(finished.order_by("finished_at", "pk").values_list("pk", "finished_at")[:batch])
        if not rows:
            break
        ids = [pk for pk, _at in rows]
        since = rows[-1][1]
        started = time.monotonic()
        with transaction.atomic():
            RunEvent.objects.filter(run_id__in=ids).delete()
            RunLog.objects.filter(run_id__in=ids).delete()
            deleted += Run.objects.filter(pk__in=ids).delete()[1].get("tasks_app.Run", 0)
        time.sleep((time.monotonic() - started) * REST_PER_BATCH)
    for workflow_run_id in WorkflowRun.objects.filter(finished_at__lt=cutoff).values_list("pk", flat=True)[
        :batch
    ]:
        with transaction.atomic():
            ids = list(Run.objects.filter(workflow_run_id=workflow_run_id).values_list("pk", flat=True))
            RunEvent.objects.filter(run_id__in=ids).delete()
            RunLog.objects.filter(run_id__in=ids).delete()
            deleted += Run.objects.filter(pk__in=ids).delete()[1].get("tasks_app.Run", 0)
            WorkflowRunEvent.objects.filter(workflow_run_id=workflow_run_id).delete()
            WorkflowRun.objects.filter(pk=workflow_run_id).delete()
    if deleted:
        logger.info("pruned %d run(s) finished before %s", deleted, cutoff.isoformat())
    _prune_alerts(cutoff, batch)
    try:
        metrics.forget_gone(now)
    except redis.RedisError as exc:  # the metrics' Redis away: their series wait for tomorrow
        logger.warning("could not drop the metrics of gone workers, tasks and schedules: %s", exc)
    return deleted


def _prune_alerts(cutoff: dt.datetime, batch: int) -> None:
    while True:
        ids = list(
            Alert.objects.filter(state=AlertState.RESOLVED, resolved_at__lt=cutoff).values_list(
                "pk", flat=True
            )[:batch]
        )
        if not ids:
            break
        Alert.objects.filter(pk__in=ids).delete()  # with their events and notifications
    Notification.objects.filter(alert__isnull=True, created_at__lt=cutoff).delete()  # channel tests


@shared_task(name="tasks_app.prune")
def prune_task() -> int:
    return prune()
