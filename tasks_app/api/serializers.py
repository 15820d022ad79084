from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from tasks_app import handlers
from tasks_app.models import Run, RunEvent, RunLog, Task
from tasks_app.models.tasks import PRIORITY_MAX
from tasks_app.querysets import RunRequest

BULK_MAX = 1000


class HandlerSerializer(serializers.Serializer):
    name = serializers.CharField()
    description = serializers.CharField()
    pausable = serializers.BooleanField()


class TaskSerializer(serializers.ModelSerializer):
    args = serializers.ListField(required=False, default=list)
    kwargs = serializers.DictField(required=False, default=dict)

    class Meta:
        model = Task
        fields = [*Task.EDITABLE_FIELDS, "created_at", "updated_at"]
        read_only_fields = ["created_at", "updated_at"]

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
    schedule = serializers.SerializerMethodField()
    workflow_run = serializers.SerializerMethodField()

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

    # Schedules and workflows arrive with their own models; until then no run has one.
    @extend_schema_field(OpenApiTypes.INT)
    def get_schedule(self, run: Run) -> int | None:
        return None

    @extend_schema_field(OpenApiTypes.INT)
    def get_workflow_run(self, run: Run) -> int | None:
        return None


class RunEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = RunEvent
        fields = ["from_state", "to_state", "at", "reason", "actor", "actor_name"]


class RunLogSerializer(serializers.ModelSerializer):
    class Meta:
        model = RunLog
        fields = ["at", "level", "message"]


class RunSubmitSerializer(serializers.Serializer):
    task = serializers.SlugRelatedField(
        slug_field="name",
        queryset=Task.objects.all(),
        error_messages={"does_not_exist": "No task named {value!r}."},
    )
    args = serializers.ListField(required=False, allow_null=True, default=None)
    kwargs = serializers.DictField(required=False, default=dict)
    priority = serializers.IntegerField(
        required=False, allow_null=True, default=None, min_value=0, max_value=PRIORITY_MAX
    )
    run_at = serializers.DateTimeField(required=False, allow_null=True, default=None)

    def to_request(self, idempotency_key: str | None = None) -> RunRequest:
        return request_of(self.validated_data, idempotency_key)


def request_of(data: dict[str, Any], idempotency_key: str | None = None) -> RunRequest:
    return RunRequest(
        task=data["task"],
        args=data["args"],
        kwargs=data["kwargs"],
        priority=data["priority"],
        run_at=data["run_at"],
        idempotency_key=idempotency_key,
    )


class BulkSubmitSerializer(serializers.Serializer):
    runs = serializers.ListField(
        child=RunSubmitSerializer(), min_length=1, max_length=BULK_MAX, allow_empty=False
    )
