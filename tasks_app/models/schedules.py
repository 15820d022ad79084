from __future__ import annotations

import datetime as dt
from typing import Any

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import F, Q
from django.utils import timezone as clock

from tasks_app import timing
from tasks_app.choices import MisfirePolicy
from tasks_app.querysets import ScheduleQuerySet

# A next_fire_at this old means "recompute me": a database trigger (db_triggers.py) sets it when
# an UPDATE changes a schedule's timing, so even a bulk update() is picked up.
RECOMPUTE = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
KINDS = ("cron", "interval_seconds", "run_at")
INTERVAL_MAX = 2**31 - 1
# Instants a schedule may name: far enough from datetime's ends that no time zone's offset
# and no fire after them overflows it.
EARLIEST_INSTANT = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
LATEST_INSTANT = dt.datetime(9000, 1, 1, tzinfo=dt.UTC)


def timing_problems(values: dict[str, Any]) -> dict[str, str]:
    """What is wrong with a schedule's timing, by field; empty when nothing is."""
    problems: dict[str, str] = {}
    given = [kind for kind in KINDS if values.get(kind) not in (None, "")]
    if len(given) != 1:
        problems.update(
            dict.fromkeys(given or ["cron"], "Give exactly one of cron, interval_seconds and run_at.")
        )
    zone = values.get("timezone") or "UTC"
    try:
        timing.zone(zone)
    except timing.InvalidSchedule as exc:
        problems["timezone"], zone = str(exc), "UTC"
    if values.get("cron"):
        try:
            timing.validate_cron(values["cron"], zone)
        except timing.InvalidSchedule as exc:
            problems["cron"] = str(exc)
    interval = values.get("interval_seconds")
    if interval is not None and not 1 <= interval <= INTERVAL_MAX:
        problems["interval_seconds"] = f"Must be from 1 to {INTERVAL_MAX} seconds."
    for field in ("run_at", "start_at", "end_at"):
        instant = values.get(field)
        if instant is not None and not EARLIEST_INSTANT <= instant <= LATEST_INSTANT:
            problems[field] = f"Must be from {EARLIEST_INSTANT.year} to {LATEST_INSTANT.year}."
    start, end = values.get("start_at"), values.get("end_at")
    if start and end and end <= start:
        problems["end_at"] = "Must be after start_at."
    return problems


def schedule_problems(values: dict[str, Any]) -> dict[str, str]:
    """What is wrong with a schedule as it would be stored, by field: what it fires, and
    its timing (timing_problems). Empty when nothing is."""
    problems = timing_problems(values)
    if (values.get("task") is None) == (values.get("workflow") is None):
        problems["task"] = "Give exactly one of task and workflow."
    return problems


class Schedule(models.Model):
    """When a task runs by itself. Each fire is a Run with trigger=schedule.

    Mirrored as a django-celery-beat PeriodicTask (so its admin and tools see it);
    what that model lacks (seconds, misfire policy, next fire time) lives here.
    """

    # What the API and the admin let a user set.
    EDITABLE_FIELDS = [
        "task", "workflow", "cron", "interval_seconds", "run_at", "timezone", "args", "kwargs",
        "start_at", "end_at", "misfire_policy", "enabled",
    ]  # fmt: skip

    # A task or a workflow that a schedule fires cannot be deleted before the schedule.
    task = models.ForeignKey(
        "tasks_app.Task", on_delete=models.PROTECT, null=True, blank=True, related_name="schedules"
    )
    workflow = models.ForeignKey(
        "tasks_app.Workflow", on_delete=models.PROTECT, null=True, blank=True, related_name="schedules"
    )
    cron = models.CharField(max_length=200, blank=True)
    # At most what django-celery-beat's IntervalSchedule.every (a signed int) holds: 68 years.
    interval_seconds = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1), MaxValueValidator(INTERVAL_MAX)]
    )
    run_at = models.DateTimeField(null=True, blank=True)
    timezone = models.CharField(max_length=64, default="UTC")
    args = models.JSONField(null=True, blank=True, help_text="None: the task's args.")
    kwargs = models.JSONField(default=dict, blank=True, help_text="Override the task's kwargs.")
    start_at = models.DateTimeField(null=True, blank=True)
    end_at = models.DateTimeField(null=True, blank=True)
    misfire_policy = models.CharField(
        max_length=10, choices=MisfirePolicy.choices, default=MisfirePolicy.SKIP
    )
    enabled = models.BooleanField(default=True)
    # The next instant to fire; None once it never fires again.
    next_fire_at = models.DateTimeField(null=True, blank=True)
    last_fired_at = models.DateTimeField(null=True, blank=True)
    # Instants missed while no scheduler ran (whatever the misfire policy then did).
    missed_fires = models.PositiveIntegerField(default=0)
    # Why the scheduler set this schedule aside (its next fire could not be computed, or
    # it could not fire): it fires no more until an edit mends it. Empty when it fires.
    invalid_reason = models.CharField(max_length=500, blank=True)
    periodic_task = models.OneToOneField(
        "django_celery_beat.PeriodicTask",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="platform_schedule",
    )
    created_at = models.DateTimeField(default=clock.now)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ScheduleQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(
                condition=(
                    (~Q(cron="") & Q(interval_seconds__isnull=True) & Q(run_at__isnull=True))
                    | (Q(cron="") & Q(interval_seconds__isnull=False) & Q(run_at__isnull=True))
                    | (Q(cron="") & Q(interval_seconds__isnull=True) & Q(run_at__isnull=False))
                ),
                name="schedule_exactly_one_kind",
            ),
            models.CheckConstraint(
                condition=(Q(task__isnull=False) & Q(workflow__isnull=True))
                | (Q(task__isnull=True) & Q(workflow__isnull=False)),
                name="schedule_task_or_workflow",
            ),
            models.CheckConstraint(
                condition=Q(interval_seconds__isnull=True) | Q(interval_seconds__gte=1),
                name="schedule_interval_positive",
            ),
            models.CheckConstraint(
                condition=Q(start_at__isnull=True) | Q(end_at__isnull=True) | Q(end_at__gt=F("start_at")),
                name="schedule_ends_after_it_starts",
            ),
        ]
        indexes = [
            # scheduling.fire_due(): enabled schedules whose next fire has come.
            models.Index(fields=["enabled", "next_fire_at"], name="schedule_due"),
        ]

    def __str__(self) -> str:
        return f"schedule {self.pk} of {self.target_text}: {self.kind_text}"

    @property
    def target_text(self) -> str:
        return f"task {self.task.name}" if self.task_id else f"workflow {self.workflow.name}"

    @property
    def kind_text(self) -> str:
        if self.cron:
            return f"cron {self.cron} ({self.timezone})"
        if self.interval_seconds:
            return f"every {self.interval_seconds}s"
        return f"once at {self.run_at}"

    def timer(self) -> timing.Cron | timing.Interval | timing.Once:
        """The schedule's arithmetic; raises timing.InvalidSchedule."""
        if self.cron:
            return timing.cron(self.cron, self.timezone)
        if self.interval_seconds:
            return timing.Interval(self.interval_seconds, self.start_at or self.created_at)
        if self.run_at:
            return timing.Once(self.run_at)
        raise timing.InvalidSchedule("a schedule needs one of cron, interval_seconds or run_at")

    def next_after(self, instant: dt.datetime) -> dt.datetime | None:
        """The first fire strictly after `instant`, within start_at and end_at; None if none."""
        if self.start_at and instant < self.start_at:
            instant = self.start_at - dt.timedelta(microseconds=1)
        fire = self.timer().next_after(instant)
        if fire is None or (self.end_at and fire > self.end_at):
            return None
        return fire

    def upcoming(self, count: int = 5, after: dt.datetime | None = None) -> list[dt.datetime]:
        """The next `count` fires; raises timing.InvalidSchedule."""
        fires: list[dt.datetime] = []
        current = after or clock.now()
        while len(fires) < count:
            nxt = self.next_after(current)
            if nxt is None:
                break
            fires.append(nxt)
            current = nxt
        return fires

    def description(self) -> str:
        """The timing in words; for a row written past validation, what is wrong with it."""
        try:
            if self.cron:
                return timing.describe(self.cron)
        except timing.InvalidSchedule as exc:
            return f"invalid: {exc}"
        if self.interval_seconds:
            return f"Every {self.interval_seconds} seconds"
        return f"Once, at {self.run_at.isoformat() if self.run_at else '?'}"

    def fire_kwargs(self) -> dict[str, Any]:
        """What each fire passes to its run; raises timing.InvalidSchedule for a row
        whose args or kwargs were written past validation."""
        if self.args is not None and not isinstance(self.args, list):
            raise timing.InvalidSchedule("args must be a list")
        if not isinstance(self.kwargs or {}, dict):
            raise timing.InvalidSchedule("kwargs must be an object")
        return {"args": self.args, "kwargs": dict(self.kwargs or {})}
