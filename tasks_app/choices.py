"""The platform's vocabulary: the states a run and a workflow run can be in, and the other
choices the code branches on. Data only; the legal moves between states, and the code
that makes them, are in lifecycle.py.
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


TERMINAL_STATES = frozenset({RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED, RunState.SKIPPED})
ACTIVE_STATES = frozenset(RunState) - TERMINAL_STATES


class WorkflowState(models.TextChoices):
    RUNNING = "running", "steps are running or waiting"
    COMPLETED = "completed", "every step completed or was skipped, none failed"
    FAILED = "failed", "every step finished and one failed"
    CANCELLED = "cancelled", "cancelled by an operator"


WORKFLOW_TERMINAL_STATES = frozenset({WorkflowState.COMPLETED, WorkflowState.FAILED, WorkflowState.CANCELLED})


class RunTrigger(models.TextChoices):
    """What made a run (the run's `trigger` field)."""

    API = "api", "submitted over the API"
    SCHEDULE = "schedule", "fired by a schedule"
    MANUAL = "manual", "started by an operator"
    WORKFLOW = "workflow", "a step of a workflow run"


class Actor(models.TextChoices):
    """Who made a move."""

    USER = "user"
    SCHEDULE = "schedule"
    WORKER = "worker"
    SYSTEM = "system"


class ConcurrencyPolicy(models.TextChoices):
    ALLOW = "allow", "runs may overlap"
    FORBID = "forbid", "a new run while one is active is skipped"
    REPLACE = "replace", "the active run is cancelled, the new one starts"
    QUEUE = "queue", "the new run waits until the active one ends"


class MisfirePolicy(models.TextChoices):
    SKIP = "skip", "fire nothing for instants missed while no scheduler ran"
    RUN_ONCE = "run_once", "fire one run now for all the missed instants"
    CATCH_UP = "catch_up", "fire each missed instant (up to SCHEDULE_CATCH_UP_MAX)"


class TriggerRule(models.TextChoices):
    """When a workflow step runs, given its upstream steps' states."""

    ALL_SUCCESS = "all_success", "every upstream step completed"
    ALL_DONE = "all_done", "every upstream step finished, however"
    ONE_SUCCESS = "one_success", "at least one upstream step completed"


class AlertCondition(models.TextChoices):
    """What an alert rule watches (tasks_app.alerts evaluates each)."""

    FAILURE = "failure", "runs of the scope end failed or cancelled, `consecutive` in a row"
    LATE = "late", "an instant of a schedule has no run started grace_seconds after it"
    OVERRUN = "overrun", "a run is still running max_seconds after it started"
    WORKER_OFFLINE = "worker_offline", "a worker missed its heartbeats"
    WORKFLOW_FAILURE = "workflow_failure", "a workflow run ended failed"


class AlertState(models.TextChoices):
    OPEN = "open", "the condition holds"
    RESOLVED = "resolved", "the condition ended"


class AlertEventKind(models.TextChoices):
    """A change of an alert, and what a notification announces."""

    OPENED = "opened", "the condition started"
    RESOLVED = "resolved", "the condition ended"
    REMINDER = "reminder", "the condition still holds (the rule's reminder_seconds passed)"
    TEST = "test", "a test of the channel, asked for by a user"


class ChannelKind(models.TextChoices):
    WEBHOOK = "webhook", "a JSON POST, signed with the channel's secret"
    SLACK = "slack", "a Slack incoming-webhook message"
    EMAIL = "email", "an e-mail through Django's e-mail settings"


class NotificationState(models.TextChoices):
    PENDING = "pending", "waiting to be delivered, or to be tried again"
    SENT = "sent", "the channel accepted it"
    FAILED = "failed", "not delivered: a permanent error, or too old to send"


# The reason of the event a run inserted as due now gets for its move to pending (the
# database trigger writes it: db_triggers.py).
SENT_AT_SUBMISSION = "sent to the broker"
# The reason recorded for a state written without lifecycle's columns (plain SQL).
MOVED_OUTSIDE_LIFECYCLE = "state written directly, not by a move"
