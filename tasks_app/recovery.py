"""Keeping promises under faults: the sweeps beat runs.

- A run left `running` on an offline worker, or on an online worker whose heartbeat
  no longer lists it (its pool process died, or the worker could not record the
  outcome), moves on: to `retrying` while retries remain, else `failed` with the
  reason "worker lost". A run whose worker was lost RUN_MAX_DELIVERIES times fails
  whatever its retries: it may be what kills them.
- A `pending` run whose message is nowhere (its queue is empty as the broker counts it,
  no online worker's heartbeat lists the message as received, and it has waited
  PENDING_RESEND_AFTER: a Redis flushed, a broker that lost what it had not written, a
  worker killed holding it) is marked due, and scheduling.send_due_runs() sends it again
  under its next message number, so it still runs once. Nothing here reads a transport's
  own keys: the same sweep serves Redis and RabbitMQ.
- A running workflow run with no step in flight is advanced again: the advance after
  its last step's move was lost with a process or the database.
"""

from __future__ import annotations

import datetime as dt
import logging

from django.conf import settings
from django.db.models import Exists, OuterRef
from django.utils import timezone

from tasks_app import broker, execution, workers, workflows
from tasks_app.choices import RunState, WorkflowState
from tasks_app.lifecycle import InvalidTransition
from tasks_app.models import Run, WorkflowRun

logger = logging.getLogger(__name__)
S = RunState


def recover_lost_runs(now: dt.datetime | None = None) -> int:
    """Move on runs no worker is executing any more; returns how many.

    That is a run on a worker that went offline, or on an online worker whose heartbeat,
    taken a heartbeat interval or more after the run started, does not list its message.
    """
    now = now or timezone.now()
    online = {
        hostname: (heartbeat, executing)
        for hostname, heartbeat, executing in workers.online_workers(now).values_list(
            "hostname", "last_heartbeat", "executing"
        )
    }
    interval = dt.timedelta(seconds=settings.WORKER_HEARTBEAT_INTERVAL)
    grace = interval * settings.WORKER_MISSED_HEARTBEATS
    lost: dict[str, str] = {}  # message id of the lost attempt: why
    # state_changed_at is when this attempt was claimed (started_at is the run's first start).
    running = Run.objects.filter(state=S.RUNNING, state_changed_at__lt=now - interval)
    for pk, worker, started_at, message_number in running.values_list(
        "pk", "worker", "state_changed_at", "message_number"
    ):
        message = f"{pk}.{message_number}"
        if worker not in online:
            if started_at < now - grace:  # else it may have started just before a first heartbeat
                lost[message] = f"worker {worker or '?'} went offline"
        else:
            heartbeat, executing = online[worker]
            if executing is not None and heartbeat >= started_at + interval and message not in executing:
                lost[message] = f"worker {worker} is no longer executing it"
    moved = 0
    pks = [int(message.partition(".")[0]) for message in lost]
    for run in Run.objects.select_related("task").filter(pk__in=pks, state=S.RUNNING):
        if run.message_id not in lost:
            continue  # sent and started again since it was seen
        error = {"type": "WorkerLost", "message": lost[run.message_id], "traceback": ""}
        try:
            if run.attempt >= settings.RUN_MAX_DELIVERIES:
                # It may be the run that kills its workers: stop sending it, visibly.
                execution.fail(run, error, reason=f"worker lost {run.attempt} times: not sent again")
            else:
                execution.fail_or_retry(run, error, hostname="", reason="worker lost")
            moved += 1
        except InvalidTransition:
            pass  # it finished meanwhile
    if moved:
        logger.warning("moved on %d run(s) lost with their worker", moved)
    return moved


def advance_stalled_workflows(limit: int = 100) -> int:
    """Advance running workflow runs that have no step in flight; returns how many.

    Normally each step's last move advances its workflow run at once; a process that died
    between the two, or a database that went away, leaves it waiting for nothing.
    Advancing is idempotent, so one advanced concurrently comes to no harm.
    """
    in_flight = Run.objects.filter(
        workflow_run=OuterRef("pk"), state__in=[S.PENDING, S.RUNNING, S.RETRYING, S.PAUSED]
    )
    stalled = list(
        WorkflowRun.objects.filter(state=WorkflowState.RUNNING)
        .exclude(Exists(in_flight))
        .values_list("pk", flat=True)[:limit]
    )
    for pk in stalled:
        workflows.advance(pk)
    if stalled:
        logger.warning("advanced %d workflow run(s) that had no step in flight", len(stalled))
    return len(stalled)


def resend_lost_messages(now: dt.datetime | None = None) -> int:
    """Mark pending runs whose message the broker no longer has to be sent again; returns how many.

    They get a due_at, as broker.publish() does for a message the broker refused, and
    scheduling.send_due_runs() sends them under their next message number: should the old
    message turn up after all, it runs nothing.
    """
    now = now or timezone.now()
    waited = now - dt.timedelta(seconds=settings.PENDING_RESEND_AFTER)
    stale = Run.objects.filter(state=S.PENDING, state_changed_at__lt=waited, due_at__isnull=True)
    queues = set(stale.values_list("task__queue", flat=True).distinct())
    if not queues:
        return 0
    # A queue that still has messages may have these runs' too: wait until it drains.
    empty = [q for q in queues if not broker.queue_length(q)]
    if not empty:
        return 0
    # Taken by a worker that is alive: it runs them when a process is free. (One taken since its
    # last heartbeat may be sent again: its old message number then claims nothing.)
    held = workers.held_messages(list(workers.online_workers(now)))
    if held is None:
        return 0  # a worker that does not say what it holds: judge nothing for now
    ids = [
        pk
        for pk, message_number in stale.filter(task__queue__in=empty).values_list("pk", "message_number")[
            :1000
        ]
        if f"{pk}.{message_number}" not in held
    ]
    marked = Run.objects.filter(pk__in=ids, state=S.PENDING, due_at__isnull=True).update(due_at=now)
    if marked:
        logger.warning("%d pending run(s) lost their message in the broker: sending them again", marked)
    return marked
