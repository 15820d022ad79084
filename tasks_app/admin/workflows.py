"""Workflows and their runs, with each run's DAG drawn, its steps' durations and a
"retry from here" on each failed step."""

from __future__ import annotations

import datetime as dt
import graphlib
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from tasks_app import definitions, workflows
from tasks_app.admin.common import (
    STATE_COLOURS,
    ChangedFieldsOnly,
    MakesRuns,
    ReadOnlyInline,
    SeenValuesForm,
    at_seconds,
    delete_each,
    seconds_text,
    state_badge,
)
from tasks_app.choices import RunState, WorkflowState
from tasks_app.definitions import validate_steps
from tasks_app.lifecycle import InvalidTransition
from tasks_app.models import (
    Run,
    Workflow,
    WorkflowRun,
    WorkflowRunEvent,
)
from tasks_app.models.workflows import InvalidWorkflow


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
        delete_each(self, request, queryset, definitions.delete_workflow)

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


def step_duration(run: Run | None, now: dt.datetime) -> str:
    """How long a step's run took, or has been running."""
    if run is None or run.started_at is None:
        return "not started"
    if run.finished_at is None:
        return f"{seconds_text((now - run.started_at).total_seconds())} so far"
    return seconds_text((run.finished_at - run.started_at).total_seconds())


def dag_svg(workflow_run: WorkflowRun, runs: dict[str, Run], now: dt.datetime) -> str:
    """The workflow run's DAG as inline SVG: a column per depth, each step coloured by
    its state, with its duration, and linked to its run. Drawn on the server: no script,
    no network."""
    steps = {step["key"]: step for step in workflow_run.steps}
    depth: dict[str, int] = {}
    for key in graphlib.TopologicalSorter({k: s["depends_on"] for k, s in steps.items()}).static_order():
        depth[key] = 1 + max((depth[d] for d in steps[key]["depends_on"]), default=-1)
    columns: dict[int, list[str]] = {}
    for key in steps:
        columns.setdefault(depth[key], []).append(key)
    width, height, gap_x, gap_y = 170, 48, 50, 16
    where = {
        key: (col * (width + gap_x) + 10, row * (height + gap_y) + 10)
        for col, keys in columns.items()
        for row, key in enumerate(keys)
    }
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
        run = runs.get(key)
        state = run.state if run else "created"
        took = step_duration(run, now)
        link = reverse("admin:tasks_app_run_change", args=[run.pk]) if run else "#"
        # The duration is beside the link, not in it: the link's text is the step and its state.
        parts.append(
            format_html(
                '<g class="dag-step" data-step="{}" data-state="{}">'
                '<a href="{}"><rect x="{}" y="{}" width="{}" height="{}" rx="6" fill="{}" stroke="#555"/>'
                '<text x="{}" y="{}" font-size="12" font-family="sans-serif">{} · {}</text>'
                "<title>{}: {}, {}</title></a>"
                '<text class="dag-duration" x="{}" y="{}" font-size="11" font-family="sans-serif" '
                'fill="#333" pointer-events="none">{}</text></g>',
                key, state, link, x, y, width, height, STATE_COLOURS.get(state, "#fff"),
                x + 8, y + 19, key[:16], state, key, state, took,
                x + 8, y + 37, took,
            )
        )  # fmt: skip
    total_w = (max(columns) + 1) * (width + gap_x) + 10
    total_h = max(len(keys) for keys in columns.values()) * (height + gap_y) + 10
    return format_html(
        '<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" class="workflow-dag" role="img" '
        'aria-label="the steps of workflow run {}">'
        '<defs><marker id="arrow" markerWidth="8" markerHeight="8" refX="8" refY="4" orient="auto">'
        '<path d="M0,0 L8,4 L0,8 z" fill="#888"/></marker></defs>{}</svg>',
        total_w, total_h, workflow_run.pk, mark_safe("".join(parts)),
    )  # fmt: skip


def dag_legend() -> str:
    """What each colour of the DAG means: the run states, as badges of the same colours."""
    return format_html(
        '<ul class="dag-legend">{}</ul>',
        format_html_join(
            "", '<li title="{}">{}</li>', ((state.label, state_badge(state.value)) for state in RunState)
        ),
    )


RETRYABLE = (RunState.FAILED, RunState.CANCELLED)


def steps_table(workflow_run: WorkflowRun, runs: dict[str, Run], now: dt.datetime, retry_url: str) -> str:
    """Each step with its run, for reading (and for readers of no SVG), and a "retry from here"
    button on each failed or cancelled step when `retry_url` is given. The buttons submit
    the page's own form (no form may be nested in it) to `retry_url`."""
    rows = []
    for step in workflow_run.steps:
        run = runs.get(step["key"])
        state = run.state if run else "created"
        retry = (
            format_html(
                '<button type="submit" class="retry-from" name="step" value="{}" formaction="{}" '
                'formmethod="post">Retry from here</button>',
                step["key"], retry_url,
            )
            if retry_url and state in RETRYABLE
            else ""
        )  # fmt: skip
        link = (
            format_html(
                '<a href="{}">run {}</a>', reverse("admin:tasks_app_run_change", args=[run.pk]), run.pk
            )
            if run
            else "-"
        )
        cells = {
            "key": step["key"],
            "task": step["task"],
            "rule": step["trigger_rule"],
            "depends": ", ".join(step["depends_on"]) or "-",
            "state": state_badge(state),
            "attempt": run.attempt if run else 0,
            "started": at_seconds(run.started_at if run else None),
            "duration": step_duration(run, now),
            "run": link,
            "actions": retry,
        }
        rows.append(
            format_html(
                '<tr class="dag-step-row" data-step="{}">{}</tr>',
                step["key"],
                format_html_join("", '<td class="step-{}">{}</td>', cells.items()),
            )
        )
    return format_html(
        '<table class="dag-steps" id="workflow-steps"><thead><tr><th>step</th><th>task</th>'
        "<th>trigger rule</th><th>depends on</th><th>state</th><th>attempt</th><th>started</th>"
        "<th>duration</th><th>run</th><th></th></tr></thead><tbody>{}</tbody></table>",
        mark_safe("".join(rows)),
    )


class WorkflowRunEventInline(ReadOnlyInline):
    model = WorkflowRunEvent
    fields = ["at", "from_badge", "to_badge", "reason", "actor", "actor_name"]
    readonly_fields = fields

    @admin.display(description="from")
    def from_badge(self, event: WorkflowRunEvent) -> str:
        return state_badge(event.from_state) if event.from_state else "-"

    @admin.display(description="to")
    def to_badge(self, event: WorkflowRunEvent) -> str:
        return state_badge(event.to_state)


def workflow_run_title(workflow_run: WorkflowRun) -> str:
    return f"workflow run {workflow_run.pk} · {workflow_run.workflow.name} ({workflow_run.state})"


@admin.register(WorkflowRun)
class WorkflowRunAdmin(MakesRuns, admin.ModelAdmin):
    """Read-only: a workflow run moves only through its controls (the actions, and each
    failed step's "retry from here"), which call workflows.py as the API does."""

    change_form_template = "tasks_app/admin/workflowrun_change_form.html"
    list_display = ["id", "workflow", "state_shown", "created_at", "started_at", "finished_at", "duration",
                    "created_by"]  # fmt: skip
    list_filter = ["state", "workflow", "created_at"]
    list_select_related = ["workflow"]
    readonly_fields = ["workflow", "state_shown", "created_by", "created_at", "started_at", "finished_at",
                       "duration", "schedule", "scheduled_for"]  # fmt: skip
    fields = readonly_fields
    inlines = [WorkflowRunEventInline]
    actions = ["cancel", "retry"]

    class Media:
        css = {"all": ["tasks_app/workflow.css"]}

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    # Without obj, as Django's action checks ask: change_workflowrun allows the controls.
    # With obj, as a page asks: the page has nothing to save.
    def has_change_permission(self, request: HttpRequest, obj: WorkflowRun | None = None) -> bool:
        return obj is None and super().has_change_permission(request)

    def has_delete_permission(self, request: HttpRequest, obj: WorkflowRun | None = None) -> bool:
        return False

    @admin.display(description="state", ordering="state")
    def state_shown(self, workflow_run: WorkflowRun) -> str:
        return state_badge(workflow_run.state)

    @admin.display(description="duration")
    def duration(self, workflow_run: WorkflowRun) -> str:
        if workflow_run.started_at is None or workflow_run.finished_at is None:
            return "-"
        return seconds_text((workflow_run.finished_at - workflow_run.started_at).total_seconds())

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict | None = None
    ) -> HttpResponse:
        workflow_run = self.get_object(request, unquote(object_id))
        if workflow_run is not None and self.has_view_permission(request, workflow_run):
            now = timezone.now()
            runs = workflows.latest_runs(workflow_run.pk)
            may_retry = workflow_run.state in (WorkflowState.FAILED, WorkflowState.CANCELLED) and (
                self.has_retry_permission(request)
            )
            retry_url = (
                reverse("admin:tasks_app_workflowrun_retry_from", args=[workflow_run.pk]) if may_retry else ""
            )
            extra_context = {
                **(extra_context or {}),
                "title": workflow_run_title(workflow_run),
                "subtitle": None,
                "workflow_dag": dag_svg(workflow_run, runs, now),
                "workflow_legend": dag_legend(),
                "workflow_steps": steps_table(workflow_run, runs, now, retry_url),
            }
        return super().change_view(request, object_id, form_url, extra_context)

    def get_urls(self) -> list[URLPattern]:
        retry_from = self.admin_site.admin_view(self.retry_from_view)  # signed in, staff, CSRF-checked
        return [
            path("<path:object_id>/retry-from/", retry_from, name="tasks_app_workflowrun_retry_from"),
            *super().get_urls(),
        ]

    def retry_from_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """A step's "retry from here" button: that step and its downstream steps again."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        workflow_run = self.get_object(request, unquote(object_id))
        if workflow_run is None:
            raise Http404
        if not self.has_retry_permission(request):
            raise PermissionDenied
        key = request.POST.get("step", "")
        again = workflows.steps_to_retry(workflow_run, from_step=key)
        try:
            workflows.retry_from(workflow_run, key, by=request.user.get_username())
        except (workflows.WorkflowConflict, InvalidWorkflow, InvalidTransition) as exc:
            self.message_user(request, f"Not retried: {exc}", messages.WARNING)
        else:
            steps = ", ".join(step["key"] for step in workflow_run.steps if step["key"] in again)
            self.message_user(
                request,
                f"Workflow run {workflow_run.pk} · {workflow_run.workflow.name}: retrying {steps}.",
                messages.SUCCESS,
            )
        return HttpResponseRedirect(reverse("admin:tasks_app_workflowrun_change", args=[workflow_run.pk]))

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
