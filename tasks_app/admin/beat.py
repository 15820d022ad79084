"""django-celery-beat's own models, with the mirrors of platform schedules read-only."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django_celery_beat import admin as beat_admin
from django_celery_beat.models import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask

from tasks_app.definitions import MIRROR_TASK
from tasks_app.models import (
    Schedule,
)

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
