"""The admin: a window on the same domain methods the API uses."""

from __future__ import annotations

import graphlib
import json
from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django_celery_beat import admin as beat_admin
from django_celery_beat.models import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask
from rest_framework.authtoken.admin import TokenAdmin
from rest_framework.authtoken.models import TokenProxy

from tasks_app import controls, definitions, handlers, submission, workflows
from tasks_app.choices import Actor, RunState, RunTrigger
from tasks_app.definitions import MIRROR_TASK, InUse, validate_steps
from tasks_app.lifecycle import InvalidTransition
from tasks_app.models import (
    ApiToken,
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
class TaskAdmin(MakesRuns, ChangedFieldsOnly, admin.ModelAdmin):
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
class ScheduleAdmin(MakesRuns, ChangedFieldsOnly, admin.ModelAdmin):
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
