"""The worker's side: one Celery task per registered handler, each a thin entry point,
and the moves a worker makes (claim, complete, fail, retry after a backoff).

A message carries only `(run_id, message_number)`. The worker re-reads the run,
claims it (pending -> running, only for the run's latest message), calls the
handler with a context, and records the outcome.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

from billiard.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celery import Task as CeleryTask
from celery import shared_task
from celery.signals import task_prerun
from django.conf import settings
from django.db import InterfaceError, OperationalError, close_old_connections, connections
from django.utils import timezone

from tasks_app import concurrency, handlers, lifecycle, workflows
from tasks_app.choices import Actor, RunState
from tasks_app.handlers import RunContext, RunInterrupted
from tasks_app.lifecycle import InvalidTransition
from tasks_app.models import Run
from tasks_app.run_loader import get_with_task

S = RunState

logger = logging.getLogger(__name__)
T = TypeVar("T")

_celery_tasks: dict[str, CeleryTask] = {}


class ResultTooLarge(ValueError):
    pass


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
            record_hard_timeout(*args[:2], error=error)


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

        def entry(self: CeleryTask, run_id: int, message_number: int) -> None:
            execute(run_id, message_number, hostname=self.request.hostname or "")

        entry.__name__ = entry.__qualname__ = handler_name.replace(".", "_")
        _celery_tasks[handler_name] = shared_task(name=handler_name, base=RunTask, bind=True)(entry)
    return _celery_tasks[handler_name]


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


def execute(run_id: int, message_number: int, *, hostname: str) -> None:
    def claim_it() -> Run:
        run = get_with_task(run_id)
        claim(run, message_number, hostname)
        return run

    try:
        run = patiently(claim_it, f"claim run {run_id}")
    except Run.DoesNotExist:
        logger.warning("run %s no longer exists; message %s.%s dropped", run_id, run_id, message_number)
        return
    except InvalidTransition as exc:
        logger.info("message %s.%s not executed: %s", run_id, message_number, exc)
        return
    try:
        handler = handlers.get(run.task.handler)
        upstream = workflows.upstream_results(run) if run.workflow_run_id else None
        outcome = encode_result(handler.func(RunContext(run, handler, upstream), *run.args, **run.kwargs))
    except RunInterrupted as exc:
        logger.info("run %s stopped: it was %s meanwhile", run_id, exc.current)
        return
    except SoftTimeLimitExceeded as exc:
        error = error_of(exc)
        error["message"] = f"soft time limit ({run.task.soft_time_limit}s) exceeded"
        record, args, kwargs = fail, (run, error), {"reason": "timeout"}
    except Exception as exc:
        record, args, kwargs = fail_or_retry, (run, error_of(exc)), {}
    else:
        record, args, kwargs = complete, (run, outcome), {}
    if not concurrency.holds(run):
        # Its lock expired and a newer run took it: this one must not finish over it.
        holder = concurrency.holder_of(run.task_id)
        error = {"type": "LockLost", "message": f"run {holder} holds the task's lock now", "traceback": ""}
        record, args, kwargs = fail, (run, error), {"reason": "lost its concurrency lock to a newer run"}
    patiently(lambda: _record(record, *args, hostname=hostname, **kwargs), f"record run {run_id}'s outcome")


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


def _record(method: Any, *args: Any, **kwargs: Any) -> None:
    # The run may have been cancelled or paused while the handler ran: the state table
    # then refuses the outcome, and the operator's decision stands.
    try:
        method(*args, **kwargs)
    except InvalidTransition as exc:
        logger.info("outcome not recorded: %s", exc)


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
        started_at=now,
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
    task = run.task
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
