"""Runs: view-only pages, controlled by the same methods as the API.

A run's page shows what Airflow's task-instance page and Flower's task page do: its facts
to the millisecond, its error, its history, the tail of its log and its progress (run.js
follows both while the run runs, through `live_view`; the page reads the same without it),
why it is not running yet (tasks_app.diagnosis), and the controls its state allows as
buttons. Nothing on it is a form field of the run: a run's row is the workers' and the
lifecycle's to write.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.core.paginator import EmptyPage, Paginator
from django.db import connection
from django.db.models import Q, QuerySet, prefetch_related_objects
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
    JsonResponse,
)
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html

from tasks_app import controls, diagnosis, handlers, lifecycle, redis_client, submission
from tasks_app.admin.common import at_millis, pretty_json, seconds_text, state_badge
from tasks_app.choices import TERMINAL_STATES, Actor, RunState, RunTrigger
from tasks_app.lifecycle import InvalidTransition
from tasks_app.models import Run, RunLog, Task
from tasks_app.models.tasks import PRIORITY_MAX
from tasks_app.submission import RunRequest

S = RunState
LOG_TAIL = 200  # log lines the page shows (the last ones); the API's /logs/ pages through all
LIVE_LINES = 500  # log lines one answer of live_view carries at most
LINE_SHOWN = 10_000  # characters of one log line on the page; the API's /logs/ has it whole


# --- the run parameters form (also the task page's "Run now with parameters") --------------


class RunParametersForm(forms.Form):
    """What POST /runs/ takes besides the task, checked by its rules with its messages: args
    a JSON list (or null: the task's), kwargs a JSON object (merged over the task's), priority
    0 to 9 (blank: the task's), run_at (blank: now), an optional idempotency key."""

    args = forms.JSONField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "class": "vLargeTextField json-input"}),
        help_text="A JSON list; null or blank: the task's default args.",
    )
    kwargs = forms.JSONField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 6, "class": "vLargeTextField json-input"}),
        help_text="A JSON object, merged over the task's default kwargs (as POST /runs/ does).",
    )
    priority = forms.IntegerField(
        required=False,
        min_value=0,
        max_value=PRIORITY_MAX,
        error_messages={"invalid": "A valid integer is required."},  # DRF's words, as the API
        help_text=f"0 (lowest) to {PRIORITY_MAX} (served first); blank: the task's.",
    )
    run_at = forms.DateTimeField(
        required=False,
        help_text="Blank: now. ISO 8601 (2026-03-01T02:00:00+01:00), or YYYY-MM-DD HH:MM:SS in "
        "the site's time zone.",
    )
    idempotency_key = forms.CharField(
        required=False,
        strip=False,  # the submission rule strips it, as the API's does
        help_text="Optional: the same key for the same task gives back the first run.",
    )

    def clean_args(self) -> list[Any] | None:
        args = self.cleaned_data["args"]
        if args is not None and not isinstance(args, list):
            raise forms.ValidationError(f'Expected a list of items but got type "{_type_name(args)}".')
        return args

    def clean_kwargs(self) -> dict[str, Any]:
        kwargs = self.cleaned_data["kwargs"]
        if kwargs is None:
            return {}
        if not isinstance(kwargs, dict):
            raise forms.ValidationError(
                f'Expected a dictionary of items but got type "{_type_name(kwargs)}".'
            )
        return kwargs

    def clean_idempotency_key(self) -> str | None:
        try:
            return submission.clean_idempotency_key(self.cleaned_data["idempotency_key"])
        except submission.InvalidKey as exc:
            raise forms.ValidationError(str(exc)) from None

    def submit(self, task: Task, *, by: str, reason: str) -> tuple[Run, bool] | None:
        """Submit the run the valid form asks for, trigger manual; (run, created), or None
        with the refusal added to the form (the API's 409s: a disabled task, a key used
        with another request)."""
        data = self.cleaned_data
        request = RunRequest(
            task=task,
            args=data["args"],
            kwargs=data["kwargs"],
            priority=data["priority"],
            run_at=data["run_at"],
            idempotency_key=data["idempotency_key"],
            trigger=RunTrigger.MANUAL,
            reason=reason,
        )
        try:
            submission.ensure_enabled(task)
            return submission.submit(request, by=by)
        except submission.TaskDisabled as exc:
            self.add_error(None, str(exc))
        except submission.IdempotencyConflict as exc:
            self.add_error("idempotency_key", str(exc))
        return None


def _type_name(value: Any) -> str:
    # The JSON value's Python type, as DRF names it; Django's JSONField hands a string over
    # as its own str subclass.
    return "str" if isinstance(value, str) else type(value).__name__


def parameters_page(
    modeladmin: admin.ModelAdmin,
    request: HttpRequest,
    *,
    task: Task,
    initial: dict[str, Any],
    reason: str,
    title: str,
    about: Any,
) -> HttpResponse:
    """A page with the run parameters form: GET shows it filled with `initial`, POST submits
    the run and goes to its page, or shows the form again with the problems inline."""
    form = RunParametersForm(request.POST if request.method == "POST" else None, initial=initial)
    if form.is_valid():
        submitted = form.submit(task, by=request.user.get_username(), reason=reason)
        if submitted is not None:
            run, created = submitted
            if created:
                modeladmin.message_user(request, f"Submitted run {run.pk} of {task.name}.", messages.SUCCESS)
            else:
                modeladmin.message_user(
                    request,
                    f"Run {run.pk} was submitted with this idempotency key before: no new run.",
                    messages.WARNING,
                )
            return HttpResponseRedirect(reverse("admin:tasks_app_run_change", args=[run.pk]))
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": title,
        "subtitle": None,
        "opts": modeladmin.opts,
        "about": about,
        "task": task,
        "form": form,
    }
    return TemplateResponse(request, "tasks_app/admin/run_parameters_form.html", context)


# --- what the page shows -------------------------------------------------------------------


def log_lines(lines: list[RunLog]) -> list[dict[str, Any]]:
    """Log lines as the page draws them and live_view sends them (run.js draws them alike)."""
    return [
        {"id": line.pk, "at": at_millis(line.at), "level": line.level, "message": _shown(line.message)}
        for line in lines
    ]


def _shown(message: str) -> str:
    if len(message) <= LINE_SHOWN:
        return message
    rest = len(message) - LINE_SHOWN
    return f"{message[:LINE_SHOWN]} [... {rest} more characters: GET /api/v1/runs/{{id}}/logs/]"


def progress_of(run: Run) -> dict[str, Any]:
    progress = run.progress if isinstance(run.progress, dict) else {}
    try:
        fraction = min(1.0, max(0.0, float(progress.get("fraction") or 0)))
    except (TypeError, ValueError):  # a row written past ctx.progress()
        fraction = 0.0
    return {
        "fraction": fraction,
        "percent": round(fraction * 100),
        "message": str(progress.get("message", "")),
    }


def offered_controls(run: Run) -> list[str]:
    """The controls the state table allows now, with controls.py's own rules: a running run
    pauses only where its handler takes checkpoints; resume is of a paused run, retry of a
    failed or cancelled one."""
    state = run.state
    offered = []
    if lifecycle.is_legal(state, S.CANCELLED):
        offered.append("cancel")
    if lifecycle.is_legal(state, S.PAUSED):
        handler = handlers.find(run.task.handler)
        if state != S.RUNNING or (handler is not None and handler.pausable):
            offered.append("pause")
    if state == S.PAUSED and lifecycle.is_legal(state, S.PENDING):
        offered.append("resume")
    if state in (S.FAILED, S.CANCELLED) and lifecycle.is_legal(state, S.PENDING):
        offered.append("retry")
    return offered


CONTROLS: dict[str, tuple[Callable[..., None], str]] = {
    "cancel": (controls.cancel, "Cancelled"),
    "pause": (controls.pause, "Paused"),
    "resume": (controls.resume, "Resumed"),
    "retry": (controls.retry, "Retried"),
}


def _control(control: Callable[..., None], description: str) -> Callable[..., None]:
    def act(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Run]) -> None:
        done, refused = 0, []
        for run in queryset.select_related("task"):
            try:
                control(run, by=request.user.get_username(), actor=Actor.USER)
                done += 1
            except InvalidTransition as exc:
                refused.append(str(exc))
            except redis_client.Error as exc:  # a gated run's lock could not be read
                refused.append(f"run {run.pk}: its concurrency lock cannot be read now: {exc}")
        if done:
            modeladmin.message_user(request, f"{description}: {done} run(s).")
        for reason in refused[:10]:
            modeladmin.message_user(request, reason, messages.WARNING)

    act.__name__ = control.__name__
    return admin.action(description=f"{description} selected runs", permissions=["change"])(act)


COUNT_CAP = 10_000  # runs the list counts exactly; past that it shows MariaDB's estimate


class CappedCountPaginator(Paginator):
    """The changelist's paginator, for a table of millions: it counts the filtered runs up to
    COUNT_CAP (a COUNT over at most that many rows), and past that takes the planner's
    estimate (EXPLAIN's rows) rather than a COUNT(*) that reads every one (bench/history.py:
    seconds at 10,000,000 runs). The pages past the estimate's are then empty, not an error."""

    @cached_property
    def count(self) -> int:
        counted = self.object_list[: COUNT_CAP + 1].count()
        if counted <= COUNT_CAP or connection.vendor != "mysql":
            return counted if counted <= COUNT_CAP else self.object_list.count()
        return max(COUNT_CAP + 1, _estimated_rows(self.object_list))

    def validate_number(self, number: Any) -> int:
        # An estimate may undercount: a page past its last is still read, and shows what it has.
        try:
            return super().validate_number(number)
        except EmptyPage:
            if int(number) < 1:
                raise
            return int(number)

    def page(self, number: Any) -> Any:
        # Not clamped to the count, which may be an estimate below the runs there are.
        number = self.validate_number(number)
        bottom = (number - 1) * self.per_page
        return self._get_page(self.object_list[bottom : bottom + self.per_page], number, self)


def _estimated_rows(runs: QuerySet[Run]) -> int:
    sql, params = runs.order_by().query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + sql, params)
        columns = [column[0] for column in cursor.description]
        plans = [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
    return max((int(plan["rows"] or 0) for plan in plans if plan["table"] == Run._meta.db_table), default=0)


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    change_form_template = "tasks_app/admin/run_change_form.html"
    list_display = [
        "id",
        "task",
        "state_mark",
        "trigger",
        "attempt",
        "created_at",
        "started_at",
        "duration_s",
        "worker",
    ]
    # At millions of runs (bench/history.py), the list reads a page and no more: no date
    # hierarchy (its links are a SELECT DISTINCT of the days over every run; the created_at
    # filter's links cost nothing), no facets, no full count (CappedCountPaginator), the tasks
    # fetched apart (joined, MariaDB starts from the task table and sorts every run), and a
    # search through indexes (get_search_results). Its index per filter: the state's
    # run_state, the task's run_task, none's PRIMARY (tests/test_query_plans.py).
    list_filter = ["state", "trigger", "task", "created_at"]
    search_fields = ["=id", "task__name", "=idempotency_key"]
    search_help_text = "A run's id, a task's name (or part of it), or an idempotency key."
    list_select_related = ()  # not False: with a foreign key in list_display, False joins them all
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    paginator = CappedCountPaginator
    actions = [
        _control(controls.cancel, "Cancel"),
        _control(controls.pause, "Pause"),
        _control(controls.resume, "Resume"),
        _control(controls.retry, "Retry"),
    ]
    fieldsets = [
        (None, {"fields": ["state_mark", "task_link", "handler", "trigger_source", "attempts", "worker_link",
                           "queue", "priority_text", "fence_text", "idempotency_key"]}),
        ("Times", {"fields": ["created_ms", "scheduled_ms", "due_ms", "started_ms", "finished_ms",
                              "state_changed_ms", "duration_text", "lateness_text", "waited_text"]}),
        ("Inputs", {"fields": ["args_json", "kwargs_json"]}),
        ("Outcome", {"fields": ["error_html", "result_json", "checkpoint_json"]}),
    ]  # fmt: skip
    readonly_fields = [field for _name, options in fieldsets for field in options["fields"]]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Run]:
        # The tasks in a query of their own, not joined: see list_select_related.
        return super().get_queryset(request).prefetch_related("task")

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Run], search_term: str
    ) -> tuple[QuerySet[Run], bool]:
        """Runs whose id is the term, whose task's name holds it, or whose idempotency key is
        it: the names are matched in the (small) task table first, and the runs with the key
        or the id are found apart, so that the list is a walk of one index (run_task,
        newest first), not a LIKE over every run joined to its task. A task named exactly the
        term stands for itself alone. An OR of the task and the ids is left for the rare term
        that is both: MariaDB then sorts every run of the task (bench/history.py: 22 s at
        10,000,000 runs with the OR always there)."""
        term = search_term.strip()
        if not term:
            return queryset, False
        named = Task.objects.filter(name=term).values_list("pk", flat=True)
        tasks = list(named) or list(Task.objects.filter(name__icontains=term).values_list("pk", flat=True))
        ids = list(Run.objects.filter(idempotency_key=term).values_list("pk", flat=True)[:100])
        if term.isascii() and term.isdigit() and int(term) < 2**63:
            ids.append(int(term))
        if tasks and ids:
            return queryset.filter(Q(task_id__in=tasks) | Q(pk__in=ids)), False
        if tasks:
            return queryset.filter(task_id__in=tasks), False
        return queryset.filter(pk__in=ids), False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # runs are submitted (a task's "Run now", a rerun, or the API)

    def has_change_permission(self, request: HttpRequest, obj: Run | None = None) -> bool:
        # A run's page is view-only (no Save): its row is the workers' and the lifecycle's to
        # write. Asked without a run (the list's actions, the page's buttons), the permission
        # is change_run's, as the API's controls.
        return obj is None and super().has_change_permission(request)

    def has_delete_permission(self, request: HttpRequest, obj: Run | None = None) -> bool:
        return False  # runs and their history are pruned by retention, never by hand

    # --- the page ---------------------------------------------------------------------------

    def render_change_form(self, request: HttpRequest, context: dict[str, Any], *args: Any,
                           obj: Run | None = None, **kwargs: Any) -> HttpResponse:  # fmt: skip
        if obj is not None:
            context.update(self._page_context(request, obj))
        return super().render_change_form(request, context, *args, obj=obj, **kwargs)

    def _page_context(self, request: HttpRequest, run: Run) -> dict[str, Any]:
        # One query for the events (the trigger's source reads the first), one for the log's
        # tail, and diagnosis' few: none per line, event or step.
        prefetch_related_objects([run], "events")
        # The fields below are drawn from the run alone: what they may link to rides on it.
        run.seen_by = request.user
        tail = list(run.logs.order_by("-id")[: LOG_TAIL + 1])
        may_control = self.has_change_permission(request)
        finished = run.state in TERMINAL_STATES
        return {
            "title": f"run {run.pk} · {run.task.name} ({run.state})",
            "subtitle": None,
            "run": run,
            "timeline": self._timeline(run),
            "log": log_lines(tail[:LOG_TAIL][::-1]),  # in the order written
            "log_cut": len(tail) > LOG_TAIL,
            "log_after": tail[0].pk if tail else 0,
            "log_tail": LOG_TAIL,
            "progress": progress_of(run),
            "finished": finished,
            "controls": offered_controls(run) if may_control else [],
            "may_rerun": request.user.has_perm("tasks_app.add_run"),
            "reasons": diagnosis.why_not_running(run),
        }

    def _timeline(self, run: Run) -> list[dict[str, Any]]:
        rows, previous = [], None
        for event in run.events.all():
            rows.append({
                "at": at_millis(event.at),
                "after": seconds_text((event.at - previous).total_seconds()) if previous else "",
                "source": state_badge(event.from_state) if event.from_state else "",
                "target": state_badge(event.to_state),
                "reason": event.reason,
                "by": f"{event.actor}: {event.actor_name}" if event.actor_name else event.actor,
            })  # fmt: skip
            previous = event.at
        return rows

    @admin.display(description="state", ordering="state")
    def state_mark(self, run: Run) -> str:
        return state_badge(run.state)

    @admin.display(description="task")
    def task_link(self, run: Run) -> str:
        return format_html('<a href="{}">{}</a>', reverse("admin:tasks_app_task_change", args=[run.task_id]),
                           run.task.name)  # fmt: skip

    @admin.display(description="handler")
    def handler(self, run: Run) -> str:
        return run.task.handler

    @admin.display(description="trigger")
    def trigger_source(self, run: Run) -> str:
        if run.trigger == RunTrigger.SCHEDULE and run.schedule_id:
            link = reverse("admin:tasks_app_schedule_change", args=[run.schedule_id])
            return format_html(
                'schedule: <a href="{}">schedule {}</a>, for {}',
                link,
                run.schedule_id,
                at_millis(run.scheduled_for),
            )
        if run.trigger == RunTrigger.WORKFLOW and run.workflow_run_id:
            link = reverse("admin:tasks_app_workflowrun_change", args=[run.workflow_run_id])
            return format_html(
                'workflow: <a href="{}">workflow run {}</a>, step {}', link, run.workflow_run_id, run.step
            )
        # The submission's event (the one from no state): who, and why.
        born = next((event for event in run.events.all() if not event.from_state), None)
        if born is None or not born.actor_name:
            return run.trigger
        by = born.actor_name
        if _viewer_may(run, "auth.view_user"):
            users = reverse("admin:auth_user_changelist") + "?" + urlencode({"username": by})
            by = format_html('<a href="{}">{}</a>', users, by)
        return format_html("{}, by {} ({})", run.trigger, by, born.reason)

    @admin.display(description="attempts")
    def attempts(self, run: Run) -> str:
        retries = "retry" if run.retries == 1 else "retries"
        return f"{run.attempt} started; {run.retries} automatic {retries} used of {run.task.max_retries}"

    @admin.display(description="worker")
    def worker_link(self, run: Run) -> str:
        if not run.worker:
            return "-"
        if not _viewer_may(run, "tasks_app.view_worker"):
            return run.worker
        workers = reverse("admin:tasks_app_worker_changelist") + "?" + urlencode({"hostname": run.worker})
        return format_html('<a href="{}">{}</a>', workers, run.worker)

    @admin.display(description="queue")
    def queue(self, run: Run) -> str:
        return run.task.queue

    @admin.display(description="priority")
    def priority_text(self, run: Run) -> str:
        return f"{run.priority} (the task's default: {run.task.priority})"

    @admin.display(description="concurrency fence")
    def fence_text(self, run: Run) -> str:
        policy = run.task.concurrency_policy
        if run.fence is None:
            return f"- (policy {policy})"
        holds = " (holds the task's lock)" if run.lock_token and run.state not in TERMINAL_STATES else ""
        return f"{run.fence}{holds} (policy {policy})"

    @admin.display(description="created")
    def created_ms(self, run: Run) -> str:
        return at_millis(run.created_at)

    @admin.display(description="scheduled for")
    def scheduled_ms(self, run: Run) -> str:
        return at_millis(run.scheduled_for)

    @admin.display(description="due")
    def due_ms(self, run: Run) -> str:
        return at_millis(run.due_at)

    @admin.display(description="started")
    def started_ms(self, run: Run) -> str:
        return at_millis(run.started_at)

    @admin.display(description="finished")
    def finished_ms(self, run: Run) -> str:
        return at_millis(run.finished_at)

    @admin.display(description="last move")
    def state_changed_ms(self, run: Run) -> str:
        return at_millis(run.state_changed_at)

    @admin.display(description="duration")
    def duration_text(self, run: Run) -> str:
        if run.duration is not None:
            return seconds_text(run.duration.total_seconds())
        if run.state == S.RUNNING and run.started_at:
            return f"running for {seconds_text((timezone.now() - run.started_at).total_seconds())}"
        return "-"

    @admin.display(description="lateness")
    def lateness_text(self, run: Run) -> str:
        """How late the schedule fired it: its creation after the instant it was meant for."""
        return _signed_seconds(run.lateness)

    @admin.display(description="waited to start")
    def waited_text(self, run: Run) -> str:
        return _signed_seconds(run.started_at - run.created_at if run.started_at else None)

    @admin.display(description="args")
    def args_json(self, run: Run) -> str:
        return pretty_json(run.args)

    @admin.display(description="kwargs")
    def kwargs_json(self, run: Run) -> str:
        return pretty_json(run.kwargs)

    @admin.display(description="error")
    def error_html(self, run: Run) -> str:
        error = run.error
        if not error:
            return "-"
        if not isinstance(error, dict):  # a row written past execution.error_of()
            return pretty_json(error)
        traceback = error.get("traceback") or ""
        return format_html(
            '<p class="run-error"><strong>{}</strong>: {}</p>{}',
            error.get("type", "Error"),
            error.get("message", ""),
            format_html('<pre class="traceback">{}</pre>', traceback) if traceback else "",
        )

    @admin.display(description="result")
    def result_json(self, run: Run) -> str:
        return pretty_json(run.result)

    @admin.display(description="checkpoint")
    def checkpoint_json(self, run: Run) -> str:
        return pretty_json(run.checkpoint)

    @admin.display(description="duration (s)")
    def duration_s(self, run: Run) -> str:
        return f"{run.duration.total_seconds():.3f}" if run.duration else "-"

    # --- the page's views: live, controls, rerun --------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        wrap = self.admin_site.admin_view  # signed in, staff, CSRF-checked
        own = [
            path("<path:object_id>/live/", wrap(self.live_view), name="tasks_app_run_live"),
            path("<path:object_id>/rerun/", wrap(self.rerun_view), name="tasks_app_run_rerun"),
            *(
                path(f"<path:object_id>/{name}/", wrap(self.control_view), {"control": name},
                     name=f"tasks_app_run_{name}")
                for name in CONTROLS
            ),
        ]  # fmt: skip
        return [*own, *super().get_urls()]

    def _run_or_404(self, request: HttpRequest, object_id: str) -> Run:
        run = self.get_object(request, unquote(object_id))
        if run is None:
            raise Http404
        if not self.has_view_permission(request, run):
            raise PermissionDenied
        return run

    def live_view(self, request: HttpRequest, object_id: str) -> JsonResponse:
        """What run.js polls: the run's state, attempt and progress, and its log lines written
        after the line `after` (an id: lines are numbered as written), LIVE_LINES at most."""
        run = self._run_or_404(request, object_id)
        try:
            after = int(request.GET.get("after", "0"))
        except ValueError:
            return JsonResponse({"detail": "after: give the id of the last log line seen."}, status=400)
        lines = list(run.logs.filter(pk__gt=after).order_by("pk")[: LIVE_LINES + 1])
        more = len(lines) > LIVE_LINES
        lines = lines[:LIVE_LINES]
        return JsonResponse({
            "state": run.state,
            "badge": state_badge(run.state),
            "attempt": run.attempt,
            "progress": progress_of(run),
            "lines": log_lines(lines),
            "after": lines[-1].pk if lines else after,
            # Nothing more will come: the run ended and every line of it has been given.
            "finished": run.state in TERMINAL_STATES and not more,
        })  # fmt: skip

    def control_view(self, request: HttpRequest, object_id: str, control: str) -> HttpResponse:
        """A button of the page: one control of tasks_app.controls, as the API's."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        run = self._run_or_404(request, object_id)
        if not self.has_change_permission(request):
            raise PermissionDenied
        move, done = CONTROLS[control]
        try:
            move(run, by=request.user.get_username(), actor=Actor.USER)
        except InvalidTransition as exc:
            self.message_user(request, f"Not done: {exc}.", messages.ERROR)
        except redis_client.Error as exc:  # the task's concurrency lock could not be read
            self.message_user(
                request, f"Not done: the concurrency lock is unavailable ({exc}).", messages.ERROR
            )
        else:
            self.message_user(request, f"{done} run {run.pk}.", messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:tasks_app_run_change", args=[run.pk]))

    def rerun_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """A new run of the run's task with its parameters, edited: a rerun, not a retry
        (which is a new attempt of the same run)."""
        run = self._run_or_404(request, object_id)
        if not request.user.has_perm("tasks_app.add_run"):
            raise PermissionDenied
        return parameters_page(
            self,
            request,
            task=run.task,
            initial={"args": run.args, "kwargs": run.kwargs, "priority": run.priority},
            reason=f"rerun of run {run.pk}",
            title=f"Rerun run {run.pk} · {run.task.name}",
            about=run,
        )


def _viewer_may(run: Run, permission: str) -> bool:
    """Whether the one viewing the run's page may follow a link that needs `permission`."""
    viewer = getattr(run, "seen_by", None)
    return viewer is not None and viewer.has_perm(permission)


def _signed_seconds(delta: dt.timedelta | None) -> str:
    if delta is None:
        return "-"
    seconds = round(delta.total_seconds(), 3)  # as shown: a microsecond early is on time
    return f"-{seconds_text(-seconds)} (early)" if seconds < 0 else seconds_text(seconds)
