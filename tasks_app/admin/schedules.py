"""Schedules: the platform's own, edited and fired here.

The change page says when a schedule fires (its timing in words and its next fire times in
its own zone) from the server, so it reads without JavaScript; schedule_editor.js updates that
as the timing fields change, through the API's preview (POST /api/v1/schedules/preview/).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import OuterRef, QuerySet, Subquery
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from tasks_app import definitions, submission, timing
from tasks_app.admin.common import (
    NEEDS_ADD_WORKFLOWRUN,
    ChangedFieldsOnly,
    MakesRuns,
    SeenValuesForm,
    ShowsOpenAlerts,
    at_seconds,
    state_badge,
)
from tasks_app.models import (
    Run,
    Schedule,
    WorkflowRun,
)
from tasks_app.models.schedules import KINDS, RECOMPUTE, schedule_problems
from tasks_app.models.workflows import InvalidWorkflow
from tasks_app.timing import InvalidSchedule

NEXT_FIRES = 10  # fire times the change page lists (and the editor asks the preview for)


def zoned(instant: dt.datetime, tz: dt.tzinfo) -> str:
    """An instant as the schedule's zone sees it, to the second, with the offset:
    "Mon 2026-03-02 09:00:00 -05:00" (schedule_editor.js writes the API's the same way)."""
    text = instant.astimezone(tz).replace(microsecond=0).isoformat()
    return f"{instant.astimezone(tz):%a} {text[:10]} {text[11:19]} {text[19:]}"


def _fires_list(fires: list[dt.datetime], tz: dt.tzinfo) -> str:
    return format_html(
        '<ol class="next-fires">{}</ol>',
        format_html_join(
            "",
            '<li class="next-fire"><time datetime="{}">{}</time></li>',
            ((fire.astimezone(tz).replace(microsecond=0).isoformat(), zoned(fire, tz)) for fire in fires),
        ),
    )


def timing_preview(schedule: Schedule, now: dt.datetime | None = None) -> str:
    """The schedule's timing in words and its next fire times in its zone, in the box
    (#schedule-preview) that schedule_editor.js keeps up to date as the fields change."""
    kind = next((kind for kind in KINDS if getattr(schedule, kind) not in (None, "")), "")
    try:
        tz: dt.tzinfo = timing.zone(schedule.timezone or "UTC")
        zone_name = schedule.timezone or "UTC"
    except InvalidSchedule:
        tz, zone_name = dt.UTC, "UTC"
    fires: list[dt.datetime] = []
    if not kind:
        description, heading = "Give a cron expression, an interval or an instant.", ""
    else:
        description = schedule.description()
        try:
            fires = schedule.upcoming(NEXT_FIRES, after=now or timezone.now())
        except (ValueError, OverflowError) as exc:  # a row written past validation, a form refused
            heading = format_html('<p class="schedule-preview-problem errornote">{}</p>', exc)
        else:
            paused = "" if schedule.enabled else " (paused: the times it would fire)"
            said = (
                format_html('Next {} fire time(s) in <span class="schedule-zone">{}</span>{}:', len(fires),
                            zone_name, paused)
                if fires
                else "It fires no more."
            )  # fmt: skip
            heading = format_html('<p class="next-fires-heading">{}</p>', said)
    return format_html(
        '<div id="schedule-preview" class="schedule-preview" data-preview-url="{}" data-count="{}" '
        'data-kind="{}" aria-live="polite"><p class="schedule-description">{}</p>{}{}</div>',
        reverse("schedule-preview"), NEXT_FIRES, kind, description, heading, _fires_list(fires, tz),
    )  # fmt: skip


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
    list_display = ["id", "target", "kind_text", "description", "enabled", "misfire_policy", "next_fire",
                    "last_fire", "last_fire_state", "invalid_reason"]  # fmt: skip
    list_filter = ["enabled", "misfire_policy", "task", "workflow"]
    list_select_related = ["task", "workflow"]
    readonly_fields = ["timing_preview", "invalid_reason", "next_fire", "last_fire", "last_fire_state",
                       "missed_fires", "periodic_task"]  # fmt: skip
    actions = ["pause", "resume", "fire_now"]

    class Media:
        js = ["tasks_app/schedule_editor.js"]
        css = {"all": ["tasks_app/schedule_editor.css"]}

    def get_queryset(self, request: HttpRequest) -> QuerySet[Schedule]:
        # What the last fire made, for the list in its one query: a fire's run (or workflow
        # run) has the instant it was fired for, and the latest is found through the
        # unique (schedule, scheduled_for) index of each table.
        runs = Run.objects.filter(schedule=OuterRef("pk"), scheduled_for__isnull=False)
        runs = runs.order_by("-scheduled_for")
        flows = WorkflowRun.objects.filter(schedule=OuterRef("pk"), scheduled_for__isnull=False)
        flows = flows.order_by("-scheduled_for")
        return (
            super()
            .get_queryset(request)
            .annotate(
                last_run_id=Subquery(runs.values("pk")[:1]),
                last_run_state=Subquery(runs.values("state")[:1]),
                last_workflow_run_id=Subquery(flows.values("pk")[:1]),
                last_workflow_run_state=Subquery(flows.values("state")[:1]),
            )
        )

    def get_fields(self, request: HttpRequest, obj: Schedule | None = None) -> Any:
        # When it fires, beside the fields that say it (the timing and the zone).
        fields = [field for field in super().get_fields(request, obj) if field != "timing_preview"]
        at = fields.index("timezone") + 1 if "timezone" in fields else len(fields)
        return [*fields[:at], "timing_preview", *fields[at:]]

    @admin.display(description="fires")
    def target(self, schedule: Schedule) -> str:
        return schedule.target_text

    @admin.display(description="in words")
    def description(self, schedule: Schedule) -> str:
        return schedule.description()

    @admin.display(description="when it fires")
    def timing_preview(self, schedule: Schedule) -> str:
        return timing_preview(schedule)

    @admin.display(description="next fire", ordering="next_fire_at")
    def next_fire(self, schedule: Schedule) -> str:
        if not schedule.enabled:
            return "- (paused)"
        fire = schedule.next_fire_at
        if fire is not None and fire <= RECOMPUTE:
            # Its timing was just edited; beat's next tick finds the same instant.
            try:
                fire = schedule.next_after(timezone.now())
            except (ValueError, OverflowError):
                return "-"
        return at_seconds(fire)

    @admin.display(description="last fire", ordering="last_fired_at")
    def last_fire(self, schedule: Schedule) -> str:
        return at_seconds(schedule.last_fired_at)

    @admin.display(description="its run")
    def last_fire_state(self, schedule: Schedule) -> str:
        """The state of the run (or workflow run) the last fire made, linked to it."""
        if getattr(schedule, "last_run_id", None):
            url = reverse("admin:tasks_app_run_change", args=[schedule.last_run_id])
            pk, state, kind = schedule.last_run_id, schedule.last_run_state, "run"
        elif getattr(schedule, "last_workflow_run_id", None):
            url = reverse("admin:tasks_app_workflowrun_change", args=[schedule.last_workflow_run_id])
            pk, state, kind = schedule.last_workflow_run_id, schedule.last_workflow_run_state, "workflow run"
        else:
            return "-"
        return format_html(
            '<a class="last-fire-run" href="{}" title="{} {}">{}</a>', url, kind, pk, state_badge(state)
        )

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
