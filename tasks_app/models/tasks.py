from __future__ import annotations

import random

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q

from tasks_app.choices import ConcurrencyPolicy
from tasks_app.models.workflows import Workflow

PRIORITY_MAX = 9

name_validator = RegexValidator(
    r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$",
    "Use letters, digits and . _ : - (starting with a letter or digit).",
)


# Queue names the brokers keep for themselves. A run's message goes to a Redis list named
# after its queue, beside kombu's own keys: a queue called "unacked" turned kombu's hash of
# delivered messages into a list, and every worker died on it. Celery's control replies go
# to "<id>.reply.celery.pidbox", its events to "celeryev.<id>"; RabbitMQ refuses "amq.".
RESERVED_QUEUES = ("unacked", "unacked_index", "unacked_mutex")
RESERVED_QUEUE_PREFIXES = ("amq.", "celeryev")
RESERVED_QUEUE_SUFFIXES = (".pidbox",)


def validate_queue(name: str) -> None:
    lowered = name.lower()
    if (
        lowered in RESERVED_QUEUES
        or lowered.startswith(RESERVED_QUEUE_PREFIXES)
        or lowered.endswith(RESERVED_QUEUE_SUFFIXES)
    ):
        raise ValidationError(
            f"{name!r} is reserved by the broker (names like {', '.join(RESERVED_QUEUES)}, "
            f"{', '.join(p + '*' for p in RESERVED_QUEUE_PREFIXES)} and "
            f"{', '.join('*' + s for s in RESERVED_QUEUE_SUFFIXES)}): choose another queue name."
        )


def _queue_not_reserved() -> Q:
    reserved = Q(queue__in=RESERVED_QUEUES)
    for prefix in RESERVED_QUEUE_PREFIXES:
        reserved |= Q(queue__startswith=prefix)
    for suffix in RESERVED_QUEUE_SUFFIXES:
        reserved |= Q(queue__endswith=suffix)
    return ~reserved


class Task(models.Model):
    """A named, configured use of a registered handler."""

    # What the API and the admin let a user set.
    EDITABLE_FIELDS = [
        "name",
        "handler",
        "description",
        "args",
        "kwargs",
        "queue",
        "priority",
        "max_retries",
        "retry_backoff",
        "retry_backoff_max",
        "retry_jitter",
        "soft_time_limit",
        "time_limit",
        "concurrency_policy",
        "enabled",
    ]

    name = models.CharField(max_length=200, unique=True, validators=[name_validator])
    handler = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    args = models.JSONField(default=list, blank=True)
    kwargs = models.JSONField(default=dict, blank=True)
    queue = models.CharField(max_length=100, default="default", validators=[name_validator, validate_queue])
    priority = models.PositiveSmallIntegerField(
        default=0,
        validators=[MaxValueValidator(PRIORITY_MAX)],
        help_text="0 (lowest) to 9 (served first).",
    )
    max_retries = models.PositiveIntegerField(default=0, validators=[MaxValueValidator(100)])
    retry_backoff = models.FloatField(
        default=1.0,
        validators=[MinValueValidator(0)],
        help_text="Delay before the first retry, in seconds; doubles on each retry.",
    )
    retry_backoff_max = models.FloatField(default=600.0, validators=[MinValueValidator(0)])
    retry_jitter = models.BooleanField(
        default=True, help_text="Draw each delay at random between half and all of it."
    )
    soft_time_limit = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)], help_text="Seconds."
    )
    time_limit = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)], help_text="Seconds."
    )
    concurrency_policy = models.CharField(
        max_length=10, choices=ConcurrencyPolicy.choices, default=ConcurrencyPolicy.ALLOW
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(condition=Q(priority__lte=PRIORITY_MAX), name="task_priority_in_range"),
            models.CheckConstraint(
                condition=Q(retry_backoff__gte=0) & Q(retry_backoff_max__gte=0),
                name="task_backoff_not_negative",
            ),
            # validate_queue() for what is written past the API and the admin.
            models.CheckConstraint(condition=_queue_not_reserved(), name="task_queue_not_reserved"),
        ]

    def __str__(self) -> str:
        return self.name

    def used_by(self) -> list[str]:
        """What fires this task and would be left without it: its schedules and workflows."""
        schedules = [f"schedule {pk}" for pk in self.schedules.order_by("pk").values_list("pk", flat=True)]
        return schedules + [f"workflow {name}" for name in self.workflows_naming_it()]

    def workflows_naming_it(self) -> list[str]:
        """The workflows whose steps name this task."""
        # Steps name their tasks inside JSON; read them here, which works on SQLite too.
        return [
            workflow
            for workflow, steps in Workflow.objects.order_by("name").values_list("name", "steps")
            if isinstance(steps, list)
            and any(isinstance(s, dict) and s.get("task") == self.name for s in steps)
        ]

    def rename_problem(self, new_name: str) -> str:
        """Why this task may not be renamed to `new_name`, or "": the steps that name it
        would name nothing."""
        naming = self.workflows_naming_it() if self.pk and new_name != self.name else []
        if naming:
            return f"Workflow(s) {', '.join(naming)} name this task; change their steps before renaming it."
        return ""

    def retry_delay(self, retries_done: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number `retries_done + 1`: exponential, capped, jittered."""
        delay = min(self.retry_backoff_max, self.retry_backoff * 2**retries_done)
        if self.retry_jitter:
            # "Equal jitter": spreads retries of many runs apart while still growing.
            delay = (rng or random).uniform(delay / 2, delay)
        return delay
