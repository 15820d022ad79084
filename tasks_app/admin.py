"""The admin: a window on the same domain methods the API uses."""

from __future__ import annotations

import datetime as dt
import graphlib
import json
from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django_celery_beat import admin as beat_admin
from django_celery_beat.models import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask
from rest_framework.authtoken.admin import TokenAdmin
from rest_framework.authtoken.models import TokenProxy

from tasks_app import controls, definitions, handlers, notifications, submission, workflows
from tasks_app.choices import Actor, AlertState, NotificationState, RunState, RunTrigger
from tasks_app.definitions import MIRROR_TASK, InUse, validate_steps
from tasks_app.lifecycle import InvalidTransition
from tasks_app.models import (
    Alert,
    AlertEvent,
    AlertRule,
    ApiToken,
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
from tasks_app.models.schedules import schedule_problems
from tasks_app.models.workflows import InvalidWorkflow
from tasks_app.submission import RunRequest
from tasks_app.timing import InvalidSchedule

NEEDS_ADD_WORKFLOWRUN = "a schedule of a workflow starts workflow runs: this needs add_workflowrun."


class MakesRuns:
    """For admins whose actions make runs: those need the `add_run` permission, as in the API.

    An action's `permissions` are alternatives (the admin offers it with any one of them),
    so an action that needs several has one `has_<name>_permission` that asks for all.
    """

    def has_run_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("tasks_app.add_run")


class SeenValuesForm(forms.ModelForm):
    """A form that carries the values the operator saw (hidden initials): its changed_data
    names the fields they changed, not those some other writer changed since."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for field in self.fields.values():
            field.show_hidden_initial = True


class ChangedFieldsOnly:
    """An edit writes only the fields the operator changed: a save of the whole row would
    put back what another writer (the API, beat) changed while the page was open."""

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        if not change:
            super().save_model(request, obj, form, change)
            return
        if form.changed_data:
            obj.save(update_fields=[*form.changed_data, "updated_at"])
        obj.refresh_from_db()  # what is stored now, not what the page showed


def _at_seconds(value: dt.datetime | None) -> str:
    """An instant to the second (the admin's own format stops at the minute)."""
    return date_format(timezone.localtime(value), "Y-m-d H:i:s T") if value else "-"


def _alert_links(alerts: QuerySet[Alert]) -> str:
    return format_html_join(
        mark_safe("<br>"),
        '<a href="{}">{}</a>: {} (rule {}, since {})',
        (
            (reverse("admin:tasks_app_alert_change", args=[a.pk]), a.subject, a.reason, a.rule.name,
             _at_seconds(a.opened_at))
            for a in alerts
        ),
    ) or "-"  # fmt: skip


class ShowsOpenAlerts:
    """For the pages of what alerts concern (a task, a schedule): its open alerts, linked, for
    those who may view alerts."""

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        fields = super().get_readonly_fields(request, obj)
        if obj is None or not request.user.has_perm("tasks_app.view_alert"):
            return fields
        return [*fields, "open_alerts"]

    @admin.display(description="open alerts")
    def open_alerts(self, obj: Task | Schedule) -> str:
        return _alert_links(obj.alerts.filter(state=AlertState.OPEN).select_related("rule"))


def _delete_each(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet, delete: Any) -> None:
    """Delete each row by the domain's rule (definitions.py), saying why for any it refuses:
    the confirmation page listed what holds them, but a run may have started since."""
    for obj in queryset:
        try:
            delete(obj)
        except InUse as exc:
            modeladmin.message_user(request, str(exc), messages.WARNING)


class TaskForm(SeenValuesForm):
    # Only registered handlers can be picked: a handler is code, never text from a form.
    handler = forms.ChoiceField(
        choices=(),
        error_messages={
            "invalid_choice": "No handler named %(value)r is registered in this process: choose one that is."
        },
    )

    class Meta:
        model = Task
        fields = Task.EDITABLE_FIELDS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        choices = [(h.name, h.name) for h in handlers.all_handlers()]
        stored = self.instance.handler if self.instance.pk else ""
        if stored and handlers.find(stored) is None:
            # Registered on the workers only, or no longer anywhere: shown and kept as it is,
            # never replaced by the first choice. Only the stored value is offered this way.
            choices.insert(0, (stored, f"{stored} (not registered in this process)"))
        self.fields["handler"].choices = choices

    def clean_name(self) -> str:
        name = self.cleaned_data["name"]
        problem = self.instance.rename_problem(name)  # the instance still holds the stored name here
        if problem:
            raise forms.ValidationError(problem)
        return name


@admin.register(Task)
class TaskAdmin(ShowsOpenAlerts, MakesRuns, ChangedFieldsOnly, admin.ModelAdmin):
    form = TaskForm
    list_display = ["name", "handler", "queue", "priority", "max_retries", "enabled", "updated_at"]
    list_filter = ["enabled", "handler", "queue", "concurrency_policy"]
    search_fields = ["name", "description"]
    actions = ["run_now"]

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> Any:
        # Schedules protect their task (on_delete=PROTECT); workflows name it in their steps;
        # unfinished runs hold it: the same rule as the API's (definitions.delete_problem).
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        protected = [
            *protected,
            *(used for task in objs for used in task.used_by() if used.startswith("workflow")),
            *(
                f"{count} unfinished run(s) of {task}"
                for task in objs
                if (count := task.runs.active().count())
            ),
        ]
        return deleted, counts, perms_needed, protected

    def delete_model(self, request: HttpRequest, obj: Task) -> None:
        self.delete_queryset(request, Task.objects.filter(pk=obj.pk))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        _delete_each(self, request, queryset, definitions.delete_task)

    @admin.action(description="Run now", permissions=["run"])
    def run_now(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        tasks = []
        for task in queryset:
            try:
                submission.ensure_enabled(task)  # the API's rule
                tasks.append(task)
            except submission.TaskDisabled as exc:
                self.message_user(request, str(exc), messages.WARNING)
        if not tasks:
            self.message_user(request, "No enabled task was selected.", messages.WARNING)
            return
        runs = submission.submit_many(
            [RunRequest(task=task, trigger=RunTrigger.MANUAL) for task in tasks],
            by=request.user.get_username(),
        )
        self.message_user(request, f"Submitted {len(runs)} run(s): {', '.join(str(r.pk) for r in runs)}.")


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class RunEventInline(ReadOnlyInline):
    model = RunEvent
    fields = ["at", "from_state", "to_state", "reason", "actor", "actor_name"]
    readonly_fields = fields


class RunLogInline(ReadOnlyInline):
    model = RunLog
    fields = ["at", "level", "message"]
    readonly_fields = fields


def _control(control: Callable[..., None], description: str) -> Callable[..., None]:
    def act(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Run]) -> None:
        done, refused = 0, []
        for run in queryset.select_related("task"):
            try:
                control(run, by=request.user.get_username(), actor=Actor.USER)
                done += 1
            except InvalidTransition as exc:
                refused.append(str(exc))
        if done:
            modeladmin.message_user(request, f"{description}: {done} run(s).")
        for reason in refused[:10]:
            modeladmin.message_user(request, reason, messages.WARNING)

    act.__name__ = control.__name__
    return admin.action(description=f"{description} selected runs", permissions=["change"])(act)


def _pretty(value: Any) -> str:
    if value is None:
        return "-"
    return format_html("<pre>{}</pre>", json.dumps(value, indent=2))


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "task",
        "state",
        "trigger",
        "attempt",
        "created_at",
        "started_at",
        "duration_s",
        "worker",
    ]
    list_filter = ["state", "trigger", "task", "created_at"]
    date_hierarchy = "created_at"
    search_fields = ["=id", "task__name", "idempotency_key"]
    list_select_related = ["task"]
    inlines = [RunEventInline, RunLogInline]
    actions = [
        _control(controls.cancel, "Cancel"),
        _control(controls.pause, "Pause"),
        _control(controls.resume, "Resume"),
        _control(controls.retry, "Retry"),
    ]
    readonly_fields = [
        "task",
        "state",
        "trigger",
        "args",
        "kwargs",
        "priority",
        "attempt",
        "retries",
        "message_number",
        "idempotency_key",
        "schedule",
        "scheduled_for",
        "step",
        "due_at",
        "worker",
        "fence",
        "created_at",
        "started_at",
        "finished_at",
        "duration_s",
        "result_pretty",
        "error_pretty",
        "progress",
        "checkpoint",
    ]
    fields = readonly_fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # runs are submitted (the task's "Run now" action, or the API)

    def save_model(self, request: HttpRequest, obj: Run, form: Any, change: bool) -> None:
        # Every field is read-only; a save() would write stale columns over a worker's update.
        pass

    @admin.display(description="duration (s)")
    def duration_s(self, run: Run) -> str:
        return f"{run.duration.total_seconds():.3f}" if run.duration else "-"

    @admin.display(description="result")
    def result_pretty(self, run: Run) -> str:
        return _pretty(run.result)

    @admin.display(description="error")
    def error_pretty(self, run: Run) -> str:
        return _pretty(run.error)


class ScheduleForm(SeenValuesForm):
    class Meta:
        model = Schedule
        fields = Schedule.EDITABLE_FIELDS

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        # What will be stored: the row as it is now, with the fields the operator changed
        # (ChangedFieldsOnly writes no others), so an edit made meanwhile is checked too.
        stored = {field: getattr(self.instance, field, None) for field in Schedule.EDITABLE_FIELDS}
        if self.instance.pk:
            data_now = {**stored, **{field: data.get(field) for field in self.changed_data}}
        else:
            data_now = data
        for field, problem in schedule_problems(data_now).items():
            self.add_error(field if field in self.fields else None, problem)
        return data


@admin.register(Schedule)
class ScheduleAdmin(ShowsOpenAlerts, MakesRuns, ChangedFieldsOnly, admin.ModelAdmin):
    form = ScheduleForm
    list_display = ["id", "task", "kind_text", "enabled", "misfire_policy", "next_fire_at", "last_fired_at",
                    "invalid_reason"]  # fmt: skip
    list_filter = ["enabled", "misfire_policy", "task"]
    list_select_related = ["task"]
    readonly_fields = ["invalid_reason", "next_fire_at", "last_fired_at", "periodic_task"]
    actions = ["pause", "resume", "fire_now"]

    # A schedule makes runs: adding or changing one needs add_run as well.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return super().has_add_permission(request) and self.has_run_permission(request)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_change_permission(request, obj) and self.has_run_permission(request)

    def save_model(self, request: HttpRequest, obj: Schedule, form: Any, change: bool) -> None:
        if obj.workflow_id and not self.has_start_permission(request):
            raise PermissionDenied(NEEDS_ADD_WORKFLOWRUN)
        with transaction.atomic():
            super().save_model(request, obj, form, change)
            definitions.mirror(obj)

    def has_start_permission(self, request: HttpRequest) -> bool:
        """What a schedule of a workflow needs besides: to start workflow runs."""
        return request.user.has_perm("tasks_app.add_workflowrun")

    def _may_fire(self, request: HttpRequest, schedule: Schedule) -> bool:
        if schedule.workflow_id and not self.has_start_permission(request):
            self.message_user(request, f"{schedule}: {NEEDS_ADD_WORKFLOWRUN}", messages.WARNING)
            return False
        return True

    def delete_model(self, request: HttpRequest, obj: Schedule) -> None:
        definitions.delete_schedule(obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Schedule]) -> None:
        definitions.delete_schedules(queryset)

    def has_pause_permission(self, request: HttpRequest) -> bool:
        return super().has_change_permission(request)  # stopping fires makes no run

    @admin.action(description="Pause selected schedules", permissions=["pause"])
    def pause(self, request: HttpRequest, queryset: QuerySet[Schedule]) -> None:
        self._set_enabled(request, queryset, False)

    def has_resume_permission(self, request: HttpRequest) -> bool:
        return self.has_change_permission(request)  # change_schedule and add_run

    def has_fire_permission(self, request: HttpRequest) -> bool:
        return self.has_view_permission(request) and self.has_run_permission(request)

    @admin.action(description="Resume selected schedules", permissions=["resume"])
    def resume(self, request: HttpRequest, queryset: QuerySet[Schedule]) -> None:
        self._set_enabled(request, queryset, True)

    def _set_enabled(self, request: HttpRequest, queryset: QuerySet[Schedule], enabled: bool) -> None:
        changed = sum(
            definitions.set_enabled(schedule, enabled)
            for schedule in queryset
            if not enabled or self._may_fire(request, schedule)
        )
        self.message_user(request, f"{'Resumed' if enabled else 'Paused'} {changed} schedule(s).")

    @admin.action(description="Fire selected schedules now", permissions=["fire"])
    def fire_now(self, request: HttpRequest, queryset: QuerySet[Schedule]) -> None:
        fired = 0
        for schedule in queryset.select_related("task", "workflow"):
            if not self._may_fire(request, schedule):
                continue
            try:
                definitions.fire_now(schedule, by=request.user.get_username())
                fired += 1
            except submission.TaskDisabled as exc:
                self.message_user(request, f"{schedule}: {exc}", messages.WARNING)
            except (InvalidSchedule, InvalidWorkflow) as exc:  # a row written past validation
                self.message_user(request, f"{schedule}: {exc}", messages.WARNING)
        self.message_user(request, f"Fired {fired} schedule(s).")


# --- django-celery-beat's models -----------------------------------------------------
# Each platform schedule is shown to django-celery-beat as a mirror (definitions.mirror): a
# PeriodicTask that beat never sends, on a crontab that cannot hold seconds. An edit there
# would change nothing that fires (unticking "enabled" would not stop the schedule), so a
# mirror and the schedule rows mirrors use can be viewed only, and link to the schedule.
# Other entries stay editable: beat sends them.
admin.site.unregister([PeriodicTask, CrontabSchedule, IntervalSchedule, ClockedSchedule])


def _is_mirror(periodic_task: PeriodicTask | None) -> bool:
    return periodic_task is not None and periodic_task.task == MIRROR_TASK


def _schedule_links(schedules: list[Schedule]) -> str:
    return format_html_join(
        ", ",
        '<a href="{}">schedule {}</a>',
        ((reverse("admin:tasks_app_schedule_change", args=[s.pk]), s.pk) for s in schedules),
    )


class PeriodicTaskForm(beat_admin.PeriodicTaskForm):
    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if data.get("task") == MIRROR_TASK:
            raise forms.ValidationError(
                f"{MIRROR_TASK!r} names the mirrors of platform schedules, which beat never sends: "
                "add a platform schedule instead."
            )
        return data


@admin.register(PeriodicTask)
class PeriodicTaskAdmin(beat_admin.PeriodicTaskAdmin):
    form = PeriodicTaskForm
    list_display = (*beat_admin.PeriodicTaskAdmin.list_display, "fired_by")
    readonly_fields = (*beat_admin.PeriodicTaskAdmin.readonly_fields, "fired_by")

    def get_queryset(self, request: HttpRequest) -> QuerySet[PeriodicTask]:
        return super().get_queryset(request).select_related("platform_schedule")

    def get_fieldsets(self, request: HttpRequest, obj: PeriodicTask | None = None) -> Any:
        fieldsets = super().get_fieldsets(request, obj)
        if not _is_mirror(obj):
            return fieldsets
        what = "Mirror of a platform schedule: edit, pause, resume or fire the schedule itself"
        return [(what, {"fields": ["fired_by"]}), *fieldsets]

    def has_change_permission(self, request: HttpRequest, obj: PeriodicTask | None = None) -> bool:
        return super().has_change_permission(request, obj) and not _is_mirror(obj)

    def has_delete_permission(self, request: HttpRequest, obj: PeriodicTask | None = None) -> bool:
        # A mirror goes with its schedule; one left behind by a schedule deleted past the
        # domain (no platform_schedule) fires nothing and may go.
        live_mirror = _is_mirror(obj) and getattr(obj, "platform_schedule", None) is not None
        return super().has_delete_permission(request, obj) and not live_mirror

    @admin.display(description="fired by")
    def fired_by(self, periodic_task: PeriodicTask) -> str:
        if not _is_mirror(periodic_task):
            return "beat"
        schedule = getattr(periodic_task, "platform_schedule", None)
        if schedule is None:
            return "nothing: the platform schedule it mirrored was deleted"
        return format_html(
            "the platform, as {}: {}, {}",
            _schedule_links([schedule]),
            schedule.kind_text,
            "enabled" if schedule.enabled else "paused",
        )

    # Beat's bulk actions write PeriodicTask rows directly: on a mirror they would change only
    # what it shows. They act on the other entries, and say where the mirrored ones are run.
    def _except_mirrors(self, action: Any, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        mirrors = queryset.filter(task=MIRROR_TASK)
        if mirrors.exists():
            self.message_user(
                request,
                format_html(
                    "Mirrors of platform schedules were left as they are: pause, resume or fire the "
                    "schedules themselves ({}).",
                    _schedule_links(list(Schedule.objects.filter(periodic_task__in=mirrors))),
                ),
                messages.WARNING,
            )
        rest = queryset.exclude(task=MIRROR_TASK)
        if rest.exists():
            action(request, rest)

    @admin.action(description=beat_admin.PeriodicTaskAdmin.enable_tasks.short_description)
    def enable_tasks(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        self._except_mirrors(super().enable_tasks, request, queryset)

    @admin.action(description=beat_admin.PeriodicTaskAdmin.disable_tasks.short_description)
    def disable_tasks(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        self._except_mirrors(super().disable_tasks, request, queryset)

    @admin.action(description=beat_admin.PeriodicTaskAdmin.toggle_tasks.short_description)
    def toggle_tasks(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        self._except_mirrors(super().toggle_tasks, request, queryset)

    @admin.action(description=beat_admin.PeriodicTaskAdmin.run_tasks.short_description)
    def run_tasks(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        self._except_mirrors(super().run_tasks, request, queryset)


class MirroredRows:
    """For beat's schedule rows: one that a mirror uses is read-only (an edit would change
    only what the mirror shows, and a delete would take the mirror with it)."""

    def _used_by_mirror(self, row: Any) -> bool:
        return row is not None and row.periodictask_set.filter(task=MIRROR_TASK).exists()

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_change_permission(request, obj) and not self._used_by_mirror(obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_delete_permission(request, obj) and not self._used_by_mirror(obj)


@admin.register(CrontabSchedule)
class CrontabScheduleAdmin(MirroredRows, beat_admin.CrontabScheduleAdmin):
    pass


@admin.register(IntervalSchedule)
class IntervalScheduleAdmin(MirroredRows, beat_admin.IntervalScheduleAdmin):
    pass


@admin.register(ClockedSchedule)
class ClockedScheduleAdmin(MirroredRows, beat_admin.ClockedScheduleAdmin):
    pass


class WorkflowForm(SeenValuesForm):
    class Meta:
        model = Workflow
        fields = Workflow.EDITABLE_FIELDS

    def clean_steps(self) -> Any:
        try:
            return validate_steps(self.cleaned_data["steps"])
        except InvalidWorkflow as exc:
            raise forms.ValidationError(str(exc)) from None


@admin.register(Workflow)
class WorkflowAdmin(MakesRuns, ChangedFieldsOnly, admin.ModelAdmin):
    form = WorkflowForm
    list_display = ["name", "description", "updated_at"]
    search_fields = ["name", "description"]
    actions = ["start"]

    def save_model(self, request: HttpRequest, obj: Workflow, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        definitions.workflow_edited(obj)  # the edit may mend the schedules set aside

    def has_start_permission(self, request: HttpRequest) -> bool:
        return (
            self.has_view_permission(request)
            and self.has_run_permission(request)
            and request.user.has_perm("tasks_app.add_workflowrun")
        )

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> Any:
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        problems = [
            problem for workflow in objs if (problem := definitions.workflow_delete_problem(workflow))
        ]
        return deleted, counts, perms_needed, [*protected, *problems]

    def delete_model(self, request: HttpRequest, obj: Workflow) -> None:
        self.delete_queryset(request, Workflow.objects.filter(pk=obj.pk))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Workflow]) -> None:
        _delete_each(self, request, queryset, definitions.delete_workflow)

    @admin.action(description="Start a run of the selected workflows", permissions=["start"])
    def start(self, request: HttpRequest, queryset: QuerySet[Workflow]) -> None:
        started = []
        for workflow in queryset:
            try:
                started.append(workflows.start(workflow, by=request.user.get_username()).pk)
            except InvalidWorkflow as exc:  # its tasks are gone
                self.message_user(request, f"Workflow {workflow}: {exc}", messages.WARNING)
        if started:
            self.message_user(request, f"Started workflow run(s) {', '.join(map(str, started))}.")


STATE_COLOURS = {
    "created": "#e0e0e0", "pending": "#fff3b0", "running": "#9ecbff", "retrying": "#ffd59e",
    "paused": "#d7c4f2", "completed": "#a8e6a1", "failed": "#f4a3a3", "cancelled": "#c9c9c9",
    "skipped": "#f0f0f0",
}  # fmt: skip


def dag_svg(workflow_run: WorkflowRun) -> str:
    """The workflow run's DAG as inline SVG: a column per depth, each step coloured by
    its state and linked to its run. Drawn on the server: no script, no network."""
    steps = {step["key"]: step for step in workflow_run.steps}
    depth: dict[str, int] = {}
    for key in graphlib.TopologicalSorter({k: s["depends_on"] for k, s in steps.items()}).static_order():
        depth[key] = 1 + max((depth[d] for d in steps[key]["depends_on"]), default=-1)
    columns: dict[int, list[str]] = {}
    for key in steps:
        columns.setdefault(depth[key], []).append(key)
    width, height, gap_x, gap_y = 140, 36, 60, 18
    where = {
        key: (col * (width + gap_x) + 10, row * (height + gap_y) + 10)
        for col, keys in columns.items()
        for row, key in enumerate(keys)
    }
    current = workflows.latest_runs(workflow_run.pk)
    parts = []
    for key, step in steps.items():
        x, y = where[key]
        for upstream in step["depends_on"]:
            ux, uy = where[upstream]
            parts.append(
                format_html(
                    '<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#888" marker-end="url(#arrow)"/>',
                    ux + width, uy + height // 2, x, y + height // 2,
                )
            )  # fmt: skip
    for key in steps:
        x, y = where[key]
        run = current.get(key)
        state = run.state if run else "created"
        link = reverse("admin:tasks_app_run_change", args=[run.pk]) if run else "#"
        parts.append(
            format_html(
                '<a href="{}"><rect x="{}" y="{}" width="{}" height="{}" rx="6" fill="{}" stroke="#555"/>'
                '<text x="{}" y="{}" font-size="12" font-family="sans-serif">{} · {}</text>'
                "<title>{}: {}</title></a>",
                link, x, y, width, height, STATE_COLOURS.get(state, "#fff"),
                x + 8, y + 22, key[:14], state, key, state,
            )
        )  # fmt: skip
    total_w = (max(columns) + 1) * (width + gap_x) + 10
    total_h = max(len(keys) for keys in columns.values()) * (height + gap_y) + 10
    return format_html(
        '<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" class="workflow-dag">'
        '<defs><marker id="arrow" markerWidth="8" markerHeight="8" refX="8" refY="4" orient="auto">'
        '<path d="M0,0 L8,4 L0,8 z" fill="#888"/></marker></defs>{}</svg>',
        total_w, total_h, mark_safe("".join(parts)),
    )  # fmt: skip


class WorkflowRunEventInline(ReadOnlyInline):
    model = WorkflowRunEvent
    fields = ["at", "from_state", "to_state", "reason", "actor", "actor_name"]
    readonly_fields = fields


@admin.register(WorkflowRun)
class WorkflowRunAdmin(MakesRuns, admin.ModelAdmin):
    list_display = ["id", "workflow", "state", "created_at", "finished_at", "created_by"]
    list_filter = ["state", "workflow", "created_at"]
    list_select_related = ["workflow"]
    readonly_fields = ["workflow", "state", "dag", "created_by", "created_at", "started_at", "finished_at",
                       "schedule", "scheduled_for"]  # fmt: skip
    fields = readonly_fields
    inlines = [WorkflowRunEventInline]
    actions = ["cancel", "retry"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: WorkflowRun, form: Any, change: bool) -> None:
        pass  # read-only: controls go through the actions

    @admin.display(description="steps")
    def dag(self, workflow_run: WorkflowRun) -> str:
        return dag_svg(workflow_run)

    @admin.action(description="Cancel selected workflow runs", permissions=["change"])
    def cancel(self, request: HttpRequest, queryset: QuerySet[WorkflowRun]) -> None:
        self._control(request, queryset, workflows.cancel)

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return self.has_change_permission(request) and self.has_run_permission(request)

    @admin.action(description="Retry selected workflow runs", permissions=["retry"])
    def retry(self, request: HttpRequest, queryset: QuerySet[WorkflowRun]) -> None:
        self._control(request, queryset, workflows.retry)

    def _control(self, request: HttpRequest, queryset: QuerySet[WorkflowRun], control: Any) -> None:
        for workflow_run in queryset:
            try:
                control(workflow_run, by=request.user.get_username())
            except (workflows.WorkflowConflict, InvalidWorkflow, InvalidTransition) as exc:
                self.message_user(request, str(exc), messages.WARNING)


@admin.register(Worker)
class WorkerAdmin(admin.ModelAdmin):
    list_display = ["hostname", "is_online", "concurrency", "queues", "active_runs", "last_heartbeat", "pid"]
    readonly_fields = ["hostname", "queues", "concurrency", "pid", "version", "started_at", "last_heartbeat",
                       "stopped_at"]  # fmt: skip

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # workers record themselves

    @admin.display(boolean=True, description="online")
    def is_online(self, worker: Worker) -> bool:
        return worker.online

    @admin.display(description="active runs")
    def active_runs(self, worker: Worker) -> int:
        return Run.objects.filter(state=RunState.RUNNING, worker=worker.hostname).count()


# DRF's token admin lists every key in clear; ours shows its first characters only. Tokens
# are made with `manage.py drf_create_token USER`; here they can be seen and revoked.
admin.site.unregister(TokenProxy)


@admin.register(ApiToken)
class ApiTokenAdmin(TokenAdmin):
    list_display = ["masked_key", "user", "created"]
    fields = ["masked_key", "user", "created"]
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="key")
    def masked_key(self, token: ApiToken) -> str:
        return token.masked_key


# --- alerts ----------------------------------------------------------------------------


class SecretField(forms.CharField):
    """A secret that is written, never shown: the input starts empty each time, and an empty
    one keeps what is stored."""

    widget = forms.PasswordInput(render_value=False)

    def has_changed(self, initial: Any, data: Any) -> bool:
        return bool(data)


class ChannelForm(SeenValuesForm):
    secret = SecretField(
        required=False,
        strip=False,  # the key as typed: the receiver computes the HMAC with it
        max_length=255,
        help_text="The HMAC-SHA256 key of a webhook's X-Scheduler-Signature. Empty: no signature.",
    )

    class Meta:
        model = Channel
        fields = ["name", "kind", "target", "secret", "enabled"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Neither as the input's value nor as its hidden initial: never into the page.
        self.initial.pop("secret", None)
        self.fields["secret"].show_hidden_initial = False
        if self.instance.secret:
            self.fields["secret"].help_text = "A secret is set: leave this empty to keep it, or type another."

    def clean_secret(self) -> str:
        return self.cleaned_data["secret"] or self.instance.secret

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        named = {"kind", "target"} & set(self.changed_data)
        if self.instance.pk and not named:
            # As in the API: a host since dropped from the allowlist still lets the channel be
            # renamed or disabled.
            return data
        # What will be stored: the row as it is now, with the fields the operator changed.
        now = {"kind": self.instance.kind, "target": self.instance.target, **{f: data.get(f) for f in named}}
        kind, target = now["kind"], now["target"]
        if kind and target:
            problem = notifications.target_problem(kind, target)
            if problem:
                self.add_error("target", problem)
        return data


@admin.register(Channel)
class ChannelAdmin(ChangedFieldsOnly, admin.ModelAdmin):
    form = ChannelForm
    change_form_template = "tasks_app/admin/channel_change_form.html"
    list_display = ["name", "kind", "target", "enabled", "last_error"]
    list_filter = ["enabled", "kind"]
    search_fields = ["name", "target"]
    readonly_fields = ["last_error", "last_error_at_seconds"]
    actions = ["send_test"]

    def save_model(self, request: HttpRequest, obj: Channel, form: Any, change: bool) -> None:
        if change and "enabled" in form.changed_data and obj.enabled:
            # A channel enabled again starts clean: the error that disabled it is history.
            obj.last_error, obj.last_error_at = "", None
            obj.save(update_fields=[*form.changed_data, "last_error", "last_error_at", "updated_at"])
            obj.refresh_from_db()
            return
        super().save_model(request, obj, form, change)

    def get_fields(self, request: HttpRequest, obj: Channel | None = None) -> Any:
        fields = super().get_fields(request, obj)
        if obj is not None and not self.has_change_permission(request, obj):
            # A view-only page shows each field's stored value: the secret's would be in clear.
            fields = ["secret_text" if field == "secret" else field for field in fields]
        return fields

    @admin.display(description="secret")
    def secret_text(self, channel: Channel) -> str:
        return "a secret is set" if channel.secret else "none: deliveries are not signed"

    @admin.display(description="last error at")
    def last_error_at_seconds(self, channel: Channel) -> str:
        return _at_seconds(channel.last_error_at)

    def get_urls(self) -> list[URLPattern]:
        test = self.admin_site.admin_view(self.send_test_view)  # signed in, staff, CSRF-checked
        return [path("<path:object_id>/test/", test, name="tasks_app_channel_test"), *super().get_urls()]

    def send_test_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The change page's "Send a test" button."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        channel = self.get_object(request, unquote(object_id))
        if channel is None:
            raise Http404
        if not self.has_change_permission(request, channel):  # a test can disable the channel
            raise PermissionDenied
        self._test(request, channel)
        return HttpResponseRedirect(reverse("admin:tasks_app_channel_change", args=[channel.pk]))

    @admin.action(description="Send a test notification", permissions=["change"])
    def send_test(self, request: HttpRequest, queryset: QuerySet[Channel]) -> None:
        for channel in queryset:
            self._test(request, channel)

    def _test(self, request: HttpRequest, channel: Channel) -> None:
        was_enabled = channel.enabled
        notification = notifications.send_test(channel)  # no transaction held: it waits on the receiver
        channel.refresh_from_db()
        if notification.state == NotificationState.SENT:
            self.message_user(request, f"Test of channel {channel.name}: delivered.", messages.SUCCESS)
            return
        disabled = (
            " The channel was disabled: fix its target, then enable it again."
            if was_enabled and not channel.enabled
            else ""
        )
        self.message_user(
            request,
            f"Test of channel {channel.name}: not delivered: {notification.last_error}.{disabled}",
            messages.ERROR,
        )


class AlertRuleForm(SeenValuesForm):
    class Meta:
        model = AlertRule
        fields = [*AlertRule.EDITABLE_FIELDS, "channels"]

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        # The API's rule, on the row as it is now with the fields the operator changed (the
        # admin writes no others).
        if self.instance.pk:
            stored = {field: getattr(self.instance, field) for field in AlertRule.EDITABLE_FIELDS}
            data_now = {**stored, **{field: data.get(field) for field in self.changed_data}}
        else:
            data_now = data
        for field, problem in rule_problems(data_now).items():
            if field not in self.errors:  # a value refused already is not also missing
                self.add_error(field if field in self.fields else None, problem)
        return data


@admin.register(AlertRule)
class AlertRuleAdmin(admin.ModelAdmin):
    form = AlertRuleForm
    list_display = ["name", "condition", "scope", "enabled", "channel_names"]
    list_filter = ["enabled", "condition"]
    search_fields = ["name"]
    filter_horizontal = ["channels"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[AlertRule]:
        return super().get_queryset(request).select_related("task", "workflow").prefetch_related("channels")

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "schedule":  # each schedule's name says what it fires
            kwargs["queryset"] = Schedule.objects.select_related("task", "workflow")
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    @admin.display(description="scope")
    def scope(self, rule: AlertRule) -> str:
        return rule.scope_text

    @admin.display(description="channels")
    def channel_names(self, rule: AlertRule) -> str:
        return ", ".join(channel.name for channel in rule.channels.all()) or "-"

    # As ChangedFieldsOnly: an edit writes only what the operator changed. The channels are
    # rows of their own table (save_related), not a column.
    def save_model(self, request: HttpRequest, obj: AlertRule, form: Any, change: bool) -> None:
        if not change:
            obj.save()
            return
        columns = [field for field in form.changed_data if field != "channels"]
        if columns:
            obj.save(update_fields=[*columns, "updated_at"])
        obj.refresh_from_db()

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        if not change or "channels" in form.changed_data:
            form.instance.channels.set(form.cleaned_data["channels"])
        for formset in formsets:
            self.save_formset(request, form, formset, change)


class OfTheAlert:
    """An inline of an alert's own rows (its timeline, its notifications): seen by whoever may
    view the alert, changed by no one."""

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm("tasks_app.view_alert")


class AlertEventInline(OfTheAlert, ReadOnlyInline):
    model = AlertEvent
    verbose_name_plural = "timeline"
    fields = ["at_seconds", "kind", "reason"]
    readonly_fields = fields

    @admin.display(description="at")
    def at_seconds(self, event: AlertEvent) -> str:
        return _at_seconds(event.at)


class NotificationInline(OfTheAlert, ReadOnlyInline):
    model = Notification
    fk_name = "alert"
    fields = ["channel", "event", "state", "attempts", "last_error", "sent_at_seconds", "delivery_id"]
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[Notification]:
        return super().get_queryset(request).select_related("channel")

    @admin.display(description="event")
    def event(self, notification: Notification) -> str:
        return notification.kind

    @admin.display(description="sent at")
    def sent_at_seconds(self, notification: Notification) -> str:
        return _at_seconds(notification.sent_at)


@admin.register(Alert)
class AlertAdmin(admin.ModelAdmin):
    """Read-only: alerts are opened and resolved by tasks_app.alerts alone."""

    list_display = ["subject", "rule", "condition", "state", "opened", "resolved", "downtime_text"]
    list_filter = ["state", "rule", "rule__condition"]
    list_select_related = ["rule"]
    search_fields = ["subject", "reason"]
    ordering = ["-opened_at", "-id"]
    fields = [
        "rule", "condition", "subject", "state", "reason", "resolution", "opened", "resolved",
        "downtime_text", "run", "task", "schedule", "scheduled_for_seconds", "remind_at_seconds",
    ]  # fmt: skip
    readonly_fields = fields
    inlines = [AlertEventInline, NotificationInline]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # resolved alerts are pruned by retention

    @admin.display(description="condition", ordering="rule__condition")
    def condition(self, alert: Alert) -> str:
        return alert.rule.condition

    @admin.display(description="opened at", ordering="opened_at")
    def opened(self, alert: Alert) -> str:
        return _at_seconds(alert.opened_at)

    @admin.display(description="resolved at", ordering="resolved_at")
    def resolved(self, alert: Alert) -> str:
        return _at_seconds(alert.resolved_at)

    @admin.display(description="downtime")
    def downtime_text(self, alert: Alert) -> str:
        downtime = alert.downtime
        return "-" if downtime is None else str(dt.timedelta(seconds=round(downtime)))

    @admin.display(description="scheduled for")
    def scheduled_for_seconds(self, alert: Alert) -> str:
        return _at_seconds(alert.scheduled_for)

    @admin.display(description="next reminder at")
    def remind_at_seconds(self, alert: Alert) -> str:
        return _at_seconds(alert.remind_at)


# The index shows the open alerts above the app list (tasks_app/admin/index.html).
OPEN_ALERTS_SHOWN = 20
_site_index = admin.site.index


def _index_with_open_alerts(request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
    context = dict(extra_context or {})
    if request.user.has_perm("tasks_app.view_alert"):
        open_alerts = Alert.objects.filter(state=AlertState.OPEN)
        shown = list(open_alerts.select_related("rule").order_by("-opened_at", "-id")[:OPEN_ALERTS_SHOWN])
        context["open_alerts"] = shown
        context["open_alerts_count"] = open_alerts.count() if len(shown) == OPEN_ALERTS_SHOWN else len(shown)
    return _site_index(request, extra_context=context)


admin.site.index = _index_with_open_alerts
admin.site.index_template = "tasks_app/admin/index.html"
