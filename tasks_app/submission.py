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
IDEMPOTENCY_KEY_MAX = 255


class TaskDisabled(Exception):
    """A run of a disabled task was asked for (a 409)."""

    def __init__(self, task: Task, where: str = "") -> None:
        self.task = task
        super().__init__(f"{where}Task {task.name!r} is disabled.")


def ensure_enabled(task: Task, where: str = "") -> None:
    """A disabled task runs nothing: refuse its run before anything is recorded."""
    if not task.enabled:
        raise TaskDisabled(task, where)


class InvalidKey(ValueError):
    """An idempotency key the submission rules refuse (a 400)."""


def clean_idempotency_key(key: str | None) -> str | None:
    """A key as the client wrote it: one line of printable text, at most 255 characters,
    its surrounding blanks dropped; None for no key (a blank one included). The rule of
    POST /runs/ and of the admin's run forms alike."""
    if key is None:
        return None
    key = key.strip()
    if len(key) > IDEMPOTENCY_KEY_MAX:
        raise InvalidKey(f"At most {IDEMPOTENCY_KEY_MAX} characters.")
    if not key.isprintable():
        raise InvalidKey("Must not hold control characters.")
    return key or None


class IdempotencyConflict(Exception):
    """The idempotency key was used before for this task with a different request."""

    def __init__(self, run: Run, where: str = "") -> None:
        self.run = run
        key = run.idempotency_key
        super().__init__(f"{where}idempotency key {key!r} was used for run {run.pk} with a different request")


class RepeatedKey(ValueError):
    """Two requests of one submission give the same task and key with different bodies (a 400)."""

    def __init__(self, index: int, first: int) -> None:
        self.index = index
        super().__init__(f"gives the idempotency key of runs[{first}] with a different request")


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
    runs, created = submit_all([request], by=by)
    return runs[0], created


def submit_all(requests: list[RunRequest], *, by: str = "") -> tuple[list[Run], bool]:
    """Create runs for `requests`, all or none; returns them in order, and whether any is new.

    A request whose idempotency key was used before for its task gets that first run
    (IdempotencyConflict if it asked for something else); two requests of one call with
    the same task and key are one run (RepeatedKey if their bodies differ).
    """
    if not any(request.idempotency_key for request in requests):
        return submit_many(requests, by=by), True
    try:
        with transaction.atomic():
            return _submit_keyed(requests, by)
    except IntegrityError:
        # A concurrent request with one of these keys committed first, or a key the database's
        # collation holds equal to a stored one spelled otherwise (MariaDB: "K" = "k"): they
        # are repeats, found now by the database's own comparison.
        with transaction.atomic():
            return _submit_keyed(requests, by, as_the_database_compares=True)


def _submit_keyed(
    requests: list[RunRequest], by: str, *, as_the_database_compares: bool = False
) -> tuple[list[Run], bool]:
    where = (lambda index: f"runs[{index}]: ") if len(requests) > 1 else (lambda index: "")
    keys = {(request.task.pk, request.idempotency_key) for request in requests if request.idempotency_key}
    used: dict[tuple[int, str], Run] = {}
    for task_id in {task_id for task_id, _ in keys}:
        names = [key for t, key in keys if t == task_id]
        for run in Run.objects.filter(task_id=task_id, idempotency_key__in=names):
            used[(task_id, run.idempotency_key)] = run
    if as_the_database_compares:
        for task_id, key in keys - set(used):
            run = Run.objects.filter(task_id=task_id, idempotency_key=key).first()
            if run is not None:
                used[(task_id, key)] = run
    first_of: dict[tuple[int, str], int] = {}
    fresh: list[int] = []  # indexes of the requests that make a new run
    for index, request in enumerate(requests):
        key = (request.task.pk, request.idempotency_key)
        if not request.idempotency_key:
            fresh.append(index)
        elif key in used:
            if used[key].request_fingerprint != request.fingerprint():
                raise IdempotencyConflict(used[key], where(index))
        elif key in first_of:
            if requests[first_of[key]].fingerprint() != request.fingerprint():
                raise RepeatedKey(index, first_of[key])
        else:
            first_of[key] = index
            fresh.append(index)
    made = (
        dict(zip(fresh, submit_many([requests[index] for index in fresh], by=by), strict=True))
        if fresh
        else {}
    )
    for index in fresh:
        if requests[index].idempotency_key:
            used[(requests[index].task.pk, requests[index].idempotency_key)] = made[index]
    runs = [
        made[index] if index in made else used[(request.task.pk, request.idempotency_key)]
        for index, request in enumerate(requests)
    ]
    return runs, bool(fresh)


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
