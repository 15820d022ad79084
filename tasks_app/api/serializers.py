from __future__ import annotations

import functools
from typing import Any

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from tasks_app import handlers, notifications, timing, workers
from tasks_app.api.pagination import BIGINT_MAX
from tasks_app.api.versions import FieldsSentOnly
from tasks_app.choices import AlertCondition, AlertEventKind, TriggerRule
from tasks_app.definitions import validate_steps
from tasks_app.models import (
    Alert,
    AlertEvent,
    AlertRule,
    Channel,
    Notification,
    Run,
    RunEvent,
    RunLog,
    Schedule,
    Task,
    Worker,
    Workflow,
    WorkflowRun,
    WorkflowRunEvent,
)
from tasks_app.models.alerts import rule_problems
from tasks_app.models.schedules import KINDS, schedule_problems, timing_problems
from tasks_app.models.tasks import PRIORITY_MAX, name_validator
from tasks_app.models.workflows import InvalidWorkflow
from tasks_app.submission import IDEMPOTENCY_KEY_MAX as IDEMPOTENCY_KEY_MAX  # views.py reads it here
from tasks_app.submission import InvalidKey, RunRequest, clean_idempotency_key

BULK_MAX = 1000


class StoredList(serializers.ListField):
    """A JSON list in a request; in a response, the stored value as it is, so that a row
    written past validation (plain SQL) still reads."""

    def to_representation(self, data: Any) -> Any:
        return data


class StoredDict(serializers.DictField):
    """A JSON object in a request; in a response, the stored value as it is."""

    def to_representation(self, value: Any) -> Any:
        return value


class HandlerSerializer(serializers.Serializer):
    name = serializers.CharField()
    description = serializers.CharField()
    pausable = serializers.BooleanField()


class TaskSerializer(FieldsSentOnly, serializers.ModelSerializer):
    args = StoredList(required=False, default=list)
    kwargs = StoredDict(required=False, default=dict)
    online_workers = serializers.SerializerMethodField(
        help_text="Online workers that take the task's queue and have its handler: 0, and its runs "
        "wait, then fail with 'handler not registered'."
    )

    class Meta:
        model = Task
        fields = [*Task.EDITABLE_FIELDS, "online_workers", "created_at", "updated_at"]
        read_only_fields = ["created_at", "updated_at"]

    @extend_schema_field(OpenApiTypes.INT)
    def get_online_workers(self, task: Task) -> int:
        if "online_workers" not in self.context:  # one read for a whole list
            self.context["online_workers"] = list(workers.online_workers())
        return workers.online_serving(task.queue, task.handler, self.context["online_workers"])

    def validate_name(self, value: str) -> str:
        problem = self.instance.rename_problem(value) if self.instance is not None else ""
        if problem:
            raise serializers.ValidationError(problem)
        return value

    def validate_handler(self, value: str) -> str:
        if handlers.find(value) is None:
            known = ", ".join(h.name for h in handlers.all_handlers())
            raise serializers.ValidationError(f"No handler named {value!r} is registered. Known: {known}.")
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        def current(field: str) -> Any:
            if field in attrs:
                return attrs[field]
            return getattr(self.instance, field, None)

        soft, hard = current("soft_time_limit"), current("time_limit")
        if soft and hard and soft >= hard:
            raise serializers.ValidationError({"soft_time_limit": "Must be less than time_limit."})
        for field in ("soft_time_limit", "time_limit"):
            value = current(field)
            if value and value > settings.RUN_MAX_DURATION:
                raise serializers.ValidationError(
                    {field: f"Must be at most RUN_MAX_DURATION ({settings.RUN_MAX_DURATION:g} s)."}
                )
        backoff, backoff_max = current("retry_backoff"), current("retry_backoff_max")
        if backoff is not None and backoff_max is not None and backoff > backoff_max:
            raise serializers.ValidationError({"retry_backoff": "Must not exceed retry_backoff_max."})
        return attrs


class RunSerializer(serializers.ModelSerializer):
    task = serializers.SlugRelatedField(slug_field="name", read_only=True)
    lateness = serializers.SerializerMethodField()

    class Meta:
        model = Run
        fields = [
            "id",
            "task",
            "state",
            "trigger",
            "args",
            "kwargs",
            "attempt",
            "retries",
            "priority",
            "idempotency_key",
            "schedule",
            "scheduled_for",
            "lateness",
            "workflow_run",
            "step",
            "worker",
            "created_at",
            "due_at",
            "started_at",
            "finished_at",
            "result",
            "error",
            "progress",
        ]
        read_only_fields = fields

    @extend_schema_field({"type": "number", "nullable": True})
    def get_lateness(self, run: Run) -> float | None:
        """Seconds between the instant a schedule meant and the run's creation."""
        return run.lateness.total_seconds() if run.lateness is not None else None


def run_data(run: Run) -> dict[str, Any]:
    """One run as RunSerializer shows it, through fields built once per process. Building a
    ModelSerializer's fields is 0.35 ms of the 0.47 ms that `RunSerializer(run).data` takes, and
    a submit answers with one run (bench/api.py). None of its fields reads the context."""
    return _run_shape().to_representation(run)


@functools.cache
def _run_shape() -> RunSerializer:
    return RunSerializer()


class RunEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = RunEvent
        fields = ["from_state", "to_state", "at", "reason", "actor", "actor_name"]


class WorkflowRunEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = WorkflowRunEvent
        fields = ["from_state", "to_state", "at", "reason", "actor", "actor_name"]


class RunLogSerializer(serializers.ModelSerializer):
    class Meta:
        model = RunLog
        fields = ["at", "level", "message"]


class TaskByName(serializers.SlugRelatedField):
    """A task named in a submit body. A bulk of 1,000 items validates them with one instance of
    this field, which reads each task once: one query per item was a third of the bulk's CPU."""

    def to_internal_value(self, data: Any) -> Task:
        found = self.__dict__.setdefault("_found", {})
        if isinstance(data, str) and data in found:
            return found[data]
        task = super().to_internal_value(data)
        if isinstance(data, str):
            found[data] = task
        return task


def task_by_name() -> serializers.SlugRelatedField:
    return TaskByName(
        slug_field="name",
        queryset=Task.objects.all(),
        error_messages={"does_not_exist": "No task named {value!r}."},
    )


class RunSubmitSerializer(serializers.Serializer):
    task = task_by_name()
    args = serializers.ListField(required=False, allow_null=True, default=None)
    kwargs = serializers.DictField(required=False, default=dict)
    priority = serializers.IntegerField(
        required=False, allow_null=True, default=None, min_value=0, max_value=PRIORITY_MAX
    )
    run_at = serializers.DateTimeField(required=False, allow_null=True, default=None)
    idempotency_key = serializers.CharField(
        required=False,
        allow_null=True,
        allow_blank=True,
        default=None,
        trim_whitespace=False,
        help_text="The same key for the same task returns the first run (200); with another request, a 409.",
    )

    def validate_idempotency_key(self, value: str | None) -> str | None:
        try:
            return clean_idempotency_key(value)  # the admin's run forms check it so too
        except InvalidKey as exc:
            raise serializers.ValidationError(str(exc)) from None

    def to_request(self) -> RunRequest:
        return request_of(self.validated_data)


def request_of(data: dict[str, Any]) -> RunRequest:
    return RunRequest(
        task=data["task"],
        args=data["args"],
        kwargs=data["kwargs"],
        priority=data["priority"],
        run_at=data["run_at"],
        idempotency_key=data["idempotency_key"],
    )


class BulkSubmitSerializer(serializers.Serializer):
    runs = serializers.ListField(
        child=RunSubmitSerializer(), min_length=1, max_length=BULK_MAX, allow_empty=False
    )


class ScheduleSerializer(FieldsSentOnly, serializers.ModelSerializer):
    task = serializers.SlugRelatedField(
        slug_field="name",
        queryset=Task.objects.all(),
        required=False,
        allow_null=True,
        error_messages={"does_not_exist": "No task named {value!r}."},
    )
    workflow = serializers.SlugRelatedField(
        slug_field="name",
        queryset=Workflow.objects.all(),
        required=False,
        allow_null=True,
        error_messages={"does_not_exist": "No workflow named {value!r}."},
    )
    cron = serializers.CharField(required=False, allow_blank=True, allow_null=True, max_length=200)
    args = StoredList(required=False, allow_null=True)
    kwargs = StoredDict(required=False)
    description = serializers.SerializerMethodField()
    next_runs = serializers.SerializerMethodField()

    class Meta:
        model = Schedule
        fields = [
            "id",
            *Schedule.EDITABLE_FIELDS,
            "workflow",
            "description",
            "next_runs",
            "last_fired_at",
            "missed_fires",
            "invalid_reason",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["last_fired_at", "missed_fires", "invalid_reason", "created_at", "updated_at"]

    def validate_cron(self, value: str | None) -> str:
        return " ".join((value or "").split())

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if self.instance is not None:
            # Naming a task or a workflow on an existing schedule switches it to that one.
            if attrs.get("task") and "workflow" not in attrs:
                attrs["workflow"] = None
            if attrs.get("workflow") and "task" not in attrs:
                attrs["task"] = None
        given = [kind for kind in KINDS if attrs.get(kind) not in (None, "")]
        if self.instance is not None and len(given) == 1:
            # Setting one kind on an existing schedule switches it to that kind.
            attrs.update({kind: ("" if kind == "cron" else None) for kind in KINDS if kind not in given})
        current = {field: getattr(self.instance, field, None) for field in Schedule.EDITABLE_FIELDS}
        problems = schedule_problems({**current, **attrs} if self.instance is not None else attrs)
        if problems:
            raise serializers.ValidationError(problems)
        return attrs

    @extend_schema_field(OpenApiTypes.STR)
    def get_description(self, schedule: Schedule) -> str:
        return schedule.description()

    @extend_schema_field({"type": "array", "items": {"type": "string", "format": "date-time"}})
    def get_next_runs(self, schedule: Schedule) -> list[str]:
        """The next five fires in the schedule's zone, also while it is paused; none once it
        was set aside (invalid_reason says why)."""
        if schedule.invalid_reason:
            return []
        try:
            tz = timing.zone(schedule.timezone)
            return [fire.astimezone(tz).isoformat() for fire in schedule.upcoming(5)]
        except (timing.InvalidSchedule, OverflowError):  # written past validation
            return []


PREVIEW_MAX = 50  # next fire times one preview lists (the admin's editor shows 10)


class SchedulePreviewSerializer(serializers.Serializer):
    cron = serializers.CharField(max_length=200)
    timezone = serializers.CharField(default="UTC", max_length=64)
    count = serializers.IntegerField(
        default=5, min_value=1, max_value=PREVIEW_MAX, help_text="How many next fire times to list."
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        problems = timing_problems(attrs)
        if problems:
            raise serializers.ValidationError(problems)
        attrs["timer"] = timing.Cron(attrs["cron"], attrs["timezone"])
        return attrs


class WorkflowStepSerializer(serializers.Serializer):
    """One step of a workflow (for the schema: WorkflowSerializer.validate_steps checks them)."""

    key = serializers.CharField(help_text="Unique in the workflow; what `depends_on` names.")
    task = serializers.CharField(help_text="The name of the task the step runs.")
    kwargs = serializers.DictField(required=False, help_text="Over the task's own kwargs.")
    depends_on = serializers.ListField(child=serializers.CharField(), required=False, default=list)
    trigger_rule = serializers.ChoiceField(choices=TriggerRule.choices, default=TriggerRule.ALL_SUCCESS)


@extend_schema_field(WorkflowStepSerializer(many=True))
class StepsField(serializers.JSONField):
    pass


class WorkflowSerializer(FieldsSentOnly, serializers.ModelSerializer):
    steps = StepsField()

    class Meta:
        model = Workflow
        fields = ["name", "description", "steps", "created_at", "updated_at"]
        read_only_fields = ["created_at", "updated_at"]

    def validate_name(self, value: str) -> str:
        name_validator(value)
        return value

    def validate_steps(self, value: Any) -> list[dict[str, Any]]:
        try:
            return validate_steps(value)
        except InvalidWorkflow as exc:
            raise serializers.ValidationError(str(exc)) from None


class WorkflowRunSerializer(serializers.ModelSerializer):
    workflow = serializers.SlugRelatedField(slug_field="name", read_only=True)
    steps = serializers.SerializerMethodField()

    class Meta:
        model = WorkflowRun
        fields = [
            "id", "workflow", "state", "created_at", "started_at", "finished_at", "schedule", "scheduled_for",
            "created_by", "steps",
        ]  # fmt: skip
        read_only_fields = fields

    @extend_schema_field(
        {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "key": {"type": "string"},
                    "state": {"type": "string", "nullable": True},
                    "run": {"type": "integer", "nullable": True},
                    "task": {"type": "string"},
                    "depends_on": {"type": "array", "items": {"type": "string"}},
                    "trigger_rule": {"type": "string"},
                    "attempt": {"type": "integer"},
                    "started_at": {"type": "string", "format": "date-time", "nullable": True},
                    "finished_at": {"type": "string", "format": "date-time", "nullable": True},
                },
            },
        }
    )
    def get_steps(self, workflow_run: WorkflowRun) -> list[dict[str, Any]]:
        current = {run.step: run for run in sorted(workflow_run.step_runs.all(), key=lambda r: r.pk)}
        steps = []
        for step in workflow_run.steps:
            run = current.get(step["key"])
            steps.append(
                {
                    "key": step["key"],
                    "state": run.state if run else None,
                    "run": run.pk if run else None,
                    "task": step["task"],
                    "depends_on": step["depends_on"],
                    "trigger_rule": step["trigger_rule"],
                    "attempt": run.attempt if run else 0,
                    "started_at": run.started_at.isoformat() if run and run.started_at else None,
                    "finished_at": run.finished_at.isoformat() if run and run.finished_at else None,
                }
            )
        return steps


class WorkerSerializer(serializers.ModelSerializer):
    status = serializers.SerializerMethodField()
    active = serializers.SerializerMethodField()

    class Meta:
        model = Worker
        fields = [
            "hostname", "status", "queues", "concurrency", "active", "handlers", "last_heartbeat",
            "started_at", "pid", "version",
        ]  # fmt: skip
        read_only_fields = fields

    def get_status(self, worker: Worker) -> str:
        return "online" if worker.online else "offline"

    @extend_schema_field(OpenApiTypes.INT)
    def get_active(self, worker: Worker) -> int:
        """Runs it is executing now."""
        return getattr(worker, "active_runs", 0)


# --- alerts --------------------------------------------------------------------------

CHANNELS_MAX = 100  # of one rule: each is told every change of every alert


class ChannelSerializer(FieldsSentOnly, serializers.ModelSerializer):
    secret = serializers.CharField(
        write_only=True,
        required=False,
        allow_blank=True,
        max_length=255,
        trim_whitespace=False,  # the key as written: the receiver computes the HMAC with it
        help_text="The HMAC-SHA256 key of a webhook's X-Scheduler-Signature; never shown once written. "
        "Blank: no signature.",
    )
    has_secret = serializers.SerializerMethodField()

    class Meta:
        model = Channel
        fields = [
            "id", *Channel.EDITABLE_FIELDS, "secret", "has_secret", "last_error", "last_error_at",
            "created_at", "updated_at",
        ]  # fmt: skip
        read_only_fields = ["last_error", "last_error_at", "created_at", "updated_at"]

    @extend_schema_field(OpenApiTypes.BOOL)
    def get_has_secret(self, channel: Channel) -> bool:
        return bool(channel.secret)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        # An edit of neither leaves the target alone: a host since dropped from the
        # allowlist still lets the channel be renamed or disabled.
        if "kind" in attrs or "target" in attrs:
            kind = attrs.get("kind", getattr(self.instance, "kind", ""))
            target = attrs.get("target", getattr(self.instance, "target", ""))
            problem = notifications.target_problem(kind, target)
            if problem:
                raise serializers.ValidationError({"target": problem})
        if self.instance is not None and attrs.get("enabled"):
            # A channel enabled again starts clean: the error that disabled it is history.
            attrs["last_error"], attrs["last_error_at"] = "", None
        return attrs


class ChannelIds(serializers.ListField):
    """A rule's channels by id, looked up in one query; their ids in a response."""

    child = serializers.IntegerField(min_value=1, max_value=BIGINT_MAX)

    def to_internal_value(self, data: Any) -> list[Channel]:
        ids = list(dict.fromkeys(super().to_internal_value(data)))
        found = Channel.objects.in_bulk(ids)
        unknown = [str(pk) for pk in ids if pk not in found]
        if unknown:
            raise serializers.ValidationError(f"No channel with id {', '.join(unknown)}.")
        return [found[pk] for pk in ids]

    def to_representation(self, data: Any) -> list[int]:
        return [channel.pk for channel in data.all()]


class AlertRuleSerializer(FieldsSentOnly, serializers.ModelSerializer):
    task = serializers.SlugRelatedField(
        slug_field="name",
        queryset=Task.objects.all(),
        required=False,
        allow_null=True,
        error_messages={"does_not_exist": "No task named {value!r}."},
    )
    workflow = serializers.SlugRelatedField(
        slug_field="name",
        queryset=Workflow.objects.all(),
        required=False,
        allow_null=True,
        error_messages={"does_not_exist": "No workflow named {value!r}."},
    )
    channels = ChannelIds(
        required=False,
        max_length=CHANNELS_MAX,
        help_text="The ids of the channels told of each change of the rule's alerts.",
    )

    class Meta:
        model = AlertRule
        fields = ["id", *AlertRule.EDITABLE_FIELDS, "channels", "created_at", "updated_at"]
        read_only_fields = ["created_at", "updated_at"]

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if self.instance is not None:
            named = [scope for scope in AlertRule.SCOPES if attrs.get(scope) is not None]
            if len(named) == 1:
                # Naming a scope on an existing rule switches the rule to it.
                attrs.update({scope: None for scope in AlertRule.SCOPES if scope not in attrs})
            current = {field: getattr(self.instance, field) for field in AlertRule.EDITABLE_FIELDS}
            attrs_now = {**current, **attrs}
        else:
            attrs_now = attrs
        problems = rule_problems(attrs_now)
        if problems:
            raise serializers.ValidationError(problems)
        return attrs

    def update(self, instance: AlertRule, validated_data: dict[str, Any]) -> AlertRule:
        # The channels are rows of their own table: not a column FieldsSentOnly could save.
        channels = validated_data.pop("channels", None)
        instance = super().update(instance, validated_data)
        if channels is not None:
            instance.channels.set(channels)
        return instance


class AlertEventSerializer(serializers.ModelSerializer):
    event = serializers.ChoiceField(source="kind", choices=AlertEventKind.choices, read_only=True)

    class Meta:
        model = AlertEvent
        fields = ["event", "at", "reason"]
        read_only_fields = fields


class NotificationSerializer(serializers.ModelSerializer):
    channel_name = serializers.CharField(source="channel.name", read_only=True)
    event = serializers.ChoiceField(source="kind", choices=AlertEventKind.choices, read_only=True)

    class Meta:
        model = Notification
        fields = [
            "id", "channel", "channel_name", "event", "state", "attempts", "last_error", "sent_at",
            "created_at", "delivery_id",
        ]  # fmt: skip
        read_only_fields = fields


class AlertSerializer(serializers.ModelSerializer):
    rule_name = serializers.CharField(source="rule.name", read_only=True)
    condition = serializers.ChoiceField(
        source="rule.condition", choices=AlertCondition.choices, read_only=True
    )
    task = serializers.SlugRelatedField(slug_field="name", read_only=True, allow_null=True)  # SET_NULL
    downtime_seconds = serializers.FloatField(
        source="downtime", read_only=True, allow_null=True, help_text="Seconds from opening to resolution."
    )
    timeline = AlertEventSerializer(source="events", many=True, read_only=True)
    notifications = NotificationSerializer(many=True, read_only=True)

    class Meta:
        model = Alert
        fields = [
            "id", "rule", "rule_name", "condition", "subject", "state", "reason", "resolution", "opened_at",
            "resolved_at", "downtime_seconds", "run", "task", "schedule", "scheduled_for", "timeline",
            "notifications",
        ]  # fmt: skip
        read_only_fields = fields


class ChannelTestSerializer(serializers.Serializer):
    delivered = serializers.BooleanField()
    error = serializers.CharField(allow_blank=True, help_text='Why it was not delivered; "" when it was.')
    notification = NotificationSerializer()
    channel = ChannelSerializer(help_text="The channel after the test: a permanent error disabled it.")
