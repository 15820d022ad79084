"""Mixins, inlines and formats every admin page of the platform shares."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from tasks_app.choices import AlertState
from tasks_app.definitions import InUse
from tasks_app.models import (
    Alert,
    Schedule,
    Task,
)

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


def at_seconds(value: dt.datetime | None) -> str:
    """An instant to the second (the admin's own format stops at the minute)."""
    return date_format(timezone.localtime(value), "Y-m-d H:i:s T") if value else "-"


def _alert_links(alerts: QuerySet[Alert]) -> str:
    return format_html_join(
        mark_safe("<br>"),
        '<a href="{}">{}</a>: {} (rule {}, since {})',
        (
            (reverse("admin:tasks_app_alert_change", args=[a.pk]), a.subject, a.reason, a.rule.name,
             at_seconds(a.opened_at))
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


def delete_each(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet, delete: Any) -> None:
    """Delete each row by the domain's rule (definitions.py), saying why for any it refuses:
    the confirmation page listed what holds them, but a run may have started since."""
    for obj in queryset:
        try:
            delete(obj)
        except InUse as exc:
            modeladmin.message_user(request, str(exc), messages.WARNING)


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def pretty_json(value: Any) -> str:
    """A JSON value as an indented block (console.css pre.json: wrapped, scrollable)."""
    if value is None:
        return "-"
    return format_html('<pre class="json">{}</pre>', json.dumps(value, indent=2, ensure_ascii=False))


# One colour per state, everywhere: badges, the DAG, the dashboard's chart, the task's strip
# (tasks_app/static/tasks_app/console.css has the same as classes .state-<name>).
STATE_COLOURS = {
    "created": "#e0e0e0", "pending": "#fff3b0", "running": "#9ecbff", "retrying": "#ffd59e",
    "paused": "#d7c4f2", "completed": "#a8e6a1", "failed": "#f4a3a3", "cancelled": "#c9c9c9",
    "skipped": "#f0f0f0", "open": "#f4a3a3", "resolved": "#a8e6a1", "online": "#a8e6a1",
    "offline": "#c9c9c9",
}  # fmt: skip


def state_badge(state: str, text: str = "") -> str:
    """A state as a coloured badge (CSS class state-<state>), its name kept as text for readers
    without colour."""
    return format_html('<span class="state-badge state-{}">{}</span>', state, text or state)


def at_millis(value: dt.datetime | None) -> str:
    """An instant to the millisecond, in the current time zone."""
    if value is None:
        return "-"
    local = timezone.localtime(value)
    return f"{local:%Y-%m-%d %H:%M:%S}.{local.microsecond // 1000:03d} {local:%Z}"


def seconds_text(seconds: float | None) -> str:
    """A length of time for people: 0.042 s, 12.5 s, 3 min 4 s, 2 h 5 min."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.3f} s" if seconds < 10 else f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"
