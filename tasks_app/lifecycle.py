"""Run states and the legal moves between them: the one place that defines them.

Only `Run.move()` (models/runs.py) changes a run's state, and it checks every move
against `TRANSITIONS`.
"""

from __future__ import annotations

from django.db import models


class RunState(models.TextChoices):
    CREATED = "created", "recorded, not yet sent to the broker"
    PENDING = "pending", "sent to the broker, waiting for a worker"
    RUNNING = "running", "a worker is executing it"
    COMPLETED = "completed", "finished successfully"
    FAILED = "failed", "finished with an error and no retries left"
    RETRYING = "retrying", "an attempt failed; the next waits out its backoff"
    PAUSED = "paused", "held by an operator; never dispatched while paused"
    CANCELLED = "cancelled", "stopped by an operator"
    SKIPPED = "skipped", "not run: a trigger rule or concurrency policy said no"


S = RunState

TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    S.CREATED: frozenset({S.PENDING, S.PAUSED, S.CANCELLED, S.SKIPPED}),
    S.PENDING: frozenset({S.RUNNING, S.PAUSED, S.CANCELLED, S.FAILED}),
    # running -> paused only where the handler takes checkpoints (Run.pause checks).
    S.RUNNING: frozenset({S.COMPLETED, S.FAILED, S.RETRYING, S.CANCELLED, S.PAUSED}),
    S.RETRYING: frozenset({S.PENDING, S.PAUSED, S.CANCELLED}),
    S.PAUSED: frozenset({S.PENDING, S.CANCELLED}),
    S.FAILED: frozenset({S.PENDING}),
    S.CANCELLED: frozenset({S.PENDING}),
    S.COMPLETED: frozenset(),
    S.SKIPPED: frozenset(),
}

TERMINAL_STATES = frozenset({S.COMPLETED, S.FAILED, S.CANCELLED, S.SKIPPED})
ACTIVE_STATES = frozenset(RunState) - TERMINAL_STATES


def sources_of(target: RunState) -> frozenset[RunState]:
    """The states from which `target` can be reached."""
    return frozenset(state for state, targets in TRANSITIONS.items() if target in targets)


def is_legal(source: RunState | str, target: RunState | str) -> bool:
    return RunState(target) in TRANSITIONS[RunState(source)]


class Trigger(models.TextChoices):
    API = "api", "submitted over the API"
    SCHEDULE = "schedule", "fired by a schedule"
    MANUAL = "manual", "started by an operator"
    WORKFLOW = "workflow", "a step of a workflow run"


class Actor(models.TextChoices):
    USER = "user"
    SCHEDULE = "schedule"
    WORKER = "worker"
    SYSTEM = "system"


class InvalidTransition(Exception):
    """A move the state table does not allow from the run's current state."""

    def __init__(self, run_id: int, current: str, target: str, detail: str = "") -> None:
        self.run_id = run_id
        self.current = current
        self.target = target
        message = f"run {run_id} is {current}: it cannot move to {target}"
        super().__init__(f"{message} ({detail})" if detail else message)
