"""Tasks: the definitions runs are made from.

A task's page shows its recent runs as a strip of marks coloured by state, each linked to its
run, with their success rate and p95 duration; "Run now with parameters" submits a run with
the form the run pages use for a rerun (admin/runs.py), checked by the rules of POST /runs/.
"""

from __future__ import annotations

import math
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html, format_html_join

from tasks_app import definitions, handlers, rollups, submission
from tasks_app.admin.common import (
    ChangedFieldsOnly,
    MakesRuns,
    SeenValuesForm,
    ShowsOpenAlerts,
    at_seconds,
    delete_each,
    seconds_text,
)
from tasks_app.admin.runs import parameters_page
from tasks_app.choices import TERMINAL_STATES, RunTrigger
from tasks_app.models import (
    Run,
    Task,
)
from tasks_app.submission import RunRequest

STRIP_RUNS = 50  # the latest runs the task's page marks


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


def percentile(q: float, values: list[float]) -> float | None:
    """The nearest-rank q-quantile of `values` (exact: a strip has few)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def runs_strip(task: Task) -> str:
    """The task's latest runs, oldest first, as marks coloured by state (console.css's
    .state-<name>), each linked to its run and titled with its state and duration; then
    their success rate (rollups' rule: completed among completed and failed) and p95
    duration. One query."""
    runs = list(
        task.runs.order_by("-id").values_list("id", "state", "created_at", "started_at", "finished_at")[
            :STRIP_RUNS
        ]
    )[::-1]
    if not runs:
        return "No runs yet."
    counts: dict[str, int] = {}
    durations = []
    for _pk, state, _created, started, finished in runs:
        counts[state] = counts.get(state, 0) + 1
        if started and finished and state in TERMINAL_STATES:
            durations.append((finished - started).total_seconds())
    marks = format_html_join(
        "",
        '<a class="run-mark state-{}" href="{}" title="{}"><span>{}</span></a>',
        (
            (
                state,
                reverse("admin:tasks_app_run_change", args=[pk]),
                f"run {pk} · {state} · {at_seconds(created)}"
                + (
                    f" · {seconds_text((finished - started).total_seconds())}" if started and finished else ""
                ),
                state,
            )
            for pk, state, created, started, finished in runs
        ),
    )
    rate = rollups.success_rate(counts)
    judged = counts.get("completed", 0) + counts.get("failed", 0)
    return format_html(
        '<div class="run-strip">{}</div><p class="run-strip-figures">Last {} run(s): success rate {} '
        "({} completed of {} completed or failed); p95 duration {}.</p>",
        marks,
        len(runs),
        f"{rate:.0%}" if rate is not None else "-",
        counts.get("completed", 0),
        judged,
        seconds_text(percentile(0.95, durations)),
    )


@admin.register(Task)
class TaskAdmin(ShowsOpenAlerts, MakesRuns, ChangedFieldsOnly, admin.ModelAdmin):
    form = TaskForm
    change_form_template = "tasks_app/admin/task_change_form.html"
    list_display = ["name", "handler", "queue", "priority", "max_retries", "enabled", "updated_at"]
    list_filter = ["enabled", "handler", "queue", "concurrency_policy"]
    search_fields = ["name", "description"]
    actions = ["run_now"]

    class Media:
        css = {"all": ["tasks_app/task.css"]}

    def _shows_runs(self, request: HttpRequest, obj: Task | None) -> bool:
        return obj is not None and request.user.has_perm("tasks_app.view_run")

    def get_readonly_fields(self, request: HttpRequest, obj: Task | None = None) -> Any:
        fields = super().get_readonly_fields(request, obj)
        return ["recent_runs", *fields] if self._shows_runs(request, obj) else fields

    def get_fields(self, request: HttpRequest, obj: Task | None = None) -> Any:
        fields = [f for f in super().get_fields(request, obj) if f != "recent_runs"]
        # The strip first: what the task did, above how it is configured (for those who may see runs).
        return ["recent_runs", *fields] if self._shows_runs(request, obj) else fields

    @admin.display(description="recent runs")
    def recent_runs(self, task: Task) -> str:
        return runs_strip(task)

    def render_change_form(self, request: HttpRequest, context: dict[str, Any], *args: Any,
                           obj: Task | None = None, **kwargs: Any) -> HttpResponse:  # fmt: skip
        if obj is not None:
            context["may_run"] = self._may_run(request, obj)
        return super().render_change_form(request, context, *args, obj=obj, **kwargs)

    def _may_run(self, request: HttpRequest, task: Task) -> bool:
        return self.has_view_permission(request, task) and self.has_run_permission(request)

    def get_urls(self) -> list[URLPattern]:
        run = self.admin_site.admin_view(self.run_view)  # signed in, staff, CSRF-checked
        return [path("<path:object_id>/run/", run, name="tasks_app_task_run"), *super().get_urls()]

    def run_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Run now with parameters: the task's defaults to edit, then a run, as POST /runs/."""
        task = self.get_object(request, unquote(object_id))
        if task is None:
            raise Http404
        if not self._may_run(request, task):
            raise PermissionDenied
        return parameters_page(
            self,
            request,
            task=task,
            initial={"args": task.args, "kwargs": task.kwargs, "priority": task.priority},
            reason="run now from the admin, with parameters",
            title=f"Run {task.name} now with parameters",
            about=task,
        )

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
        # A task's finished runs go with it on delete_task alone, as in the API: runs are never
        # deleted by hand (RunAdmin), so their admin's refusal is no reason to keep the task.
        perms_needed = set(perms_needed) - {Run._meta.verbose_name}
        return deleted, counts, perms_needed, protected

    def delete_model(self, request: HttpRequest, obj: Task) -> None:
        self.delete_queryset(request, Task.objects.filter(pk=obj.pk))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        delete_each(self, request, queryset, definitions.delete_task)

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
