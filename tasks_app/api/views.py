from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models import Count, IntegerField, OuterRef, Prefetch, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    PolymorphicProxySerializer,
    extend_schema,
    inline_serializer,
)
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from tasks_app import controls, definitions, handlers, notifications, submission, timing, workflows
from tasks_app.api.errors import Conflict
from tasks_app.api.filters import AlertFilter, RunFilter, WorkflowRunFilter
from tasks_app.api.pagination import OldestFirstCursorPagination
from tasks_app.api.permissions import requires
from tasks_app.api.serializers import (
    IDEMPOTENCY_KEY_MAX,
    AlertRuleSerializer,
    AlertSerializer,
    BulkSubmitSerializer,
    ChannelSerializer,
    ChannelTestSerializer,
    HandlerSerializer,
    NotificationSerializer,
    RunEventSerializer,
    RunLogSerializer,
    RunSerializer,
    RunSubmitSerializer,
    SchedulePreviewSerializer,
    ScheduleSerializer,
    TaskSerializer,
    WorkerSerializer,
    WorkflowRunEventSerializer,
    WorkflowRunSerializer,
    WorkflowSerializer,
    request_of,
    run_data,
)
from tasks_app.api.throttles import SubmitThrottle
from tasks_app.api.versions import VersionedEdits
from tasks_app.choices import NotificationState, RunState
from tasks_app.models import (
    Alert,
    AlertRule,
    Channel,
    Notification,
    Run,
    Schedule,
    Task,
    Worker,
    Workflow,
    WorkflowRun,
)

IDEMPOTENCY_HEADER = "Idempotency-Key"


def idempotency_key(request: Request) -> str | None:
    """The Idempotency-Key header as the client wrote it: UTF-8, one of it, printable."""
    raw = request.META.get("HTTP_IDEMPOTENCY_KEY")
    if raw is None or not raw.strip():
        return None
    try:
        key = raw.encode("latin-1").decode("utf-8").strip()  # WSGI hands headers over as latin-1
    except UnicodeError:
        raise ValidationError({IDEMPOTENCY_HEADER: "Must be UTF-8 text."}) from None
    if "," in key:  # how a server hands over a header sent twice
        raise ValidationError(
            {IDEMPOTENCY_HEADER: "Send one Idempotency-Key header; a key cannot hold a comma."}
        )
    if len(key) > 255:
        raise ValidationError({IDEMPOTENCY_HEADER: "At most 255 characters."})
    if not key.isprintable():
        raise ValidationError({IDEMPOTENCY_HEADER: "Must not hold control characters."})
    return key


def actor_name(request: Request) -> str:
    return request.user.get_username()


class HandlerList(APIView):
    """Registered handlers: what tasks can use. Read-only; handlers are code."""

    permission_classes = [requires("view_task")]  # what a task may name

    @extend_schema(
        responses=inline_serializer(
            "HandlerList",
            {
                "results": HandlerSerializer(many=True),
                "next": serializers.URLField(allow_null=True),
                "previous": serializers.URLField(allow_null=True),
            },
        )
    )
    def get(self, request: Request) -> Response:
        data = HandlerSerializer(handlers.all_handlers(), many=True).data
        return Response({"results": data, "next": None, "previous": None})


class TaskViewSet(VersionedEdits, viewsets.ModelViewSet):
    queryset = Task.objects.all()
    serializer_class = TaskSerializer
    lookup_field = "name"
    lookup_value_regex = "[^/]+"
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def perform_destroy(self, instance: Task) -> None:
        definitions.delete_task(instance)


def _may_start_workflow_runs(request: Request, workflow: Workflow | None) -> None:
    """A schedule of a workflow starts workflow runs: what makes it fire needs add_workflowrun
    too, as a start does (a schedule of a task needs add_run alone)."""
    if workflow is not None and not request.user.has_perm("tasks_app.add_workflowrun"):
        raise PermissionDenied("A schedule of a workflow starts workflow runs: this needs add_workflowrun.")


class RunViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = RunSerializer
    queryset = Run.objects.all()
    filterset_class = RunFilter
    action_permissions = {
        "events": ("view_run",), "logs": ("view_run",), "cancel": ("change_run",), "pause": ("change_run",),
        "resume": ("change_run",), "retry": ("change_run",),
    }  # fmt: skip

    def get_queryset(self) -> Any:
        if self.action == "list":
            # The page's tasks in a query of their own: joined, MariaDB may start from the
            # (small) task table and sort every run before it takes a page (bench/history.py:
            # a minute at 10,000,000 runs; tests/test_query_plans.py).
            return Run.objects.prefetch_related("task")
        return Run.objects.select_related("task")

    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(run_data(self.get_object()))

    @extend_schema(
        request=RunSubmitSerializer,
        responses={201: RunSerializer, 200: RunSerializer},
        parameters=[
            OpenApiParameter(
                IDEMPOTENCY_HEADER,
                OpenApiTypes.STR,
                OpenApiParameter.HEADER,
                description=(
                    "The same key for the same task returns the first run. UTF-8, at most 255 characters, "
                    "sent once (a second header, or a comma, is a 400)."
                ),
            )
        ],
    )
    def create(self, request: Request) -> Response:
        key = idempotency_key(request)
        submit = RunSubmitSerializer(data=request.data)
        submit.is_valid(raise_exception=True)
        run_request = submit.to_request()
        if key and run_request.idempotency_key and key != run_request.idempotency_key:
            raise ValidationError({"idempotency_key": f"Differs from the {IDEMPOTENCY_HEADER} header."})
        run_request.idempotency_key = run_request.idempotency_key or key
        submission.ensure_enabled(run_request.task)  # before the throttle counts it
        SubmitThrottle().take(request, 1)
        run, created = submission.submit(run_request, by=actor_name(request))
        return Response(run_data(run), status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)

    @extend_schema(
        request=BulkSubmitSerializer,
        responses={201: RunSerializer(many=True), 200: RunSerializer(many=True)},
        parameters=[
            OpenApiParameter(
                IDEMPOTENCY_HEADER,
                OpenApiTypes.STR,
                OpenApiParameter.HEADER,
                description=(
                    "Stands for the whole request: an item without an idempotency_key of its own gets "
                    "the key KEY:INDEX (runs[3] of KEY gets KEY:3), so a bulk sent again with the same "
                    "header returns the same runs (200 when every item is a repeat)."
                ),
            )
        ],
    )
    @action(detail=False, methods=["post"], pagination_class=None, filter_backends=[])  # a plain list
    def bulk(self, request: Request) -> Response:
        key = idempotency_key(request)
        submit = BulkSubmitSerializer(data=request.data)
        submit.is_valid(raise_exception=True)
        items = submit.validated_data["runs"]
        requests = [request_of(item) for item in items]
        for index, run_request in enumerate(requests):
            submission.ensure_enabled(run_request.task, where=f"runs[{index}]: ")
            if key and not run_request.idempotency_key:
                derived = f"{key}:{index}"
                if len(derived) > IDEMPOTENCY_KEY_MAX:
                    longest = IDEMPOTENCY_KEY_MAX - len(":999")
                    raise ValidationError(
                        {IDEMPOTENCY_HEADER: f"At most {longest} characters on a bulk request."}
                    )
                run_request.idempotency_key = derived
        SubmitThrottle().take(request, len(items))
        try:
            runs, created = submission.submit_all(requests, by=actor_name(request))
        except submission.RepeatedKey as exc:
            raise ValidationError({"runs": {exc.index: {"idempotency_key": [str(exc)]}}}) from None
        return Response(
            RunSerializer(runs, many=True).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )

    @extend_schema(responses=RunEventSerializer(many=True))
    @action(detail=True, methods=["get"], pagination_class=OldestFirstCursorPagination)
    def events(self, request: Request, pk: str) -> Response:
        return self._page_of(self.get_object().events.all(), RunEventSerializer)

    @extend_schema(responses=RunLogSerializer(many=True))
    @action(detail=True, methods=["get"], pagination_class=OldestFirstCursorPagination)
    def logs(self, request: Request, pk: str) -> Response:
        return self._page_of(self.get_object().logs.all(), RunLogSerializer)

    def _page_of(self, queryset: Any, serializer_class: type[serializers.Serializer]) -> Response:
        page = self.paginate_queryset(queryset)
        return self.get_paginated_response(serializer_class(page, many=True).data)

    def _control(self, request: Request, control: Any) -> Response:
        run = self.get_object()
        control(run, by=actor_name(request))
        run.refresh_from_db()
        return Response(run_data(run))

    @extend_schema(request=None, responses=RunSerializer)
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str) -> Response:
        return self._control(request, controls.cancel)

    @extend_schema(request=None, responses=RunSerializer)
    @action(detail=True, methods=["post"])
    def pause(self, request: Request, pk: str) -> Response:
        return self._control(request, controls.pause)

    @extend_schema(request=None, responses=RunSerializer)
    @action(detail=True, methods=["post"])
    def resume(self, request: Request, pk: str) -> Response:
        return self._control(request, controls.resume)

    @extend_schema(request=None, responses=RunSerializer)
    @action(detail=True, methods=["post"])
    def retry(self, request: Request, pk: str) -> Response:
        return self._control(request, controls.retry)


class ScheduleViewSet(VersionedEdits, viewsets.ModelViewSet):
    queryset = Schedule.objects.all()
    serializer_class = ScheduleSerializer
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]
    # A schedule makes runs: what starts or changes its firing needs add_run too.
    action_permissions = {
        "create": ("add_schedule", "add_run"), "partial_update": ("change_schedule", "add_run"),
        "pause": ("change_schedule",), "resume": ("change_schedule", "add_run"),
        "fire_now": ("view_schedule", "add_run"), "preview": ("view_schedule",),
    }  # fmt: skip

    def get_queryset(self) -> Any:
        return Schedule.objects.select_related("task", "workflow")

    def perform_create(self, serializer: ScheduleSerializer) -> None:
        _may_start_workflow_runs(self.request, serializer.validated_data.get("workflow"))
        with transaction.atomic():
            definitions.mirror(serializer.save())

    def perform_update(self, serializer: ScheduleSerializer) -> None:
        workflow = serializer.validated_data.get("workflow", serializer.instance.workflow)
        _may_start_workflow_runs(self.request, workflow)
        with transaction.atomic():
            definitions.mirror(serializer.save())

    def perform_destroy(self, instance: Schedule) -> None:
        definitions.delete_schedule(instance)

    def _set_enabled(self, enabled: bool) -> Response:
        schedule = self.get_object()
        if enabled:
            _may_start_workflow_runs(self.request, schedule.workflow)
        if not definitions.set_enabled(schedule, enabled):
            raise Conflict(f"Schedule {schedule.pk} is already {'enabled' if enabled else 'paused'}.")
        return Response(ScheduleSerializer(schedule).data)

    @extend_schema(request=None, responses=ScheduleSerializer)
    @action(detail=True, methods=["post"])
    def pause(self, request: Request, pk: str) -> Response:
        return self._set_enabled(False)

    @extend_schema(request=None, responses=ScheduleSerializer)
    @action(detail=True, methods=["post"])
    def resume(self, request: Request, pk: str) -> Response:
        return self._set_enabled(True)

    @extend_schema(
        request=None,
        responses={
            201: PolymorphicProxySerializer(
                "Fired", [RunSerializer, WorkflowRunSerializer], resource_type_field_name=None
            )
        },
    )
    @action(detail=True, methods=["post"], url_path="trigger")
    def fire_now(self, request: Request, pk: str) -> Response:
        """Fire once now: a run with trigger=manual (a workflow run for a workflow's schedule)."""
        schedule = self.get_object()
        if schedule.task_id:
            submission.ensure_enabled(schedule.task)
        _may_start_workflow_runs(request, schedule.workflow)
        SubmitThrottle().take(request, schedule.workflow.runs_per_start if schedule.workflow_id else 1)
        fired = definitions.fire_now(schedule, by=actor_name(request))
        serializer = WorkflowRunSerializer if schedule.workflow_id else RunSerializer
        return Response(serializer(fired).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        request=SchedulePreviewSerializer,
        responses=inline_serializer(
            "SchedulePreview",
            {
                "description": serializers.CharField(),
                "next_runs": serializers.ListField(child=serializers.DateTimeField()),
            },
        ),
    )
    @action(detail=False, methods=["post"])
    def preview(self, request: Request) -> Response:
        preview = SchedulePreviewSerializer(data=request.data)
        preview.is_valid(raise_exception=True)
        timer = preview.validated_data["timer"]
        fires, current = [], timezone.now()
        for _ in range(preview.validated_data["count"]):
            current = timer.next_after(current)
            fires.append(current.astimezone(timer.tz).isoformat())  # with the zone's offset, as reads
        return Response({"description": timing.describe(preview.validated_data["cron"]), "next_runs": fires})


class WorkflowViewSet(VersionedEdits, viewsets.ModelViewSet):
    queryset = Workflow.objects.all()
    serializer_class = WorkflowSerializer
    lookup_field = "name"
    lookup_value_regex = "[^/]+"
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]
    action_permissions = {"runs": ("view_workflow", "add_workflowrun", "add_run")}

    def perform_update(self, serializer: WorkflowSerializer) -> None:
        definitions.workflow_edited(serializer.save())

    def perform_destroy(self, instance: Workflow) -> None:
        definitions.delete_workflow(instance)

    @extend_schema(request=None, responses={201: WorkflowRunSerializer})
    @action(detail=True, methods=["post"])
    def runs(self, request: Request, name: str) -> Response:
        """Start a workflow run."""
        workflow = self.get_object()
        SubmitThrottle().take(request, workflow.runs_per_start)
        workflow_run = workflows.start(workflow, by=actor_name(request))
        workflow_run = WorkflowRun.objects.prefetch_related("step_runs").get(pk=workflow_run.pk)
        return Response(WorkflowRunSerializer(workflow_run).data, status=status.HTTP_201_CREATED)


class WorkflowRunViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    queryset = WorkflowRun.objects.all()
    serializer_class = WorkflowRunSerializer
    filterset_class = WorkflowRunFilter
    # A retry sends each step it runs again: a run each, as a submission is.
    action_permissions = {
        "cancel": ("change_workflowrun",), "retry": ("change_workflowrun", "add_run"),
        "events": ("view_workflowrun",),
    }  # fmt: skip

    def get_queryset(self) -> Any:
        return WorkflowRun.objects.select_related("workflow").prefetch_related("step_runs")

    def _control(self, request: Request, control: Any) -> Response:
        workflow_run = self.get_object()
        control(workflow_run, by=actor_name(request))
        return Response(WorkflowRunSerializer(self.get_queryset().get(pk=workflow_run.pk)).data)

    @extend_schema(responses=WorkflowRunEventSerializer(many=True))
    @action(detail=True, methods=["get"], pagination_class=OldestFirstCursorPagination)
    def events(self, request: Request, pk: str) -> Response:
        """The workflow run's own state history (its steps' are their runs' events)."""
        page = self.paginate_queryset(self.get_object().events.all())
        return self.get_paginated_response(WorkflowRunEventSerializer(page, many=True).data)

    @extend_schema(request=None, responses=WorkflowRunSerializer)
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str) -> Response:
        return self._control(request, workflows.cancel)

    @extend_schema(request=None, responses=WorkflowRunSerializer)
    @action(detail=True, methods=["post"])
    def retry(self, request: Request, pk: str) -> Response:
        again = len(workflows.steps_to_retry(self.get_object()))
        if again:  # each is sent again, as a submission is
            SubmitThrottle().take(request, again)
        return self._control(request, workflows.retry)


class WorkerViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Celery workers seen alive, online or offline, with the runs they execute."""

    queryset = Worker.objects.all()
    serializer_class = WorkerSerializer
    lookup_field = "hostname"
    lookup_value_regex = "[^/]+"
    pagination_class = OldestFirstCursorPagination

    def get_queryset(self) -> Any:
        running = Run.objects.filter(state=RunState.RUNNING, worker=OuterRef("hostname")).values("worker")
        count = Subquery(running.annotate(n=Count("id")).values("n")[:1], output_field=IntegerField())
        return Worker.objects.annotate(active_runs=Coalesce(count, 0))


class ChannelViewSet(VersionedEdits, viewsets.ModelViewSet):
    """Where alerts go: webhook URLs, Slack incoming webhooks, e-mail addresses."""

    queryset = Channel.objects.all()
    serializer_class = ChannelSerializer
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]
    action_permissions = {"test": ("change_channel",)}  # a test can disable the channel

    @extend_schema(request=None, responses=ChannelTestSerializer)
    @action(detail=True, methods=["post"])
    def test(self, request: Request, pk: str) -> Response:
        """Send a `test` notification now and say whether it was delivered; a permanent error
        disables the channel, as any notification's would."""
        channel = self.get_object()
        notification = notifications.send_test(channel)  # no transaction held: it waits on the receiver
        channel.refresh_from_db()
        delivered = notification.state == NotificationState.SENT
        return Response(
            {
                "delivered": delivered,
                "error": "" if delivered else notification.last_error,
                "notification": NotificationSerializer(notification).data,
                "channel": ChannelSerializer(channel).data,
            }
        )


class AlertRuleViewSet(VersionedEdits, viewsets.ModelViewSet):
    """What to watch, and which channels to tell."""

    queryset = AlertRule.objects.all()
    serializer_class = AlertRuleSerializer
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def get_queryset(self) -> Any:
        return AlertRule.objects.select_related("task", "workflow").prefetch_related("channels")


class AlertViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Alerts opened and resolved, newest first, each with its timeline and notifications."""

    queryset = Alert.objects.all()
    serializer_class = AlertSerializer
    filterset_class = AlertFilter

    def get_queryset(self) -> Any:
        return Alert.objects.select_related("rule", "task").prefetch_related(
            "events", Prefetch("notifications", queryset=Notification.objects.select_related("channel"))
        )
