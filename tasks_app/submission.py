"""Submitting runs: one or many, with idempotency keys; a disabled task runs nothing.

A submitted run due now is born `pending` and its message is published after the commit;
one with a later `run_at` is born `created` and waits for scheduling.send_due_runs(); one
of a task with a concurrency policy is born `created` and goes through concurrency.gate()
after the commit.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from tasks_app import broker, concurrency, lifecycle
from tasks_app.choices import Actor, ConcurrencyPolicy, RunState, RunTrigger
from tasks_app.models import Run, Schedule, Task

S = RunState


class TaskDisabled(Exception):
    """A run of a disabled task was asked for (a 409)."""

    def __init__(self, task: Task, where: str = "") -> None:
        self.task = task
        super().__init__(f"{where}Task {task.name!r} is disabled.")


def ensure_enabled(task: Task, where: str = "") -> None:
    """A disabled task runs nothing: refuse its run before anything is recorded."""
    if not task.enabled:
        raise TaskDisabled(task, where)


class IdempotencyConflict(Exception):
    """The idempotency key was used before for this task with a different request."""

    def __init__(self, run: Run) -> None:
        self.run = run
        super().__init__(
            f"idempotency key {run.idempotency_key!r} was used for run {run.pk} with a different request"
        )


@dataclass
class RunRequest:
    """What a submission asks for; None means the task's default."""

    task: Task
    args: list[Any] | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    priority: int | None = None
    run_at: dt.datetime | None = None
    idempotency_key: str | None = None
    trigger: str = RunTrigger.API
    schedule: Schedule | None = None
    scheduled_for: dt.datetime | None = None
    reason: str = "submitted"  # the first event's

    def fingerprint(self) -> str:
        body = {
            "args": self.args,
            "kwargs": self.kwargs,
            "priority": self.priority,
            "run_at": self.run_at.isoformat() if self.run_at else None,
        }
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def submit(request: RunRequest, *, by: str = "") -> tuple[Run, bool]:
    """Create one run; returns (run, created). An idempotency key seen before for the
    task returns the first run, or raises IdempotencyConflict if the request differs."""
    key = request.idempotency_key
    if key:
        existing = Run.objects.filter(task=request.task, idempotency_key=key).first()
        if existing is not None:
            return _same_request(existing, request), False
        try:
            with transaction.atomic():
                return submit_many([request], by=by)[0], True
        except IntegrityError:
            # Another request with the same key committed first.
            existing = Run.objects.get(task=request.task, idempotency_key=key)
            return _same_request(existing, request), False
    return submit_many([request], by=by)[0], True


def _same_request(existing: Run, request: RunRequest) -> Run:
    if existing.request_fingerprint != request.fingerprint():
        raise IdempotencyConflict(existing)
    return existing


def submit_many(requests: list[RunRequest], *, by: str = "", now: dt.datetime | None = None) -> list[Run]:
    """Create runs in one INSERT; those due now are published after it commits. Raises
    TaskDisabled, creating none, if a request names a disabled task."""
    for index, request in enumerate(requests):
        ensure_enabled(request.task, where=f"runs[{index}]: " if len(requests) > 1 else "")
    now = now or timezone.now()
    actor = Actor.SCHEDULE if requests and requests[0].trigger == RunTrigger.SCHEDULE else Actor.USER
    born = []
    for request in requests:
        task = request.task
        later = request.run_at is not None and request.run_at > now
        # A task with a concurrency policy: its runs wait in created for the gate.
        held = later or task.concurrency_policy != ConcurrencyPolicy.ALLOW
        run = Run(
            task=task,
            trigger=request.trigger,
            args=list(task.args) if request.args is None else request.args,
            kwargs={**task.kwargs, **request.kwargs},
            priority=task.priority if request.priority is None else request.priority,
            idempotency_key=request.idempotency_key or None,
            request_fingerprint=request.fingerprint() if request.idempotency_key else "",
            schedule=request.schedule,
            scheduled_for=request.scheduled_for,
            due_at=request.run_at if later else None,
            created_at=now,
        )
        born.append((run, S.CREATED if held else S.PENDING, request.reason))
    runs = lifecycle.insert_runs(born, at=now, actor=actor, actor_name=by)
    due = [run for run in runs if run.state == S.PENDING]
    gated = [run for run in runs if run.state == S.CREATED and run.due_at is None]
    transaction.on_commit(lambda: broker.publish(due))
    if gated:
        transaction.on_commit(lambda: concurrency.gate(gated))
    return runs
