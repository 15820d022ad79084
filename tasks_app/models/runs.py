from __future__ import annotations

import datetime as dt

from django.db import models
from django.db.models import Q
from django.utils import timezone

from tasks_app.choices import TERMINAL_STATES, Actor, RunState, RunTrigger
from tasks_app.models.events import Event
from tasks_app.querysets import RunQuerySet

S = RunState


class Run(models.Model):
    """One execution of a task, from submission to a terminal state.

    `state` changes only through tasks_app.lifecycle: a conditional UPDATE on the state
    the caller last saw, whose RunEvent a database trigger writes in the same statement.
    """

    task = models.ForeignKey("tasks_app.Task", on_delete=models.CASCADE, related_name="runs")
    state = models.CharField(max_length=10, choices=RunState.choices, default=S.CREATED)
    trigger = models.CharField(max_length=10, choices=RunTrigger.choices, default=RunTrigger.API)
    args = models.JSONField(default=list, blank=True)
    kwargs = models.JSONField(default=dict, blank=True)
    priority = models.PositiveSmallIntegerField(default=0)
    # Attempts started so far (each claim by a worker), and automatic retries used.
    attempt = models.PositiveIntegerField(default=0)
    retries = models.PositiveIntegerField(default=0)
    # The number of the run's latest message (0 before any was sent): message N has the
    # Celery id "<run id>.<N>" and only the latest may claim the run, so a stale or
    # duplicated message never runs it.
    message_number = models.PositiveIntegerField(default=0, db_column="dispatches")  # its old name
    # NULL, not "", for runs without a key: the unique constraint ignores NULLs.
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001
    request_fingerprint = models.CharField(max_length=64, blank=True)
    schedule = models.ForeignKey(
        "tasks_app.Schedule", on_delete=models.SET_NULL, null=True, blank=True, related_name="runs"
    )
    # The instant a schedule meant this run for; lateness is created_at - scheduled_for.
    scheduled_for = models.DateTimeField(null=True, blank=True)
    workflow_run = models.ForeignKey(
        "tasks_app.WorkflowRun", on_delete=models.CASCADE, null=True, blank=True, related_name="step_runs"
    )
    step = models.CharField(max_length=200, blank=True)
    # When a created or retrying run is next due to be sent (run_at, or backoff end).
    due_at = models.DateTimeField(null=True, blank=True)
    worker = models.CharField(max_length=255, blank=True)
    # Deliveries refused by workers that lack the run's handler since it was submitted or
    # last retried by hand; RUN_MAX_DELIVERIES of them fail it (execution.refuse_delivery).
    refusals = models.PositiveIntegerField(default=0)
    # Concurrency policy (concurrency.py): the lock's holder token and its fencing token.
    lock_token = models.CharField(max_length=64, blank=True)
    fence = models.PositiveBigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    result = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    progress = models.JSONField(null=True, blank=True)
    checkpoint = models.JSONField(null=True, blank=True)
    # The latest move (for a new run, its submission). The database triggers (db_triggers.py)
    # copy these into a RunEvent whenever a statement inserts a run or changes its
    # state: no code path, bulk update() included, can change a state without its event.
    state_changed_at = models.DateTimeField(default=timezone.now)
    state_reason = models.CharField(max_length=500, blank=True)
    state_actor = models.CharField(max_length=10, choices=Actor.choices, default=Actor.SYSTEM)
    state_actor_name = models.CharField(max_length=150, blank=True)

    objects = RunQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]
        constraints = [
            # The key first: it also finds a run by its key alone (the admin's search); the
            # task's own lookups have run_task.
            models.UniqueConstraint(fields=["idempotency_key", "task"], name="run_unique_idempotency_key"),
            # Exactly once: however many schedulers run, one run per schedule and instant.
            models.UniqueConstraint(
                fields=["schedule", "scheduled_for"], name="run_one_per_schedule_instant"
            ),
            models.CheckConstraint(condition=Q(state__in=RunState.values), name="run_state_valid"),
            models.CheckConstraint(
                condition=(
                    Q(state__in=sorted(TERMINAL_STATES), finished_at__isnull=False)
                    | (~Q(state__in=sorted(TERMINAL_STATES)) & Q(finished_at__isnull=True))
                ),
                name="run_finished_at_only_when_terminal",
            ),
        ]
        # The lists are newest first (ORDER BY id DESC): an index ending in id walks a
        # filter's runs in that order and stops after a page, where another one sorts every
        # run the filter matches (bench/history.py: 10,000,000 runs; tests/test_query_plans.py).
        indexes = [
            # scheduling.send_due_runs(): created, retrying or unsent pending runs now due.
            models.Index(fields=["state", "due_at"], name="run_state_due"),
            # GET /runs/?state= (RunFilter) and the admin's state filter: a state's runs, newest first.
            models.Index(fields=["state", "id"], name="run_state"),
            # GET /runs/?task= (RunFilter), the admin's task filter and search: a task's runs,
            # newest first. Also the task foreign key's index.
            models.Index(fields=["task", "id"], name="run_task"),
            # GET /runs/?schedule= (RunFilter): a schedule's runs, newest first.
            models.Index(fields=["schedule", "id"], name="run_schedule"),
            # workflows.latest_runs() and GET /runs/?workflow_run= (RunFilter): a workflow run's steps.
            models.Index(fields=["workflow_run", "step"], name="run_workflow_step"),
            # RunQuerySet.created_since()/created_before(): the id bounds of a date range
            # (GET /runs/?created_after=&created_before=); the admin's date filter.
            models.Index(fields=["created_at"], name="run_created_at"),
            # rollups.refresh(): the runs that finished in a bucket; retention.prune().
            models.Index(fields=["finished_at"], name="run_finished_at"),
        ]

    def __str__(self) -> str:
        return f"run {self.pk} of {self.task.name} ({self.state})"

    @property
    def message_id(self) -> str:
        return f"{self.pk}.{self.message_number}"

    @property
    def lateness(self) -> dt.timedelta | None:
        """How late a scheduled run was fired: created_at - scheduled_for."""
        if self.scheduled_for is None:
            return None
        return self.created_at - self.scheduled_for

    @property
    def duration(self) -> dt.timedelta | None:
        if self.started_at and self.finished_at:
            return self.finished_at - self.started_at
        return None


class RunEvent(Event):
    """One state change of a run: the run's history."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="events")
    from_state = models.CharField(max_length=10, choices=RunState.choices, blank=True)
    to_state = models.CharField(max_length=10, choices=RunState.choices)


class RunLog(models.Model):
    """A line a handler logged through its context's logger."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="logs")
    at = models.DateTimeField(default=timezone.now)
    level = models.CharField(max_length=10)
    message = models.TextField()

    class Meta:
        ordering = ["at", "id"]

    def __str__(self) -> str:
        return f"{self.level}: {self.message[:80]}"
