"""The dashboard in a real browser: its chart drawn with the counts of the runs that finished."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from django.utils import timezone
from playwright.sync_api import Page, expect

from tasks_app import rollups
from tasks_app.lifecycle import RunState
from tasks_app.models import Run, Task

S = RunState


def _finished(make_run: Callable[..., Run], task: Task, state: RunState, minutes_ago: float) -> None:
    at = timezone.now() - dt.timedelta(minutes=minutes_ago)
    make_run(task, state, started_at=at - dt.timedelta(seconds=1), finished_at=at, worker="w1",
             error={"type": "OSError", "message": "disk full"} if state == S.FAILED else None)  # fmt: skip


def _sum(page: Page, attribute: str) -> int:
    return page.locator("svg.runs-chart g.bar").evaluate_all(
        f"bars => bars.reduce((n, bar) => n + Number(bar.dataset.{attribute}), 0)"
    )


def test_the_chart_draws_each_finished_run_and_the_failed_below_the_axis(
    signed_in_page: Page, make_task: Callable[..., Task], make_run: Callable[..., Run]
) -> None:
    task, flaky = make_task(name="report"), make_task(name="flaky")
    for minutes_ago in (1, 2, 12, 25, 40):
        _finished(make_run, task, S.COMPLETED, minutes_ago)
    _finished(make_run, flaky, S.FAILED, 3)
    _finished(make_run, flaky, S.FAILED, 30)
    _finished(make_run, flaky, S.COMPLETED, 300)  # outside the hour, inside the day
    rollups.catch_up()
    page = signed_in_page

    page.goto("/admin/?window=1h")

    bars = page.locator("svg.runs-chart g.bar")
    expect(bars).to_have_count(12)
    assert (_sum(page, "completed"), _sum(page, "failed")) == (5, 2)
    # Drawn, not only counted: a green rect per bar with completed runs, a red one per failure bar.
    completed_bars = page.locator("svg.runs-chart g.bar:not([data-completed='0'])").count()
    expect(page.locator("svg.runs-chart rect.bar-completed")).to_have_count(completed_bars)
    expect(page.locator("svg.runs-chart rect.bar-failed")).to_have_count(2)
    expect(page.locator("#card-finished .figure")).to_have_text("7")
    expect(page.locator("#top-failing-module")).to_contain_text("OSError: disk full")

    page.locator("#window-24h").click()

    expect(page.locator("svg.runs-chart g.bar")).to_have_count(24)
    assert _sum(page, "completed") == 6
    expect(page.locator("#card-finished .figure")).to_have_text("8")
