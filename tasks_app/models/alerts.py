"""Alerts: rules say what to watch and where to tell; an alert is one stretch of time in which
a rule's condition held for one subject; each change of it is an event, and each event is a
notification per channel, delivered from this outbox (tasks_app.alerts opens and resolves,
tasks_app.notifications delivers)."""

from __future__ import annotations

import uuid
from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, validate_email
from django.db import models
from django.db.models import Q
from django.utils import timezone

from tasks_app.choices import (
    AlertCondition,
    AlertEventKind,
    AlertState,
    ChannelKind,
    NotificationState,
)

ADDRESSES_MAX = 20
# A day, a year: bounds that keep every sum with a timestamp far from overflowing.
CONSECUTIVE_MAX = 1000
SECONDS_MAX = 366 * 24 * 3600
REMINDER_MIN = 60  # reminders more often than a minute are a flood, not a reminder


def email_addresses(target: str) -> list[str]:
    """The addresses of an e-mail channel's target (comma-separated); raises ValidationError."""
    addresses = [part.strip() for part in target.split(",") if part.strip()]
    if not addresses:
        raise ValidationError("Give one or more e-mail addresses, comma-separated.")
    if len(addresses) > ADDRESSES_MAX:
        raise ValidationError(f"At most {ADDRESSES_MAX} addresses.")
    for address in addresses:
        try:
            validate_email(address)
        except ValidationError:
            raise ValidationError(f"{address[:100]!r} is not an e-mail address.") from None
    return addresses


class Channel(models.Model):
    """Where alerts go: a webhook URL, a Slack incoming webhook, or e-mail addresses."""

    # What the API and the admin let a user set (and what an ETag covers: the secret is not
    # among them, so no digest of it is ever served).
    EDITABLE_FIELDS = ["name", "kind", "target", "enabled"]

    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=10, choices=ChannelKind.choices)
    # A URL (webhook, slack) or e-mail addresses, comma-separated.
    target = models.CharField(max_length=2000)
    # The HMAC key of a webhook's X-Scheduler-Signature; never shown once written.
    secret = models.CharField(max_length=255, blank=True)
    enabled = models.BooleanField(default=True)
    # The last delivery error; a permanent one disabled the channel (tasks_app.notifications).
    last_error = models.CharField(max_length=1000, blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(condition=Q(kind__in=ChannelKind.values), name="channel_kind_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.kind})"


class AlertRule(models.Model):
    """What to watch (a condition, over everything or one task, schedule or workflow) and
    which channels to tell."""

    EDITABLE_FIELDS = [
        "name", "condition", "task", "schedule", "workflow", "consecutive", "grace_seconds",
        "max_seconds", "reminder_seconds", "enabled",
    ]  # fmt: skip
    SCOPES = ("task", "schedule", "workflow")

    name = models.CharField(max_length=200, unique=True)
    condition = models.CharField(max_length=20, choices=AlertCondition.choices)
    # The scope: at most one; none watches everything. A rule goes with what it watches.
    task = models.ForeignKey(
        "tasks_app.Task", on_delete=models.CASCADE, null=True, blank=True, related_name="alert_rules"
    )
    schedule = models.ForeignKey(
        "tasks_app.Schedule", on_delete=models.CASCADE, null=True, blank=True, related_name="alert_rules"
    )
    workflow = models.ForeignKey(
        "tasks_app.Workflow", on_delete=models.CASCADE, null=True, blank=True, related_name="alert_rules"
    )
    consecutive = models.PositiveIntegerField(
        default=1,
        validators=[MinValueValidator(1), MaxValueValidator(CONSECUTIVE_MAX)],
        help_text="failure: open after this many failed runs in a row.",
    )
    grace_seconds = models.PositiveIntegerField(
        default=60,
        validators=[MaxValueValidator(SECONDS_MAX)],
        help_text="late: how long after its instant a scheduled run may take to start.",
    )
    max_seconds = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(SECONDS_MAX)],
        help_text="overrun: how long a run may be running.",
    )
    reminder_seconds = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(REMINDER_MIN), MaxValueValidator(SECONDS_MAX)],
        help_text="Tell again this often while an alert is open; empty: never.",
    )
    channels = models.ManyToManyField(Channel, blank=True, related_name="rules")
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(
                condition=(
                    Q(task__isnull=True, schedule__isnull=True)
                    | Q(task__isnull=True, workflow__isnull=True)
                    | Q(schedule__isnull=True, workflow__isnull=True)
                ),
                name="alert_rule_one_scope_at_most",
            ),
            models.CheckConstraint(
                condition=Q(condition__in=AlertCondition.values), name="alert_rule_condition_valid"
            ),
            models.CheckConstraint(condition=Q(consecutive__gte=1), name="alert_rule_consecutive_positive"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def scope_text(self) -> str:
        if self.task_id:
            return f"task {self.task.name}"
        if self.schedule_id:
            return f"schedule {self.schedule_id}"
        if self.workflow_id:
            return f"workflow {self.workflow.name}"
        return "everything"


def rule_problems(values: dict[str, Any]) -> dict[str, str]:
    """What is wrong with an alert rule as it would be stored (its scope for its condition,
    the threshold its condition needs), by field; empty when nothing is."""
    problems: dict[str, str] = {}
    condition = values.get("condition")
    scopes = [scope for scope in AlertRule.SCOPES if values.get(scope) is not None]
    if len(scopes) > 1:
        problems.update(dict.fromkeys(scopes, "Give at most one of task, schedule and workflow."))
    elif scopes and condition == AlertCondition.WORKER_OFFLINE:
        problems[scopes[0]] = "A worker_offline rule watches every worker: it takes no scope."
    elif scopes and condition == AlertCondition.WORKFLOW_FAILURE:
        takes = "a workflow_failure rule takes a workflow, a schedule of a workflow, or nothing."
        schedule = values.get("schedule")
        if values.get("task") is not None:
            problems["task"] = f"A task has no workflow runs: {takes}"
        elif schedule is not None and schedule.workflow_id is None:
            problems["schedule"] = f"Schedule {schedule.pk} fires a task: {takes}"
    if condition == AlertCondition.OVERRUN and values.get("max_seconds") is None:
        problems["max_seconds"] = "An overrun rule needs max_seconds: how long a run may be running."
    return problems


class Alert(models.Model):
    """One stretch of time in which a rule's condition held for one subject (a task, a
    schedule, a workflow, a worker or a run): opened once, resolved once."""

    rule = models.ForeignKey(AlertRule, on_delete=models.CASCADE, related_name="alerts")
    # What it is about, as a key ("task:12", "worker:w1@host", "run:9") and in words.
    subject_key = models.CharField(max_length=255)
    subject = models.CharField(max_length=300)
    # The subject_key while open, NULL once resolved: the unique (rule, open_key) is how an
    # alert opens once per rule and subject, however many processes see the condition.
    open_key = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001
    state = models.CharField(max_length=10, choices=AlertState.choices, default=AlertState.OPEN)
    reason = models.CharField(max_length=1000)
    resolution = models.CharField(max_length=1000, blank=True)
    opened_at = models.DateTimeField(default=timezone.now)
    resolved_at = models.DateTimeField(null=True, blank=True)
    # The run that opened it, if one did; the task and schedule it concerns, for filters.
    run = models.ForeignKey(
        "tasks_app.Run", on_delete=models.SET_NULL, null=True, blank=True, related_name="alerts"
    )
    task = models.ForeignKey(
        "tasks_app.Task", on_delete=models.SET_NULL, null=True, blank=True, related_name="alerts"
    )
    schedule = models.ForeignKey(
        "tasks_app.Schedule", on_delete=models.SET_NULL, null=True, blank=True, related_name="alerts"
    )
    # late: the schedule's instant that no run started for.
    scheduled_for = models.DateTimeField(null=True, blank=True)
    # When the next reminder is due (open alerts of rules with reminder_seconds).
    remind_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["rule", "open_key"], name="alert_opens_once_per_subject"),
            models.CheckConstraint(
                condition=(
                    Q(state=AlertState.OPEN, open_key__isnull=False, resolved_at__isnull=True)
                    | Q(state=AlertState.RESOLVED, open_key__isnull=True, resolved_at__isnull=False)
                ),
                name="alert_open_key_only_while_open",
            ),
        ]
        indexes = [
            # alerts.send_reminders(): open alerts whose reminder is due.
            models.Index(fields=["state", "remind_at"], name="alert_state_remind"),
        ]

    def __str__(self) -> str:
        return f"{self.rule.name}: {self.subject} ({self.state})"

    @property
    def downtime(self) -> float | None:
        """Seconds from opening to resolution."""
        if self.resolved_at is None:
            return None
        return (self.resolved_at - self.opened_at).total_seconds()


class AlertEvent(models.Model):
    """A change of an alert: opened, a reminder, resolved. Its timeline."""

    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=10, choices=AlertEventKind.choices)
    at = models.DateTimeField(default=timezone.now)
    reason = models.CharField(max_length=1000, blank=True)

    class Meta:
        ordering = ["at", "id"]

    def __str__(self) -> str:
        return f"{self.kind} at {self.at:%Y-%m-%d %H:%M:%S}"


class Notification(models.Model):
    """One event told to one channel: the outbox row, committed with the event, delivered
    afterwards (tasks_app.notifications) and kept with its attempts and last error."""

    alert = models.ForeignKey(
        Alert, on_delete=models.CASCADE, null=True, blank=True, related_name="notifications"
    )
    event = models.ForeignKey(
        AlertEvent, on_delete=models.CASCADE, null=True, blank=True, related_name="notifications"
    )
    channel = models.ForeignKey(Channel, on_delete=models.CASCADE, related_name="notifications")
    kind = models.CharField(max_length=10, choices=AlertEventKind.choices)
    # Sent as X-Scheduler-Delivery: the same on every attempt, so a receiver can de-duplicate.
    delivery_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    # What is sent, fixed when the event happened: every attempt sends the same bytes.
    payload = models.JSONField()
    state = models.CharField(
        max_length=10, choices=NotificationState.choices, default=NotificationState.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    # Not before: a retry's backoff.
    next_attempt_at = models.DateTimeField(default=timezone.now)
    # A sender's claim (compare-and-set): until then no other process tries it.
    claimed_until = models.DateTimeField(null=True, blank=True)
    claimed_by = models.CharField(max_length=255, blank=True)
    last_error = models.CharField(max_length=1000, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            # notifications.deliver_due(): pending notifications whose time has come.
            models.Index(fields=["state", "next_attempt_at"], name="notification_due"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} to {self.channel.name} ({self.state})"
