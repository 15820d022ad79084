"""The dashboard: the admin's index, with what an operator looks at first.

For a window (1 h, 24 h, 7 d): finished runs per interval by state (failed drawn below the
axis), success rate, p50/p95 duration per task, how late scheduled runs started (p99), the
tasks failing most with their last error; and now: open alerts, runs waiting and running,
workers online with their load, queue depths, the next fires and the late schedules.

The window's figures come from the rollup (tasks_app.rollups), never from a scan of the runs
table; the rest from indexed reads of small sets. Drawn on the server: it reads with
JavaScript off. bench/console.py times it with a million runs in the table.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from django.contrib import admin
from django.db.models import Count, Q
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

from tasks_app import broker, rollups
from tasks_app.admin.common import STATE_COLOURS
from tasks_app.choices import ACTIVE_STATES, AlertState, RunState
from tasks_app.models import Alert, Run, Schedule, Task
from tasks_app.models.schedules import RECOMPUTE
from tasks_app.workers import known_queues, online_workers

logger = logging.getLogger(__name__)
S = RunState

DEFAULT_WINDOW = "24h"
OPEN_ALERTS_SHOWN = 20
TASKS_SHOWN = 20
FIRES_SHOWN = 10
# A schedule whose next instant is this far past has not been fired: it is late.
LATE_AFTER = dt.timedelta(seconds=60)
# Stacked above the axis, bottom first; failed runs are drawn below it.
STACKED = (S.COMPLETED, S.CANCELLED, S.SKIPPED)


@dataclass(frozen=True)
class TaskRow:
    name: str
    pk: int
    figures: rollups.TaskFigures

    @property
    def runs(self) -> int:
        return sum(self.figures.counts.values())


def chart_svg(summary: rollups.Summary) -> SafeString:
    """Finished runs per interval as stacked bars: completed, cancelled and skipped above the
    axis, failed below it. Each bar says its counts in a <title> and in data- attributes."""
    bars = summary.bars
    width, up, down, gap, left = 720, 150, 60, 2, 44
    bar_w = max(2, (width - left) // max(len(bars), 1) - gap)
    top = max([sum(counts[state] for state in STACKED) for _at, counts in bars] + [1])
    bottom = max([counts[S.FAILED] for _at, counts in bars] + [1])
    scale_up, scale_down = up / top, down / bottom
    parts = []
    for i, (at, counts) in enumerate(bars):
        x = left + i * (bar_w + gap)
        y = up
        rects = []
        for state in STACKED:
            h = counts[state] * scale_up
            if h:
                y -= h
                rects.append(format_html(
                    '<rect class="bar-{}" x="{}" y="{}" width="{}" height="{}" fill="{}"/>',
                    state, x, round(y, 1), bar_w, round(h, 1), STATE_COLOURS[state],
                ))  # fmt: skip
        if counts[S.FAILED]:
            rects.append(format_html(
                '<rect class="bar-failed" x="{}" y="{}" width="{}" height="{}" fill="{}"/>',
                x, up + 1, bar_w, round(counts[S.FAILED] * scale_down, 1), STATE_COLOURS[S.FAILED],
            ))  # fmt: skip
        local = timezone.localtime(at)
        title = ", ".join(f"{counts[state]} {state}" for state in (*STACKED, S.FAILED))
        parts.append(format_html(
            '<g class="bar" data-at="{}" data-completed="{}" data-failed="{}" data-cancelled="{}" '
            'data-skipped="{}"><title>{}: {}</title>{}</g>',
            at.isoformat(), counts[S.COMPLETED], counts[S.FAILED], counts[S.CANCELLED], counts[S.SKIPPED],
            f"{local:%Y-%m-%d %H:%M}", title, mark_safe("".join(rects)),
        ))  # fmt: skip
    ticks = []
    step = max(1, len(bars) // 6)
    for i in range(0, len(bars), step):
        local = timezone.localtime(bars[i][0])
        label = f"{local:%H:%M}" if summary.window.span <= dt.timedelta(days=1) else f"{local:%a %H:%M}"
        ticks.append(format_html(
            '<text x="{}" y="{}" font-size="10" fill="#666">{}</text>',
            left + i * (bar_w + gap), up + down + 14, label,
        ))  # fmt: skip
    return format_html(
        '<svg xmlns="http://www.w3.org/2000/svg" class="runs-chart" viewBox="0 0 {} {}" role="img" '
        'aria-label="finished runs per {} by state">'
        '<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#888"/>'
        '<text x="0" y="10" font-size="10" fill="#666">{}</text>'
        '<text x="0" y="{}" font-size="10" fill="#666">{} failed</text>{}{}</svg>',
        width, up + down + 20, summary.window.bar_text,
        left, up, width, up, top, up + down, bottom, mark_safe("".join(parts)), mark_safe("".join(ticks)),
    )  # fmt: skip


def _queue_depths(queues: set[str]) -> dict[str, int | None]:
    """Messages waiting per queue, as the broker says; None where it cannot say."""
    try:
        return dict(broker.queue_lengths(queues))
    except Exception as exc:  # the broker down must not take the dashboard with it
        logger.warning("queue lengths: the broker did not answer: %s", exc)
        return dict.fromkeys(sorted(queues))


def dashboard_context(request: HttpRequest, now: dt.datetime | None = None) -> dict[str, Any]:
    now = now or timezone.now()
    name = request.GET.get("window", DEFAULT_WINDOW)
    window = rollups.WINDOWS.get(name) or rollups.WINDOWS[DEFAULT_WINDOW]
    context: dict[str, Any] = {"windows": list(rollups.WINDOWS), "window": window, "now": now}
    user = request.user
    if user.has_perm("tasks_app.view_run"):
        summary = rollups.summary(window, now)
        names = dict(Task.objects.filter(pk__in=summary.tasks).values_list("pk", "name"))

        def row(figures: rollups.TaskFigures) -> TaskRow:
            return TaskRow(names.get(figures.task_id, f"task {figures.task_id}"), figures.task_id, figures)

        rows = sorted(map(row, summary.tasks.values()), key=lambda r: (-r.runs, r.name))
        context.update(
            summary=summary,
            chart=chart_svg(summary),
            finished=sum(summary.counts.values()),
            task_rows=rows[:TASKS_SHOWN],
            top_failing=[row(figures) for figures in summary.top_failing()],
            # Index run_state_due: a range of each unfinished state.
            active=dict(
                Run.objects.filter(state__in=ACTIVE_STATES)
                .values_list("state")
                .annotate(n=Count("id"))
                .order_by()
            ),
        )
    if user.has_perm("tasks_app.view_worker"):
        workers = list(online_workers(now))
        running = dict(
            Run.objects.filter(state=S.RUNNING, worker__in=[w.hostname for w in workers])
            .values_list("worker")
            .annotate(n=Count("id"))
            .order_by()
        )
        context["workers"] = [
            (worker, running.get(worker.hostname, 0), (now - worker.last_heartbeat).total_seconds())
            for worker in workers
        ]
        context["capacity"] = sum(worker.concurrency for worker in workers)
        context["busy"] = sum(running.values())
        context["queues"] = _queue_depths(known_queues(workers))
    if user.has_perm("tasks_app.view_schedule"):
        # Index schedule_due (enabled, next_fire_at) serves both.
        enabled = Schedule.objects.filter(enabled=True, invalid_reason="").select_related("task", "workflow")
        context["next_fires"] = list(
            enabled.filter(next_fire_at__gte=now - LATE_AFTER).order_by("next_fire_at")[:FIRES_SHOWN]
        )
        late = enabled.filter(next_fire_at__gt=RECOMPUTE, next_fire_at__lt=now - LATE_AFTER)
        context["late_schedules"] = list(late.order_by("next_fire_at")[:FIRES_SHOWN])
        context["set_aside"] = Schedule.objects.filter(enabled=True).filter(~Q(invalid_reason="")).count()
    if user.has_perm("tasks_app.view_alert"):
        open_alerts = Alert.objects.filter(state=AlertState.OPEN)
        shown = list(open_alerts.select_related("rule").order_by("-opened_at", "-id")[:OPEN_ALERTS_SHOWN])
        context["open_alerts"] = shown
        context["open_alerts_count"] = open_alerts.count() if len(shown) == OPEN_ALERTS_SHOWN else len(shown)
    return context


_site_index = admin.site.index


def index(request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
    return _site_index(request, extra_context={**dashboard_context(request), **(extra_context or {})})


admin.site.index = index
admin.site.index_template = "tasks_app/admin/index.html"
admin.site.index_title = "Dashboard"
