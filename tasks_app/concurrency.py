"""Task concurrency policies across all workers, on a Redis lock per task.

For a task whose policy is not `allow`, a run due now is recorded as `created` and
goes through `gate()` after its commit: it takes the task's lock and is sent, or the
policy decides (`forbid`: skipped, with the reason; `replace`: the active run is
cancelled and the new one takes over; `queue`: it waits in `created` until the
active one ends).

The lock is a Redis key set with a random token and an expiry, released only by its
holder (compare-and-delete in Lua), and extended while its run is active (beat does
it each few seconds, `extend_active()`). Each acquisition increments the task's
fencing token, recorded on the run (`Run.fence`, `ctx.fence`): a run whose lock was
taken over by a successor cannot finish over it (`holds()` is checked before a run
records its outcome).
"""

from __future__ import annotations

import logging
import secrets

from django.conf import settings
from django.db import transaction

from tasks_app import broker, lifecycle, redis_client
from tasks_app.choices import ACTIVE_STATES, Actor, ConcurrencyPolicy, RunState
from tasks_app.lifecycle import InvalidTransition, Move
from tasks_app.models import Run

logger = logging.getLogger(__name__)

# KEYS: lock, fence. ARGV: value, ttl ms. Returns {fence, ""} or {0, current holder}.
_ACQUIRE = """
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {redis.call('incr', KEYS[2]), ''}
end
return {0, redis.call('get', KEYS[1]) or ''}
"""
# Take the lock whoever holds it (replace policy); returns the new fence.
_TAKE_OVER = """
redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
return redis.call('incr', KEYS[2])
"""
_EXTEND = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


def _keys(task_id: int) -> list[str]:
    prefix = settings.LOCK_KEY_PREFIX
    return [f"{prefix}task:{task_id}", f"{prefix}task:{task_id}:fence"]


def _ttl_ms() -> int:
    return int(settings.CONCURRENCY_LOCK_TTL * 1000)


def _value(run: Run) -> str:
    return f"{run.pk}:{run.lock_token}"


def holder_of(task_id: int) -> int | None:
    """The run id holding the task's lock, if any."""
    value = redis_client.client().get(_keys(task_id)[0])
    return int(value.split(":", 1)[0]) if value else None


def holds(run: Run) -> bool:
    """Whether `run` may still finish: it holds its lock, or nobody took it over."""
    if not run.lock_token:
        return True
    value = redis_client.client().get(_keys(run.task_id)[0])
    return value is None or value == _value(run)


def gate(runs: list[Run]) -> None:
    """Send each created run of a gated task, or apply its task's policy."""
    for run in runs:
        try:
            _gate_one(run)
        except InvalidTransition as exc:  # moved meanwhile (cancelled, ...): nothing to do
            logger.info("not gated: %s", exc)
        except redis_client.Error:
            logger.exception("concurrency lock of run %s unavailable; it waits in created", run.pk)


def _gate_one(run: Run) -> None:
    policy = run.task.concurrency_policy
    fence, holder_id = _try_lock(run)
    if fence:
        _send(run, fence, reason="took the task's concurrency lock")
    elif policy == ConcurrencyPolicy.REPLACE:
        fence = _take_over(run)
        _cancel(holder_id, by_run=run.pk)
        _send(run, fence, reason=f"replace: took over from run {holder_id}")
    elif policy == ConcurrencyPolicy.FORBID:
        why = f"forbid: run {holder_id} of this task is active"
        lifecycle.move(
            run, RunState.SKIPPED, only_from=frozenset({RunState.CREATED}), reason=why, actor=Actor.SYSTEM
        )
    else:  # queue: waits in created; release() of the active run sends it
        logger.info("run %s queued behind run %s", run.pk, holder_id)


def lock_for_resend(run: Run) -> dict[str, object]:
    """The lock fields for `run` sent again by an operator (retry, resume) without going
    through `created`; the task's policy applies as at submission, a conflict refusing it.

    The caller moves the run with these fields, and calls `release(run)` if that fails.
    """
    policy = run.task.concurrency_policy
    fence, holder_id = _try_lock(run)
    if not fence:
        if policy != ConcurrencyPolicy.REPLACE:
            why = f"{policy}: run {holder_id} of this task is active"
            raise InvalidTransition(run.pk, run.state, RunState.PENDING, why)
        fence = _take_over(run)
        transaction.on_commit(lambda: _cancel(holder_id, by_run=run.pk))
    return {"fence": fence, "lock_token": run.lock_token}


def _try_lock(run: Run) -> tuple[int, int | None]:
    """Take the task's lock for `run` under a new token: (the fence, None), or, when another
    run holds it, (0, that run's id) and no token."""
    run.lock_token = secrets.token_hex(16)
    fence, holder = redis_client.client().eval(_ACQUIRE, 2, *_keys(run.task_id), _value(run), _ttl_ms())
    if fence:
        return fence, None
    run.lock_token = ""  # it holds nothing
    return 0, int(holder.split(":", 1)[0]) if holder else None


def _take_over(run: Run) -> int:
    """Take the task's lock for `run` whoever holds it (replace policy); returns the new fence."""
    run.lock_token = secrets.token_hex(16)
    return redis_client.client().eval(_TAKE_OVER, 2, *_keys(run.task_id), _value(run), _ttl_ms())


def _send(run: Run, fence: int, *, reason: str) -> None:
    lifecycle.move(
        run,
        RunState.PENDING,
        only_from=frozenset({RunState.CREATED}),
        new_message=True,
        reason=reason,
        actor=Actor.SYSTEM,
        fence=fence,
        lock_token=run.lock_token,
        due_at=None,
    )
    transaction.on_commit(lambda: broker.publish([run]))


def _cancel(run_id: int | None, *, by_run: int) -> None:
    previous = Run.objects.select_related("task").filter(pk=run_id).first() if run_id else None
    if previous is None:
        return
    try:
        lifecycle.move(
            previous,
            RunState.CANCELLED,
            reason="cancelled",
            actor=Actor.SYSTEM,
            actor_name=f"replace policy (run {by_run})",
        )
    except InvalidTransition as exc:
        logger.info("replace: %s", exc)


def release_finished(moves: list[Move]) -> None:
    """Subscriber of lifecycle: a finished run that held its task's lock releases it."""
    for moved in moves:
        if moved.is_run and moved.finished and moved.subject.lock_token:
            release(moved.subject)


def release(run: Run) -> None:
    """The run ended: free its task's lock (if still its own) and send the next waiting run.

    A lock another run holds is left alone, and so is the queue: that run sends the next
    when it ends. (Under `replace`, the run that took over is still `created` when the run
    it replaced is cancelled; advancing the queue then would gate it a second time, and
    the second gate would cancel it.)
    """
    try:
        freed = redis_client.client().eval(_RELEASE, 1, _keys(run.task_id)[0], _value(run))
        if not freed and holder_of(run.task_id) is not None:
            return
    except redis_client.Error:
        logger.exception("could not release the lock of run %s; it expires by itself", run.pk)
        return  # beat's extend_active() sends the waiting runs once the lock is free
    advance_queue(run.task_id)


def advance_queue(task_id: int) -> None:
    waiting = (
        Run.objects.select_related("task").filter(task_id=task_id).waiting_for_slot().order_by("id").first()
    )
    if waiting is not None:
        gate([waiting])


def extend_active() -> int:
    """Keep the locks of active runs alive, and unblock queues whose holder vanished."""
    holders = list(
        Run.objects.filter(state__in=ACTIVE_STATES - {RunState.CREATED}).exclude(lock_token="")
        .values_list("pk", "task_id", "lock_token")
    )  # fmt: skip
    client = redis_client.client()
    with client.pipeline(transaction=False) as pipe:
        for pk, task_id, token in holders:
            pipe.eval(_EXTEND, 1, _keys(task_id)[0], f"{pk}:{token}", _ttl_ms())
        pipe.execute()
    # Runs left waiting (their holder ended without a release, or Redis was down).
    waiting_tasks = set(Run.objects.waiting_for_slot().gated().values_list("task_id", flat=True))
    for task_id in waiting_tasks:
        if holder_of(task_id) is None:
            advance_queue(task_id)
    return len(holders)
