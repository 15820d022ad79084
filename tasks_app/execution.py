"""The worker's side: one Celery task per registered handler, each a thin entry point,
and the moves a worker makes (claim, complete, fail, retry after a backoff).

A message carries `run_id` and `message_number`, and the run with its task's definition as
they were when it was sent (run_loader.carried; its Celery name is the handler's, shown under
the task's name). The worker claims the run (pending -> running, only for the run's latest
message), calls the handler with a context, records the outcome, and ends the Celery task as
the attempt ended, so that the worker log, Flower and `celery events` agree with the platform.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from billiard.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celery import Task as CeleryTask
from celery import shared_task
from celery.exceptions import Ignore, Retry
from celery.signals import task_prerun, task_unknown
from django.conf import settings
from django.db import InterfaceError, OperationalError, close_old_connections, connections, transaction
from django.db.models import F
from django.utils import timezone

from tasks_app import concurrency, handlers, lifecycle, workflows
from tasks_app.choices import Actor, RunState
from tasks_app.handlers import RunContext, RunInterrupted
from tasks_app.lifecycle import InvalidTransition
from tasks_app.models import Run, RunLog, Task
from tasks_app.run_loader import from_message, get_with_task

S = RunState

logger = logging.getLogger(__name__)
T = TypeVar("T")

_celery_tasks: dict[str, CeleryTask] = {}


class ResultTooLarge(ValueError):
    pass


class RunFailed(Exception):
    """What Celery is told when a run ended failed other than by its handler's exception."""


@dataclass(frozen=True)
class Outcome:
    """How a message ended: the state its run was left in, None when it ran nothing."""

    state: RunState | None
    error: BaseException | None = None
    reason: str = ""
    retry_in: float | None = None


NOTHING_RAN = Outcome(None)


class RunTask(CeleryTask):
    """Base of every handler's Celery task."""

    typing = False  # the message's arguments are ours, not the handler's signature

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        # Celery calls this in the worker's main process when the hard time limit
        # killed the pool process: the run can no longer record that itself.
        if isinstance(exc, TimeLimitExceeded):
            error = error_of(exc, einfo=str(einfo))
            error["message"] = f"hard time limit ({exc.args[0] if exc.args else '?'}s) exceeded"
            close_old_connections()
            record_hard_timeout(*message_of(args, kwargs), error=error)


def message_of(args: Any, kwargs: Any) -> tuple[int, int]:
    """(run id, message number) of a message's arguments, named or (older messages) positional."""
    if kwargs and "run_id" in kwargs:
        return kwargs["run_id"], kwargs["message_number"]
    return args[0], args[1]


# A connection idle longer than this is checked (and replaced if broken) before the
# next task uses it; in a burst, one health check per task would cost a round trip each.
CONNECTION_CHECK_AFTER_IDLE = 1.0
_last_task_started = 0.0


@task_prerun.connect
def _check_connections_after_idle(**kwargs: Any) -> None:
    # Celery's per-task close of every connection is off (CELERY_DB_REUSE_MAX): close
    # only connections that broke or outlived CONN_MAX_AGE.
    global _last_task_started
    now = time.monotonic()
    idle = now - _last_task_started > CONNECTION_CHECK_AFTER_IDLE
    _last_task_started = now
    if idle or any(conn.errors_occurred for conn in connections.all(initialized_only=True)):
        close_old_connections()


def celery_task_for(handler_name: str) -> CeleryTask:
    """The Celery task executing runs of `handler_name`, created once."""
    if handler_name not in _celery_tasks:
        # What a later version's messages may add is ignored (**later): a worker not yet
        # upgraded still executes them, from the database.
        def entry(
            self: CeleryTask, run_id: int, message_number: int, carried: Any = None, **later: Any
        ) -> None:
            outcome = execute(
                run_id, message_number, hostname=self.request.hostname or "", carried=from_message(carried)
            )
            report_to_celery(outcome)

        entry.__name__ = entry.__qualname__ = handler_name.replace(".", "_")
        _celery_tasks[handler_name] = shared_task(name=handler_name, base=RunTask, bind=True)(entry)
    return _celery_tasks[handler_name]


def report_to_celery(outcome: Outcome) -> None:
    """End the Celery task as the run's attempt ended: a failed run FAILURE (Celery does not
    retry it: nothing asks it to), an attempt to be retried RETRY, one that ran nothing, or
    stopped because the run was paused or cancelled meanwhile, IGNORED. A cancel revokes
    the message too (broker.revoke_cancelled), which Celery reports as REVOKED."""
    if outcome.state == S.COMPLETED:
        return
    if outcome.state == S.FAILED:
        raise outcome.error or RunFailed(outcome.reason)
    if outcome.state == S.RETRYING:
        raise Retry(outcome.reason, exc=outcome.error, when=outcome.retry_in)
    raise Ignore()


def error_of(exc: BaseException, *, einfo: str | None = None) -> dict[str, str]:
    return {
        "type": type(exc).__name__,
        "message": str(exc)[:2000],
        "traceback": (einfo or "".join(traceback.format_exception(exc)))[-20000:],
    }


def encode_result(value: Any) -> Any:
    """The handler's return value as stored JSON; refuses what is not JSON or too large."""
    text = json.dumps(value, allow_nan=False)
    if len(text.encode()) > settings.RUN_RESULT_MAX_BYTES:
        raise ResultTooLarge(
            f"result is {len(text.encode())} bytes, over RUN_RESULT_MAX_BYTES={settings.RUN_RESULT_MAX_BYTES}"
        )
    return json.loads(text)


def execute(run_id: int, message_number: int, *, hostname: str, carried: Run | None = None) -> Outcome:
    def claim_it() -> Run:
        nonlocal carried
        if carried is not None:
            run, carried = carried, None  # once: tried again after a database outage, it reads
            try:
                claim(run, message_number, hostname)
                return run
            except InvalidTransition:
                pass  # refused: decided again on the run as it is now, as a message without it is
        run = get_with_task(run_id)
        claim(run, message_number, hostname)
        return run

    try:
        run = patiently(claim_it, f"claim run {run_id}")
    except Run.DoesNotExist:
        logger.warning("run %s no longer exists; message %s.%s dropped", run_id, run_id, message_number)
        return NOTHING_RAN
    except InvalidTransition as exc:
        logger.info("message %s.%s not executed: %s", run_id, message_number, exc)
        return NOTHING_RAN
    raised: BaseException | None = None
    try:
        handler = handlers.get(run.task.handler)
        upstream = workflows.upstream_results(run) if run.workflow_run_id else None
        outcome = encode_result(handler.func(RunContext(run, handler, upstream), *run.args, **run.kwargs))
    except RunInterrupted as exc:
        logger.info("run %s stopped: it was %s meanwhile", run_id, exc.current)
        return NOTHING_RAN
    except SoftTimeLimitExceeded as exc:
        raised, error = exc, error_of(exc)
        error["message"] = f"soft time limit ({run.task.soft_time_limit}s) exceeded"
        record, args, kwargs = fail, (run, error), {"reason": "timeout"}
    except Exception as exc:
        raised = exc
        record, args, kwargs = fail_or_retry, (run, error_of(exc)), {}
    else:
        record, args, kwargs = complete, (run, outcome), {}
    if not concurrency.holds(run):
        # Its lock expired and a newer run took it: this one must not finish over it.
        holder = concurrency.holder_of(run.task_id)
        error = {"type": "LockLost", "message": f"run {holder} holds the task's lock now", "traceback": ""}
        raised = None
        record, args, kwargs = fail, (run, error), {"reason": "lost its concurrency lock to a newer run"}
    recorded = patiently(
        lambda: _record(record, *args, hostname=hostname, **kwargs), f"record run {run_id}'s outcome"
    )
    if not recorded:
        return NOTHING_RAN
    retry_in = max((run.due_at - timezone.now()).total_seconds(), 0.0) if run.state == S.RETRYING else None
    return Outcome(run.state, raised, run.state_reason, retry_in)


def patiently(operation: Callable[[], T], what: str) -> T:
    """`operation()`, tried again while the database is unreachable, for up to WORKER_DATABASE_PATIENCE s.

    Meanwhile the worker keeps the message unacknowledged, or the attempt's outcome in
    memory: giving up at once would drop the message, or run the handler a second time.
    """
    deadline = time.monotonic() + settings.WORKER_DATABASE_PATIENCE
    delay = 0.1
    while True:
        try:
            return operation()
        except (OperationalError, InterfaceError) as exc:
            if time.monotonic() + delay > deadline:
                raise
            logger.warning("database unreachable, trying again in %.1fs to %s: %s", delay, what, exc)
            time.sleep(delay)
            close_old_connections()  # drops the broken connection; the next query opens one
            delay = min(delay * 2, 5.0)


def _record(method: Any, *args: Any, **kwargs: Any) -> bool:
    # The run may have been cancelled or paused while the handler ran: the state table
    # then refuses the outcome, and the operator's decision stands.
    try:
        method(*args, **kwargs)
        return True
    except InvalidTransition as exc:
        logger.info("outcome not recorded: %s", exc)
        return False


def record_hard_timeout(run_id: int, message_number: int, *, error: dict[str, str]) -> None:
    run = Run.objects.select_related("task").filter(pk=run_id, message_number=message_number).first()
    if run is not None:
        _record(fail, run, error, reason="timeout")


# --- the moves a worker makes ---------------------------------------------------------


def claim(run: Run, message_number: int, hostname: str) -> None:
    """Take the run for execution with its message number `message_number` (pending ->
    running): only the run's latest message can, so a stale or duplicated one runs nothing."""
    now = timezone.now()
    lifecycle.move(
        run,
        S.RUNNING,
        only_from=frozenset({S.PENDING}),
        where={"message_number": message_number},
        actor=Actor.WORKER,
        actor_name=hostname,
        reason=f"attempt {run.attempt + 1} started",
        attempt=run.attempt + 1,
        worker=hostname,
        at=now,
        started_at=run.started_at or now,  # kept by a resume and an automatic retry
        progress=None,
        error=None,
        due_at=None,  # a resend may have been due; this message won the claim
    )


def complete(run: Run, result: Any, hostname: str) -> None:
    lifecycle.move(
        run,
        S.COMPLETED,
        where={"message_number": run.message_number},
        actor=Actor.WORKER,
        actor_name=hostname,
        result=result,
        progress={"fraction": 1.0, "message": "completed"},
    )


def fail(run: Run, error: dict[str, Any], *, reason: str, hostname: str = "") -> None:
    lifecycle.move(
        run,
        S.FAILED,
        only_from=frozenset({S.RUNNING, S.PENDING}),
        where={"message_number": run.message_number},
        actor=Actor.WORKER if hostname else Actor.SYSTEM,
        actor_name=hostname,
        reason=reason,
        error=error,
    )


def fail_or_retry(run: Run, error: dict[str, Any], *, hostname: str, reason: str = "") -> None:
    """After a failed attempt: retry after the task's backoff while retries remain."""
    # Judged by its task as it is now: the message carried the task as it was when sent.
    task = run.task = Task.objects.filter(pk=run.task_id).first() or run.task
    why = reason or error["type"]
    if run.retries >= task.max_retries:
        attempts = f"{run.attempt} attempt{'s' if run.attempt != 1 else ''}"
        fail(run, error, reason=f"{why} after {attempts}" if not reason else reason, hostname=hostname)
        return
    delay = task.retry_delay(run.retries)
    now = timezone.now()
    lifecycle.move(
        run,
        S.RETRYING,
        where={"message_number": run.message_number},
        actor=Actor.WORKER if hostname else Actor.SYSTEM,
        actor_name=hostname,
        reason=f"{why}; retry {run.retries + 1} of {task.max_retries} in {delay:.3f}s",
        error=error,
        retries=run.retries + 1,
        at=now,
        due_at=now + dt.timedelta(seconds=delay),
    )


# --- a message for a handler the worker lacks -------------------------------------------


@task_unknown.connect
def _refused(sender: Any = None, name: str = "", id: str = "", **kwargs: Any) -> None:
    # Celery has rejected the message (it is gone) and logged the error; the run must
    # not wait for the lost-message sweep, nor be sent again forever.
    # This runs in the consumer's own thread, which no task's connection care covers.
    close_old_connections()
    try:
        patiently(
            lambda: refuse_delivery(id, name, hostname=getattr(sender, "hostname", "") or ""),
            f"record the refused message {id}",
        )
    except Exception:
        logger.exception("could not record the refused message %s", id)


def refuse_delivery(
    message_id: str, handler_name: str, *, hostname: str, now: dt.datetime | None = None
) -> None:
    """A worker without the handler `handler_name` got the message `message_id`: record it on
    the run; after RUN_MAX_DELIVERIES refusals the run fails, else it is sent again soon,
    under its next message number (another worker of the queue may have the handler)."""
    try:
        run_id, message_number = (int(part) for part in message_id.split("."))
    except ValueError:
        return  # not a run's message
    now = now or timezone.now()
    this_message = Run.objects.filter(pk=run_id, message_number=message_number, state=S.PENDING)
    with transaction.atomic():
        if not this_message.update(refusals=F("refusals") + 1):
            return  # moved on meanwhile: cancelled, or sent again
        RunLog.objects.create(
            run_id=run_id,
            at=now,
            level="WARNING",
            message=f"worker {hostname or '?'} refused message {message_id}: "
            f"handler {handler_name!r} is not registered there",
        )
    run = get_with_task(run_id)
    if run.refusals >= settings.RUN_MAX_DELIVERIES:
        error = {
            "type": "NotRegistered",
            "message": f"handler {handler_name!r} is not registered on the workers that got the run "
            f"({run.refusals} deliveries refused, the last by {hostname or '?'}); "
            "retry the run once a worker of its queue has it",
            "traceback": "",
        }
        _record(fail, run, error, reason="handler not registered", hostname=hostname)
    else:
        # Its message is gone as a lost one is: sent again after as long (recovery.py).
        later = now + dt.timedelta(seconds=settings.PENDING_RESEND_AFTER)
        this_message.filter(due_at__isnull=True).update(due_at=later)
