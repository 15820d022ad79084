"""Keeping promises under faults: the worker registry and the sweeps beat runs.

- Every worker records itself when ready and heartbeats from a thread of its main
  process; it is offline after WORKER_MISSED_HEARTBEATS missed beats.
- A run left `running` on an offline worker moves on: to `retrying` while retries
  remain, else `failed` with the reason "worker lost". A run whose worker was lost
  RUN_MAX_DELIVERIES times fails whatever its retries: it may be what kills them.
- A `pending` run whose message the broker lost (a Redis restart or flush: its queue
  and the unacknowledged set are empty, yet it has waited PENDING_RESEND_AFTER) is
  marked due, and RunQuerySet.dispatch_due() sends it again under its next message
  number, so it still runs once.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
from typing import Any

import celery
from celery.signals import worker_ready, worker_shutdown
from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from tasks_app.lifecycle import InvalidTransition, RunState

logger = logging.getLogger(__name__)
S = RunState
_stop = threading.Event()


def record_worker(
    hostname: str, *, queues: list[str], concurrency: int, now: dt.datetime | None = None
) -> None:
    from tasks_app.models import Worker

    now = now or timezone.now()
    described = {
        "queues": queues,
        "concurrency": concurrency,
        "pid": os.getpid(),
        "version": celery.__version__,
        "last_heartbeat": now,
    }
    Worker.objects.update_or_create(
        hostname=hostname,
        defaults={**described, "stopped_at": None},
        create_defaults={**described, "started_at": now},
    )


@worker_ready.connect
def _start_heartbeat(sender: Any, **kwargs: Any) -> None:
    consumer = sender
    hostname = consumer.hostname
    queues = sorted(q.name for q in consumer.task_consumer.queues) if consumer.task_consumer else []
    concurrency = getattr(consumer.controller, "concurrency", 0) or 0

    def beat() -> None:
        while True:
            try:
                close_old_connections()
                record_worker(hostname, queues=queues, concurrency=concurrency)
            except Exception:
                logger.exception("worker heartbeat failed")
            if _stop.wait(settings.WORKER_HEARTBEAT_INTERVAL):
                return

    threading.Thread(target=beat, name="tasks_app-heartbeat", daemon=True).start()


@worker_shutdown.connect
def _stop_heartbeat(sender: Any = None, **kwargs: Any) -> None:
    from tasks_app.models import Worker

    _stop.set()
    try:
        Worker.objects.filter(hostname=getattr(sender, "hostname", ""), pid=os.getpid()).update(
            stopped_at=timezone.now()
        )
    except Exception:
        logger.exception("could not record the worker's stop")


def recover_lost_runs(now: dt.datetime | None = None) -> int:
    """Move runs left running on offline workers on; returns how many."""
    from tasks_app.models import Run, Worker

    now = now or timezone.now()
    online = set(Worker.objects.filter(stopped_at__isnull=True, last_heartbeat__gt=Worker.online_since(now))
                 .values_list("hostname", flat=True))  # fmt: skip
    grace = dt.timedelta(seconds=settings.WORKER_HEARTBEAT_INTERVAL * settings.WORKER_MISSED_HEARTBEATS)
    lost = (
        Run.objects.select_related("task")
        .filter(state=S.RUNNING, started_at__lt=now - grace)
        .exclude(worker__in=online)
    )
    moved = 0
    for run in lost:
        error = {"type": "WorkerLost", "message": f"worker {run.worker or '?'} went offline", "traceback": ""}
        try:
            if run.attempt >= settings.RUN_MAX_DELIVERIES:
                # It may be the run that kills its workers: stop sending it, visibly.
                run.fail(error, reason=f"worker lost {run.attempt} times: not sent again")
            else:
                run.fail_or_retry(error, hostname="", reason="worker lost")
            moved += 1
        except InvalidTransition:
            pass  # it finished meanwhile
    if moved:
        logger.warning("moved on %d run(s) lost with their worker", moved)
    return moved


def resend_lost_messages(now: dt.datetime | None = None) -> int:
    """Mark pending runs whose message the broker no longer has to be sent again; returns how many.

    They get a due_at, as dispatch.publish() does for a message the broker refused, and
    RunQuerySet.dispatch_due() sends them under their next message number: should the old
    message turn up after all, it runs nothing.
    """
    from tasks_app import dispatch
    from tasks_app.models import Run

    now = now or timezone.now()
    waited = now - dt.timedelta(seconds=settings.PENDING_RESEND_AFTER)
    stale = Run.objects.filter(state=S.PENDING, state_changed_at__lt=waited, due_at__isnull=True)
    queues = set(stale.values_list("task__queue", flat=True).distinct())
    if not queues:
        return 0
    client = dispatch.broker_client()
    if client.hlen("unacked"):
        return 0  # a worker holds messages: they may be these
    empty = [q for q in queues if not any(client.llen(key) for key in client.scan_iter(f"{q}*"))]
    if not empty:
        return 0
    ids = list(stale.filter(task__queue__in=empty).values_list("pk", flat=True)[:1000])
    marked = Run.objects.filter(pk__in=ids, state=S.PENDING, due_at__isnull=True).update(due_at=now)
    if marked:
        logger.warning("%d pending run(s) lost their message in the broker: sending them again", marked)
    return marked
