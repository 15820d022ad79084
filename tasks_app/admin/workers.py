"""Workers (they record themselves) and API tokens."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.db.models import Count, IntegerField, OuterRef, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from rest_framework.authtoken.admin import TokenAdmin
from rest_framework.authtoken.models import TokenProxy

from tasks_app import rollups
from tasks_app.admin.common import at_seconds, seconds_text, state_badge
from tasks_app.choices import RunState
from tasks_app.models import (
    ApiToken,
    Run,
    Worker,
)

TOTALS_SPAN = dt.timedelta(hours=24)  # the window of the processed and failed counts
RUNNING_SHOWN = 50  # a worker's running runs its page links (at most its concurrency, in practice)
# A worker's status in the run states' colours: alive as a completed run, gone as a cancelled one.
STATUS_LOOK = {"online": RunState.COMPLETED, "offline": RunState.CANCELLED}


def heartbeat_age(worker: Worker, now: dt.datetime) -> str:
    """How long ago its last heartbeat was: "12 s ago", "3 min 4 s ago"."""
    seconds = max(0.0, (now - worker.last_heartbeat).total_seconds())
    return f"{int(seconds)} s ago" if seconds < 60 else f"{seconds_text(seconds)} ago"


@admin.register(Worker)
class WorkerAdmin(admin.ModelAdmin):
    """Read-only: workers record themselves (tasks_app.workers)."""

    list_display = ["hostname", "status", "heartbeat", "active_of_capacity", "queue_list", "handler_list",
                    "processed", "failed", "pid", "version"]  # fmt: skip
    readonly_fields = ["hostname", "status", "heartbeat", "active_of_capacity", "running_runs", "queue_list",
                       "handler_list", "processed", "failed", "pid", "version", "started_at",
                       "stopped_at"]  # fmt: skip
    fields = readonly_fields
    search_fields = ["hostname"]

    def get_fields(self, request: HttpRequest, obj: Worker | None = None) -> Any:
        fields = super().get_fields(request, obj)
        # Which runs it is running is the runs' to show: for those who may view runs.
        return (
            fields
            if request.user.has_perm("tasks_app.view_run")
            else [f for f in fields if f != "running_runs"]
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # workers record themselves

    def has_change_permission(self, request: HttpRequest, obj: Worker | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Worker | None = None) -> bool:
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet[Worker]:
        # The runs each executes, counted for the whole list in its one query (GROUP BY worker).
        running = Run.objects.filter(state=RunState.RUNNING, worker=OuterRef("hostname")).order_by()
        count = Subquery(
            running.values("worker").annotate(n=Count("id")).values("n")[:1], output_field=IntegerField()
        )
        return super().get_queryset(request).annotate(active_runs=Coalesce(count, 0))

    def get_changelist_instance(self, request: HttpRequest) -> Any:
        changelist = super().get_changelist_instance(request)
        # The rollup's counts for the page's workers, in one query; the rows are the list's own
        # (its evaluated queryset), so the columns below read them.
        totals = rollups.worker_totals(timezone.now() - TOTALS_SPAN)
        for worker in changelist.result_list:
            worker.totals = totals.get(worker.hostname, {})
        return changelist

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict | None = None
    ) -> HttpResponse:
        worker = self.get_object(request, unquote(object_id))
        if worker is not None:
            extra_context = {**(extra_context or {}), "title": f"worker {worker.hostname}", "subtitle": None}
        return super().change_view(request, object_id, form_url, extra_context)

    def _totals(self, worker: Worker) -> dict[str, int]:
        if not hasattr(worker, "totals"):  # its own page: one worker's
            totals = rollups.worker_totals(timezone.now() - TOTALS_SPAN)
            worker.totals = totals.get(worker.hostname, {})
        return worker.totals

    @admin.display(description="status")
    def status(self, worker: Worker) -> str:
        status = "online" if worker.online else "offline"
        return format_html('<span class="worker-status worker-{}">{}</span>', status,
                           state_badge(STATUS_LOOK[status], status))  # fmt: skip

    @admin.display(description="last heartbeat", ordering="last_heartbeat")
    def heartbeat(self, worker: Worker) -> str:
        return format_html(
            '<span class="heartbeat-age" title="{}">{}</span>',
            at_seconds(worker.last_heartbeat), heartbeat_age(worker, timezone.now()),
        )  # fmt: skip

    @admin.display(description="active / capacity", ordering="active_runs")
    def active_of_capacity(self, worker: Worker) -> str:
        return format_html(
            '<span class="worker-active">{} / {}</span>',
            getattr(worker, "active_runs", 0),
            worker.concurrency,
        )

    @admin.display(description="queues")
    def queue_list(self, worker: Worker) -> str:
        return ", ".join(worker.queues) or "-"

    @admin.display(description="handlers")
    def handler_list(self, worker: Worker) -> str:
        return ", ".join(sorted(worker.handlers)) or "-"

    @admin.display(description="processed (24 h)")
    def processed(self, worker: Worker) -> str:
        return format_html('<span class="worker-processed">{}</span>', sum(self._totals(worker).values()))

    @admin.display(description="failed (24 h)")
    def failed(self, worker: Worker) -> str:
        return format_html(
            '<span class="worker-failed">{}</span>', self._totals(worker).get(RunState.FAILED, 0)
        )

    @admin.display(description="running runs")
    def running_runs(self, worker: Worker) -> str:
        runs = (
            Run.objects.filter(state=RunState.RUNNING, worker=worker.hostname)
            .select_related("task")
            .order_by("started_at")[:RUNNING_SHOWN]
        )
        now = timezone.now()
        return format_html_join(
            mark_safe("<br>"),
            '<a class="worker-run" href="{}">run {} of {}</a> (running for {})',
            (
                (reverse("admin:tasks_app_run_change", args=[run.pk]), run.pk, run.task.name,
                 seconds_text((now - run.started_at).total_seconds()) if run.started_at else "-")
                for run in runs
            ),
        ) or "-"  # fmt: skip


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
