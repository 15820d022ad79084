"""The worker registry: every worker records itself when ready and heartbeats from a thread
of its main process, listing the messages it executes and holds and the handlers it has; it is offline after
WORKER_MISSED_HEARTBEATS missed beats (Worker.online). recovery.py judges runs by it. The worker's
main process also sweeps its event loop's cancelled timers (purge_cancelled_timers).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
from typing import Any

import celery
from celery.signals import worker_ready, worker_shutdown
from celery.worker import state as worker_state
from django.conf import settings
from django.db import InterfaceError, OperationalError, close_old_connections
from django.utils import timezone

from tasks_app import handlers
from tasks_app.models import Task, Worker

logger = logging.getLogger(__name__)
_stop = threading.Event()

# Celery's prefork pool arms a timer in the main process's event loop for every message's time
# limit (every run has one: RUN_MAX_DURATION) and, when the task ends, only flags it cancelled;
# kombu keeps a cancelled entry in its heap until it is due, about 0.5 KB per run for up to
# RUN_MAX_DURATION (an hour: some 500 MB at 300 runs/s). bench/worker_memory.py measured the main
# process +45 % (97 -> 141 MB) over 90,000 runs without this sweep.
TIMER_PURGE_INTERVAL = 10.0


def purge_cancelled_timers(timer: Any) -> int:
    """Drop the cancelled entries of a kombu `Timer` (the hub's); returns how many."""
    entries = timer.queue  # a copy, in order
    live = [entry for entry in entries if not entry.entry.canceled]
    if len(live) < len(entries):
        timer.clear()  # in place: the hub's iterator over it sees what follows
        for entry in live:
            timer.enter_at(entry.entry, entry.eta, entry.priority)
    return len(entries) - len(live)


def record_worker(
    hostname: str,
    *,
    queues: list[str],
    concurrency: int,
    executing: list[str] | None = None,
    held: list[str] | None = None,
    handler_names: list[str] | None = None,
    now: dt.datetime | None = None,
) -> None:
    now = now or timezone.now()
    described = {
        "queues": queues,
        "concurrency": concurrency,
        "handlers": sorted(handler.name for handler in handlers.all_handlers())
        if handler_names is None
        else handler_names,
        "pid": os.getpid(),
        "version": celery.__version__,
        "last_heartbeat": now,
        "executing": executing,
        "held": held,
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
                # The time first: whatever started before it is in the list that follows.
                now = timezone.now()
                record_worker(
                    hostname,
                    queues=queues,
                    concurrency=concurrency,
                    executing=_ids(worker_state.active_requests),
                    held=_ids(worker_state.reserved_requests),
                    now=now,
                )
            except (OperationalError, InterfaceError) as exc:
                logger.warning("worker heartbeat failed: database unreachable: %s", exc)
            except Exception:
                logger.exception("worker heartbeat failed")
            if _stop.wait(settings.WORKER_HEARTBEAT_INTERVAL):
                return

    threading.Thread(target=beat, name="tasks_app-heartbeat", daemon=True).start()
    hub = getattr(consumer, "hub", None)  # None in pools without an event loop (threads, gevent)
    if hub is not None:
        hub.call_repeatedly(TIMER_PURGE_INTERVAL, purge_cancelled_timers, hub.timer)


def _ids(requests: Any) -> list[str]:
    """Ids of Celery's `requests` (a set of this worker's: those executing, or all received and
    not finished), read from the heartbeat thread while the main thread changes it."""
    while True:
        try:
            return sorted(request.id for request in list(requests))
        except RuntimeError:  # the set changed while it was copied: copy again
            continue


@worker_shutdown.connect
def _stop_heartbeat(sender: Any = None, **kwargs: Any) -> None:
    _stop.set()
    try:
        Worker.objects.filter(hostname=getattr(sender, "hostname", ""), pid=os.getpid()).update(
            stopped_at=timezone.now()
        )
    except Exception:
        logger.exception("could not record the worker's stop")


def online_serving(queue: str, handler: str, online: list[Worker] | None = None) -> int:
    """How many online workers take messages from `queue` and have `handler` (of `online`,
    or read now): with none, a run of it would wait, and fail once refused."""
    if online is None:
        online = list(online_workers())
    return sum(worker.serves(queue, handler) for worker in online)


def online_workers(now: dt.datetime | None = None) -> Any:
    """The workers online at `now` (a QuerySet)."""
    return Worker.objects.filter(stopped_at__isnull=True, last_heartbeat__gt=Worker.online_since(now))


def held_messages(online: list[Worker]) -> set[str] | None:
    """Ids of the messages the `online` workers hold (received, not finished), or None when one
    of them does not say which (a worker of an older version)."""
    held: set[str] = set()
    for worker in online:
        if worker.held is None:
            return None
        held.update(worker.held)
    return held


def known_queues(online: list[Worker]) -> set[str]:
    """The queues that matter now: those tasks name, and those the `online` workers take."""
    queues = set(Task.objects.values_list("queue", flat=True).distinct())
    queues.update(queue for worker in online for queue in worker.queues)
    return queues
