"""An operator's controls of a run, for the API and the admin alike: cancel, pause,
resume, retry. Each is a move of tasks_app.lifecycle, refused (InvalidTransition, a 409)
where the state table does not allow it.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction

from tasks_app import broker, concurrency, handlers, lifecycle
from tasks_app.choices import Actor, ConcurrencyPolicy, RunState
from tasks_app.lifecycle import InvalidTransition, sources_of
from tasks_app.models import Run

S = RunState

# What a retry by hand (and a workflow's retry of a step) starts afresh: a new go at the run.
RETRY_RESETS = {"retries": 0, "result": None, "refusals": 0, "started_at": None}


def cancel(run: Run, *, by: str = "", actor: str = Actor.USER) -> None:
    """Stop the run; one whose message is out is revoked (broker.revoke_cancelled)."""
    lifecycle.move(run, S.CANCELLED, actor=actor, actor_name=by, reason="cancelled")


def pause(run: Run, *, by: str = "", actor: str = Actor.USER) -> None:
    allowed = sources_of(S.PAUSED)
    handler = handlers.find(run.task.handler)
    if handler is None or not handler.pausable:
        allowed -= {S.RUNNING}
        if run.state == S.RUNNING:
            raise InvalidTransition(run.pk, run.state, S.PAUSED, "its handler takes no checkpoint")
    lifecycle.move(run, S.PAUSED, only_from=allowed, actor=actor, actor_name=by, reason="paused")


def resume(run: Run, *, by: str = "", actor: str = Actor.USER) -> None:
    _send_again(run, S.PAUSED, by=by, actor=actor, reason="resumed")


def retry(run: Run, *, by: str = "", actor: str = Actor.USER) -> None:
    """A manual retry: a new attempt of a failed or cancelled run, with a fresh retry budget."""
    _send_again(run, S.FAILED, S.CANCELLED, by=by, actor=actor, reason="retried by operator", **RETRY_RESETS)


def _send_again(run: Run, *sources: RunState, by: str, actor: str, reason: str, **changes: Any) -> None:
    if run.state not in sources:  # refused before the task's lock is touched
        raise InvalidTransition(run.pk, run.state, S.PENDING)
    # A run of a gated task holds no lock once finished, nor while paused from `created`:
    # sent again, it takes the lock as a new run would (workflow steps are never gated).
    gated = run.task.concurrency_policy != ConcurrencyPolicy.ALLOW and not run.workflow_run_id
    lock = (
        concurrency.lock_for_resend(run) if gated and not (run.state == S.PAUSED and run.lock_token) else {}
    )
    try:
        lifecycle.move(
            run,
            S.PENDING,
            only_from=frozenset(sources),
            actor=actor,
            actor_name=by,
            reason=reason,
            new_message=True,
            due_at=None,
            **changes,
            **lock,
        )
    except InvalidTransition:
        if lock:
            concurrency.release(run)
        raise
    transaction.on_commit(lambda: broker.publish([run]))
