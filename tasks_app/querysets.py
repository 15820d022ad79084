from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.apps import apps
from django.conf import settings
from django.db import DatabaseError, IntegrityError, connections, models, transaction
from django.db.models import F
from django.utils import timezone

from tasks_app import concurrency, dispatch, timing, workflows
from tasks_app.lifecycle import ACTIVE_STATES, Actor, RunState, Trigger
from tasks_app.models.tasks import ConcurrencyPolicy

if TYPE_CHECKING:
    from tasks_app.models import Run, Schedule, Task

S = RunState
logger = logging.getLogger(__name__)


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
    trigger: str = Trigger.API
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


class _RunWithTaskLoader:
    def __init__(self, run_model: type[Run], connection: Any) -> None:
        task_model = run_model._meta.get_field("task").related_model
        quote = connection.ops.quote_name
        self.connection = connection
        self.parts = []
        columns = []
        for model, alias in ((run_model, "r"), (task_model, "t")):
            fields = model._meta.concrete_fields
            converters = [
                connection.ops.get_db_converters(field.get_col(model._meta.db_table))
                + field.get_db_converters(connection)
                for field in fields
            ]
            self.parts.append(
                (model, [f.attname for f in fields], list(zip(fields, converters, strict=True)))
            )
            columns += [f"{alias}.{quote(f.column)}" for f in fields]
        self.sql = (
            f"SELECT {', '.join(columns)} FROM {quote(run_model._meta.db_table)} r "
            f"JOIN {quote(task_model._meta.db_table)} t ON t.id = r.task_id WHERE r.id = %s"
        )

    def get(self, pk: int) -> Run:
        with self.connection.cursor() as cursor:
            cursor.execute(self.sql, [pk])
            row = cursor.fetchone()
        if row is None:
            raise self.parts[0][0].DoesNotExist(f"run {pk} does not exist")
        instances, start = [], 0
        for model, attnames, converters in self.parts:
            values = []
            for (model_field, field_converters), value in zip(converters, row[start:], strict=False):
                for convert in field_converters:
                    value = convert(value, model_field, self.connection)
                values.append(value)
            instances.append(model.from_db(self.connection.alias, attnames, values))
            start += len(attnames)
        run, task = instances
        run.task = task
        return run


_loaders: dict[str, _RunWithTaskLoader] = {}


class RunQuerySet(models.QuerySet):
    def active(self) -> RunQuerySet:
        return self.filter(state__in=ACTIVE_STATES)

    def get_with_task(self, pk: int) -> Run:
        """select_related("task").get(pk=pk) for the worker's hot path, without compiling
        the query each time (a third of a no-op run's CPU, bench/e2e.py). Values pass
        through the same converters the ORM applies."""
        connection = connections[self.db]
        loader = _loaders.get(connection.alias)
        if loader is None:
            loader = _loaders[connection.alias] = _RunWithTaskLoader(self.model, connection)
        return loader.get(pk)

    def submit(self, request: RunRequest, *, by: str = "") -> tuple[Run, bool]:
        """Create one run; returns (run, created). An idempotency key seen before for the
        task returns the first run, or raises IdempotencyConflict if the request differs."""
        key = request.idempotency_key
        if key:
            existing = self.filter(task=request.task, idempotency_key=key).first()
            if existing is not None:
                return self._same_request(existing, request), False
            try:
                with transaction.atomic():
                    return self.submit_many([request], by=by)[0], True
            except IntegrityError:
                # Another request with the same key committed first.
                existing = self.get(task=request.task, idempotency_key=key)
                return self._same_request(existing, request), False
        return self.submit_many([request], by=by)[0], True

    @staticmethod
    def _same_request(existing: Run, request: RunRequest) -> Run:
        if existing.request_fingerprint != request.fingerprint():
            raise IdempotencyConflict(existing)
        return existing

    def submit_many(
        self, requests: list[RunRequest], *, by: str = "", now: dt.datetime | None = None
    ) -> list[Run]:
        """Create runs in one INSERT; those due now are published after it commits.

        The insert trigger (migration 0002) records each run's "submitted" event and,
        for a run due now, its move to pending in the same statement. A run with a
        later run_at stays created until `dispatch_due()` sends it; one of a task with
        a concurrency policy goes through `concurrency.gate()` after the commit.
        """
        from tasks_app.models.runs import move_fields

        Run = self.model
        now = now or timezone.now()
        actor = Actor.SCHEDULE if requests and requests[0].trigger == Trigger.SCHEDULE else Actor.USER
        runs = []
        for request in requests:
            task = request.task
            later = request.run_at is not None and request.run_at > now
            # A task with a concurrency policy: its runs wait in created for the gate.
            held = later or task.concurrency_policy != ConcurrencyPolicy.ALLOW
            runs.append(
                Run(
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
                    dispatches=0 if held else 1,
                    created_at=now,
                    **move_fields(
                        S.CREATED if held else S.PENDING,
                        at=now,
                        reason=request.reason,
                        actor=actor,
                        actor_name=by,
                    ),
                )
            )
        if len(runs) == 1:
            runs[0].save(force_insert=True)  # one statement: no transaction to open
        else:
            Run.objects.bulk_create(runs)
        due = [run for run in runs if run.state == S.PENDING]
        gated = [run for run in runs if run.state == S.CREATED and run.due_at is None]
        transaction.on_commit(lambda: dispatch.publish(due))
        if gated:
            transaction.on_commit(lambda: concurrency.gate(gated))
        return runs

    def dispatch_due(self, now: dt.datetime | None = None, limit: int = 500) -> int:
        """Send the runs whose time has come; returns how many.

        Created and retrying runs move to pending; a pending run with a due_at is one
        whose message the broker refused (dispatch.publish) and is sent again under
        its next message number. Rows are claimed with SELECT ... FOR UPDATE SKIP
        LOCKED, so several beat processes can run this at once without sending a run
        twice.
        """
        from tasks_app.models.runs import move_fields

        now = now or timezone.now()
        with transaction.atomic():
            due = list(
                self.select_for_update(skip_locked=True)
                .filter(state__in=[S.CREATED, S.RETRYING, S.PENDING], due_at__lte=now)
                .order_by("due_at")
                .values_list("pk", "state")[:limit]
            )
            if not due:
                return 0
            gated_ids = set(
                self.filter(pk__in=[pk for pk, state in due if state == S.CREATED])
                .exclude(task__concurrency_policy=ConcurrencyPolicy.ALLOW)
                .values_list("pk", flat=True)
            )
            if gated_ids:
                self.filter(pk__in=gated_ids).update(due_at=None)
                gated = list(self.select_related("task").filter(pk__in=gated_ids))
                transaction.on_commit(lambda: concurrency.gate(gated))
                due = [(pk, state) for pk, state in due if pk not in gated_ids]
            moved = move_fields(S.PENDING, at=now, reason="due: sent to the broker", actor=Actor.SYSTEM)
            for source in {state for _pk, state in due}:
                self.filter(pk__in=[pk for pk, state in due if state == source], state=source).update(
                    dispatches=F("dispatches") + 1, due_at=None, **({} if source == S.PENDING else moved)
                )
            runs = list(self.select_related("task").filter(pk__in=[pk for pk, _state in due]))
            transaction.on_commit(lambda: dispatch.publish(runs))
        return len(runs) + len(gated_ids)


def _set_aside(schedule: Schedule, exc: Exception) -> None:
    """Stop firing `schedule` until an edit mends it, saying why (saved by the caller)."""
    why = str(exc) if isinstance(exc, timing.InvalidSchedule) else f"{type(exc).__name__}: {exc}"
    logger.error("schedule %s set aside, it fires no more until edited: %s", schedule.pk, why)
    schedule.next_fire_at = None
    schedule.invalid_reason = why[:500]


class ScheduleQuerySet(models.QuerySet):
    def look_again(self) -> int:
        """Have beat's next tick recompute those of these schedules it set aside: an edit of
        what they fire (a workflow's steps) may have mended them. Returns how many."""
        from tasks_app.models.schedules import RECOMPUTE

        return self.exclude(invalid_reason="").update(next_fire_at=RECOMPUTE)

    def fire_due(self, now: dt.datetime | None = None, limit: int = 500) -> int:
        """Fire every enabled schedule whose next instant has come; returns runs created.

        Due schedules are claimed with SELECT ... FOR UPDATE SKIP LOCKED, so any number
        of beat processes can run this at once: each schedule is fired by one of them,
        and the run table's unique (schedule, scheduled_for) makes a second run for the
        same instant impossible anyway. Instants missed by more than
        SCHEDULE_MISFIRE_GRACE follow the schedule's misfire policy.
        """
        from tasks_app.models.schedules import RECOMPUTE, MisfirePolicy

        now = now or timezone.now()
        grace = dt.timedelta(seconds=settings.SCHEDULE_MISFIRE_GRACE)
        cap = settings.SCHEDULE_CATCH_UP_MAX
        with transaction.atomic():
            due = list(
                self.select_for_update(skip_locked=True)
                .filter(enabled=True, next_fire_at__lte=now)
                .order_by("next_fire_at")[:limit]
            )
            # Tasks are read apart, unlocked: a join would lock them and skip their schedules.
            tasks = apps.get_model("tasks_app", "Task").objects.in_bulk({s.task_id for s in due if s.task_id})
            requests: list[RunRequest] = []
            workflows_due = []
            for schedule in due:
                schedule.task = tasks.get(schedule.task_id)
                fired_before = schedule.last_fired_at, schedule.missed_fires
                try:
                    fires = []
                    if schedule.next_fire_at > RECOMPUTE:  # else its timing was edited: no fire
                        fires = self._fires_of(schedule, now, grace, cap, MisfirePolicy)
                    if schedule.workflow_id:
                        mine = [(schedule, instant) for instant, _reason in fires]
                    else:
                        mine = [self._request(schedule, instant, reason) for instant, reason in fires]
                    schedule.next_fire_at = schedule.next_after(now)
                except Exception as exc:
                    # A row written past validation (plain SQL, a bulk update): it is set
                    # aside with the reason, every other schedule goes on. It fired nothing.
                    schedule.last_fired_at, schedule.missed_fires = fired_before
                    _set_aside(schedule, exc)
                    continue
                schedule.invalid_reason = ""
                (workflows_due if schedule.workflow_id else requests).extend(mine)
            self.bulk_update(due, ["next_fire_at", "last_fired_at", "missed_fires", "invalid_reason"])
            fired = {(r.schedule.pk, r.scheduled_for) for r in requests}
            if fired:
                Run = apps.get_model("tasks_app", "Run")
                done = set(
                    Run.objects.filter(
                        schedule__in={pk for pk, _at in fired}, scheduled_for__in={at for _pk, at in fired}
                    ).values_list("schedule_id", "scheduled_for")
                )
                requests = [r for r in requests if (r.schedule.pk, r.scheduled_for) not in done]
                Run.objects.submit_many(requests, by="scheduler", now=now)
            if workflows_due:
                started = set(
                    apps.get_model("tasks_app", "WorkflowRun")
                    .objects.filter(schedule__in={s.pk for s, _at in workflows_due})
                    .filter(scheduled_for__in={at for _s, at in workflows_due})
                    .values_list("schedule_id", "scheduled_for")
                )
                workflows_due = [(s, at) for s, at in workflows_due if (s.pk, at) not in started]
            for schedule, instant in workflows_due:
                try:
                    with transaction.atomic():
                        workflows.start(
                            schedule.workflow,
                            by="scheduler",
                            schedule=schedule,
                            scheduled_for=instant,
                            now=now,
                        )
                except DatabaseError:
                    raise  # the database's trouble, not the row's: the whole tick tries again
                except Exception as exc:  # the workflow cannot start (its tasks are gone, ...)
                    _set_aside(schedule, exc)
                    self.filter(pk=schedule.pk).update(
                        next_fire_at=None, invalid_reason=schedule.invalid_reason
                    )
        return len(requests) + len(workflows_due)

    @staticmethod
    def _fires_of(schedule: Schedule, now: dt.datetime, grace: dt.timedelta, cap: int, policy: Any) -> list:
        instants = [schedule.next_fire_at]
        instants += [
            i
            for i in schedule.timer().between(schedule.next_fire_at, now, cap + 1)
            if not schedule.end_at or i <= schedule.end_at
        ]
        fires = {i: "scheduled" for i in instants if now - i <= grace}  # on time
        missed = [i for i in instants if now - i > grace]
        if missed:
            schedule.missed_fires += len(missed)
            logger.warning(
                "schedule %s missed %s%d instant(s) from %s: %s",
                schedule.pk,
                "at least " if len(instants) > cap else "",
                len(missed),
                missed[0].isoformat(),
                schedule.misfire_policy,
            )
            if schedule.misfire_policy == policy.RUN_ONCE:
                fires[missed[-1]] = f"misfire run_once: one run for {len(missed)} missed instant(s)"
            elif schedule.misfire_policy == policy.CATCH_UP:
                fires.update({i: "misfire catch_up: a missed instant" for i in missed[:cap]})
        if not fires or (schedule.task is not None and not schedule.task.enabled):
            return []
        schedule.last_fired_at = now
        return sorted(fires.items())

    @staticmethod
    def _request(schedule: Schedule, instant: dt.datetime, reason: str) -> RunRequest:
        base = schedule.fire_kwargs()
        return RunRequest(
            task=schedule.task,
            args=base["args"],
            kwargs=base["kwargs"],
            trigger=Trigger.SCHEDULE,
            schedule=schedule,
            scheduled_for=instant,
            reason=reason,
        )
