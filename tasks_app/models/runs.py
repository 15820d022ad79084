from __future__ import annotations

import datetime as dt
from typing import Any

from django.db import connection, models, transaction
from django.db.models import Q
from django.utils import timezone

from tasks_app import concurrency, dispatch, handlers, workflows
from tasks_app.lifecycle import (
    TERMINAL_STATES,
    Actor,
    InvalidTransition,
    RunState,
    Trigger,
    sources_of,
)
from tasks_app.models.tasks import ConcurrencyPolicy
from tasks_app.querysets import RunQuerySet

S = RunState


def move_fields(target: RunState, *, at: dt.datetime, reason: str, actor: str, actor_name: str = "") -> dict:
    """The columns every move to `target` sets; the event trigger reads the state_* ones."""
    return {
        "state": target,
        "finished_at": at if target in TERMINAL_STATES else None,
        "state_changed_at": at,
        "state_reason": reason[:500],
        "state_actor": actor,
        "state_actor_name": actor_name[:150],
    }


def _conditional_update(conditions: dict[str, Any], values: dict[str, Any], increment: str = "") -> int:
    """UPDATE one run SET `values` (and `increment` + 1) WHERE `conditions`; the row count.

    Every move runs this, and a worker makes two per run: SQL written straight from the
    fields' own conversions costs a fraction of compiling a QuerySet.update() each time
    (bench/e2e.py), while values go through the same Field.get_db_prep_save().
    """
    meta, quote = Run._meta, connection.ops.quote_name
    assignments, params = [], []
    for name, value in values.items():
        field = meta.get_field(name)
        assignments.append(f"{quote(field.column)} = %s")
        params.append(field.get_db_prep_save(value, connection))
    if increment:
        column = quote(meta.get_field(increment).column)
        assignments.append(f"{column} = {column} + 1")
    tests = []
    for name, value in conditions.items():
        field = meta.get_field(name)
        tests.append(f"{quote(field.column)} = %s")
        params.append(field.get_db_prep_value(value, connection))
    sql = f"UPDATE {quote(meta.db_table)} SET {', '.join(assignments)} WHERE {' AND '.join(tests)}"
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


class Run(models.Model):
    """One execution of a task, from submission to a terminal state.

    `state` changes only through `move()` and the methods built on it: a conditional
    UPDATE on the state the caller last saw, whose RunEvent a trigger writes in the
    same statement.
    """

    task = models.ForeignKey("tasks_app.Task", on_delete=models.CASCADE, related_name="runs")
    state = models.CharField(max_length=10, choices=RunState.choices, default=S.CREATED)
    trigger = models.CharField(max_length=10, choices=Trigger.choices, default=Trigger.API)
    args = models.JSONField(default=list, blank=True)
    kwargs = models.JSONField(default=dict, blank=True)
    priority = models.PositiveSmallIntegerField(default=0)
    # Attempts started so far (each claim by a worker), and automatic retries used.
    attempt = models.PositiveIntegerField(default=0)
    retries = models.PositiveIntegerField(default=0)
    # Messages sent so far; message N has the Celery id "<run id>.<N>" and only the
    # latest may claim the run, so a stale or duplicated message never runs it.
    dispatches = models.PositiveIntegerField(default=0)
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
    # The latest move (for a new run, its submission). The triggers of migration 0002
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
            models.UniqueConstraint(
                fields=["task", "idempotency_key"], name="run_unique_idempotency_key_per_task"
            ),
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
        indexes = [
            # RunQuerySet.dispatch_due(): created, retrying or unsent pending runs now due.
            models.Index(fields=["state", "due_at"], name="run_state_due"),
            # workflows.latest_runs(): a workflow run's steps.
            models.Index(fields=["workflow_run", "step"], name="run_workflow_step"),
            # GET /runs/?created_after=...: newest-first lists bounded by date.
            models.Index(fields=["created_at"], name="run_created_at"),
        ]

    def __str__(self) -> str:
        return f"run {self.pk} of {self.task_id} ({self.state})"

    @property
    def message_id(self) -> str:
        return f"{self.pk}.{self.dispatches}"

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

    # --- the one way state changes ----------------------------------------------------

    def move(
        self,
        target: RunState,
        *,
        reason: str = "",
        actor: str = Actor.SYSTEM,
        actor_name: str = "",
        only_from: frozenset[RunState] | None = None,
        where: dict[str, Any] | None = None,
        new_message: bool = False,
        at: dt.datetime | None = None,
        **changes: Any,
    ) -> RunState:
        """Move to `target` if the state table allows it from the current state.

        Compare-and-set on the state this instance last saw (one UPDATE; the trigger
        records the event); if another process moved the run meanwhile, re-read and try
        again from there. `where` adds conditions that must hold too (the claim's message
        number); `new_message` gives the run its next message number; `at` is the time of
        the move (now). Returns the state moved from; raises InvalidTransition.
        """
        allowed = sources_of(target) if only_from is None else sources_of(target) & only_from
        fields = {
            **changes,
            **move_fields(target, at=at or timezone.now(), reason=reason, actor=actor, actor_name=actor_name),
        }
        current = self.state
        for _attempt in range(5):
            if current not in allowed:
                raise InvalidTransition(self.pk, current, target)
            conditions = {"id": self.pk, "state": current, **(where or {})}
            if not new_message:
                if _conditional_update(conditions, fields):
                    break
            else:
                with transaction.atomic():
                    if _conditional_update(conditions, fields, increment="dispatches"):
                        # Read back while the UPDATE still holds the row lock: ours.
                        fields["dispatches"] = Run.objects.values_list("dispatches", flat=True).get(
                            pk=self.pk
                        )
                        break
            seen = current
            current = Run.objects.filter(pk=self.pk).values_list("state", flat=True).first()
            if current is None:
                raise Run.DoesNotExist(f"run {self.pk} no longer exists")
            if current == seen:  # the state held, so an extra condition did not
                raise InvalidTransition(self.pk, current, target, "superseded")
        else:
            raise InvalidTransition(self.pk, current, target, "the run keeps changing")
        for field, value in fields.items():
            setattr(self, field, value)
        if target in TERMINAL_STATES and self.lock_token:
            transaction.on_commit(lambda: concurrency.release(self))
        if target in TERMINAL_STATES and self.workflow_run_id and not getattr(self, "advancing", False):
            workflow_run_id = self.workflow_run_id
            transaction.on_commit(lambda: workflows.advance(workflow_run_id))
        return RunState(current)

    # --- operator controls (API, admin) -----------------------------------------------

    def cancel(self, *, by: str = "", actor: str = Actor.USER) -> None:
        source = self.move(S.CANCELLED, actor=actor, actor_name=by, reason="cancelled")
        if source in (S.PENDING, S.RUNNING):
            message_id = self.message_id
            terminate = source == S.RUNNING
            transaction.on_commit(lambda: dispatch.revoke(message_id, terminate=terminate))

    def pause(self, *, by: str = "", actor: str = Actor.USER) -> None:
        allowed = sources_of(S.PAUSED)
        handler = handlers.find(self.task.handler)
        if handler is None or not handler.pausable:
            allowed -= {S.RUNNING}
            if self.state == S.RUNNING:
                raise InvalidTransition(self.pk, self.state, S.PAUSED, "its handler takes no checkpoint")
        self.move(S.PAUSED, only_from=allowed, actor=actor, actor_name=by, reason="paused")

    def resume(self, *, by: str = "", actor: str = Actor.USER) -> None:
        self._send_again(S.PAUSED, by=by, actor=actor, reason="resumed")

    def retry(self, *, by: str = "", actor: str = Actor.USER) -> None:
        """A manual retry: a new attempt of a failed or cancelled run, with a fresh retry budget."""
        self._send_again(
            S.FAILED,
            S.CANCELLED,
            by=by,
            actor=actor,
            reason="retried by operator",
            retries=0,
            result=None,
        )

    def _send_again(self, *sources: RunState, by: str, actor: str, reason: str, **changes: Any) -> None:
        if self.state not in sources:  # refused before the task's lock is touched
            raise InvalidTransition(self.pk, self.state, S.PENDING)
        # A run of a gated task holds no lock once finished, nor while paused from `created`:
        # sent again, it takes the lock as a new run would (workflow steps are never gated).
        gated = self.task.concurrency_policy != ConcurrencyPolicy.ALLOW and not self.workflow_run_id
        lock = (
            concurrency.lock_for_resend(self)
            if gated and not (self.state == S.PAUSED and self.lock_token)
            else {}
        )
        try:
            self.move(
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
                concurrency.release(self)
            raise
        transaction.on_commit(lambda: dispatch.publish([self]))

    # --- worker side ------------------------------------------------------------------

    def claim(self, dispatch: int, hostname: str) -> None:
        """Take the run for execution with message number `dispatch` (pending -> running)."""
        now = timezone.now()
        self.move(
            S.RUNNING,
            only_from=frozenset({S.PENDING}),
            where={"dispatches": dispatch},
            actor=Actor.WORKER,
            actor_name=hostname,
            reason=f"attempt {self.attempt + 1} started",
            attempt=self.attempt + 1,
            worker=hostname,
            at=now,
            started_at=now,
            progress=None,
            error=None,
            due_at=None,  # a resend may have been due; this message won the claim
        )

    def complete(self, result: Any, hostname: str) -> None:
        self.move(
            S.COMPLETED,
            where={"dispatches": self.dispatches},
            actor=Actor.WORKER,
            actor_name=hostname,
            result=result,
        )

    def fail(self, error: dict[str, Any], *, reason: str, hostname: str = "") -> None:
        self.move(
            S.FAILED,
            only_from=frozenset({S.RUNNING, S.PENDING}),
            where={"dispatches": self.dispatches},
            actor=Actor.WORKER if hostname else Actor.SYSTEM,
            actor_name=hostname,
            reason=reason,
            error=error,
        )

    def fail_or_retry(self, error: dict[str, Any], *, hostname: str, reason: str = "") -> None:
        """After a failed attempt: retry after the task's backoff while retries remain."""
        task = self.task
        why = reason or error["type"]
        if self.retries >= task.max_retries:
            attempts = f"{self.attempt} attempt{'s' if self.attempt != 1 else ''}"
            self.fail(error, reason=f"{why} after {attempts}" if not reason else reason, hostname=hostname)
            return
        delay = task.retry_delay(self.retries)
        now = timezone.now()
        self.move(
            S.RETRYING,
            where={"dispatches": self.dispatches},
            actor=Actor.WORKER if hostname else Actor.SYSTEM,
            actor_name=hostname,
            reason=f"{why}; retry {self.retries + 1} of {task.max_retries} in {delay:.3f}s",
            error=error,
            retries=self.retries + 1,
            at=now,
            due_at=now + dt.timedelta(seconds=delay),
        )

    def save_progress(self, fraction: float, message: str) -> bool:
        """Record progress while this attempt still runs; False once it no longer does."""
        return bool(
            Run.objects.filter(pk=self.pk, state=S.RUNNING, dispatches=self.dispatches).update(
                progress={"fraction": fraction, "message": message}
            )
        )

    def save_checkpoint(self, state: Any) -> RunState | None:
        """Keep `state` for a later attempt; return the run's state if it stopped running.

        A checkpoint is still kept when the run was paused meanwhile: that is what the
        resumed attempt continues from.
        """
        mine = Run.objects.filter(pk=self.pk, dispatches=self.dispatches)
        if mine.filter(state=S.RUNNING).update(checkpoint=state):
            return None
        if mine.filter(state=S.PAUSED).update(checkpoint=state):
            return S.PAUSED
        return RunState(Run.objects.values_list("state", flat=True).get(pk=self.pk))


class RunEvent(models.Model):
    """One state change of a run: the run's history."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="events")
    from_state = models.CharField(max_length=10, choices=RunState.choices, blank=True)
    to_state = models.CharField(max_length=10, choices=RunState.choices)
    at = models.DateTimeField(default=timezone.now)
    reason = models.CharField(max_length=500, blank=True)
    actor = models.CharField(max_length=10, choices=Actor.choices, default=Actor.SYSTEM)
    actor_name = models.CharField(max_length=150, blank=True)

    class Meta:
        ordering = ["at", "id"]

    def __str__(self) -> str:
        return f"{self.from_state or '-'} -> {self.to_state}"


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
