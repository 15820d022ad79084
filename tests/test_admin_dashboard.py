"""The dashboard on the admin's index: a window's figures from the rollup, and what holds now."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest
import time_machine
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tasks_app import rollups
from tasks_app.choices import RunState
from tasks_app.models import Schedule, Worker

S = RunState
NOW = dt.datetime(2026, 12, 3, 12, 0, 30, tzinfo=dt.UTC)


@pytest.fixture
def history(task, make_task, make_run) -> dict[str, Any]:
    """Runs finished over the last day, rolled up as beat would."""
    flaky = make_task(name="flaky")

    def finished(task, state, minutes_ago, seconds=1.0, error=None, worker="w1"):
        at = NOW - dt.timedelta(minutes=minutes_ago)
        make_run(task, state, started_at=at - dt.timedelta(seconds=seconds), finished_at=at, error=error,
                 worker=worker)  # fmt: skip

    for minutes_ago in (2, 3, 4, 20, 90, 300):
        finished(task, S.COMPLETED, minutes_ago, seconds=0.2)
    finished(flaky, S.FAILED, 7, error={"type": "ConnectionError", "message": "refused <b>"})
    finished(flaky, S.FAILED, 200, error={"type": "TimeoutError", "message": "old"})
    finished(flaky, S.COMPLETED, 8)
    finished(task, S.CANCELLED, 9)
    rollups.catch_up(NOW)
    return {"task": task, "flaky": flaky}


def _bars(html: str) -> list[dict[str, int]]:
    return [
        {
            key: int(value)
            for key, value in re.findall(r'data-(completed|failed|cancelled|skipped)="(\d+)"', bar)
        }
        for bar in re.findall(r'<g class="bar"[^>]*>', html)
    ]


@time_machine.travel(NOW, tick=False)
def test_the_last_hour_is_drawn_in_five_minute_bars_with_failed_apart(admin_client, history) -> None:
    html = admin_client.get("/admin/?window=1h").content.decode()

    bars = _bars(html)
    assert len(bars) == 12
    assert sum(bar["completed"] for bar in bars) == 5  # 2, 3, 4, 8 and 20 minutes ago
    assert sum(bar["failed"] for bar in bars) == 1
    assert sum(bar["cancelled"] for bar in bars) == 1
    # The last bar is the interval now under way (12:00-12:05); the one before holds the runs
    # of 2, 3 and 4 minutes ago.
    assert bars[-1]["completed"] == 0 and bars[-2]["completed"] == 3
    assert 'id="card-finished"><div class="figure">7<' in html
    assert "83.3 %" in html  # 5 completed of 6 completed or failed


@time_machine.travel(NOW, tick=False)
def test_a_day_shows_hourly_bars_rates_quantiles_and_the_last_error(admin_client, history) -> None:
    html = admin_client.get("/admin/").content.decode()  # 24 h by default

    assert len(_bars(html)) == 24
    assert sum(bar["completed"] for bar in _bars(html)) == 7
    failing = html[html.index('id="top-failing-module"') :]
    failing = failing[: failing.index("</table>")]
    assert "flaky" in failing and "<td>2</td>" in failing
    # The newest failure's error, escaped; linked to its run.
    assert "ConnectionError: refused &lt;b&gt;" in failing and "TimeoutError" not in failing
    tasks = html[html.index('id="tasks-module"') :]
    row = tasks[tasks.index(">noop<") : tasks.index("</tr>", tasks.index(">noop<"))]
    assert "<td>7</td>" in row and "100.0 %" in row  # 6 completed, 1 cancelled
    assert re.search(r"<td>0\.\d{3} s</td>", row)  # p50 of 0.2 s runs, read from the histogram


@time_machine.travel(NOW, tick=False)
def test_what_holds_now_workers_queues_fires_and_late_schedules(admin_client, task, make_run, broker) -> None:
    Worker.objects.create(hostname="celery@a", queues=["default"], concurrency=4, last_heartbeat=NOW)
    Worker.objects.create(hostname="celery@gone", queues=["default"], concurrency=4,
                          last_heartbeat=NOW - dt.timedelta(hours=1))  # fmt: skip
    make_run(task, S.RUNNING, worker="celery@a")
    make_run(task, S.PENDING)
    on_time = Schedule.objects.create(task=task, interval_seconds=60)
    late = Schedule.objects.create(task=task, interval_seconds=60)
    Schedule.objects.filter(pk=on_time.pk).update(next_fire_at=NOW + dt.timedelta(seconds=20))
    Schedule.objects.filter(pk=late.pk).update(next_fire_at=NOW - dt.timedelta(minutes=5))

    html = admin_client.get("/admin/").content.decode()

    workers = html[html.index('id="workers-module"') : html.index('id="queues-module"')]
    assert "celery@a" in workers and "celery@gone" not in workers
    assert "1 / 4" in workers
    assert "1 of 4 slots busy" in html
    assert 'data-queue="default">0<' in html  # the broker holds no message: make_run sent none
    fires = html[html.index('id="next-fires-module"') : html.index('id="late-schedules-module"')]
    assert f"/schedule/{on_time.pk}/change/" in fires and f"/schedule/{late.pk}/change/" not in fires
    assert "2026-12-03 12:00:50" in fires  # to the second
    late_part = html[html.index('id="late-schedules-module"') :]
    assert "Late schedules (1" in late_part and f"/schedule/{late.pk}/change/" in late_part


@time_machine.travel(NOW, tick=False)
def test_an_unreachable_broker_leaves_the_queue_depth_unknown_not_the_page_broken(
    admin_client, task, monkeypatch
) -> None:
    from scheduler_site.celery import app

    monkeypatch.setattr(app.conf, "broker_url", "redis://127.0.0.1:1/0")  # nothing listens there
    response = admin_client.get("/admin/")
    assert response.status_code == 200
    assert "unknown: the broker did not answer" in response.content.decode()


@time_machine.travel(NOW, tick=False)
def test_the_dashboard_costs_the_same_queries_for_ten_runs_as_for_a_thousand(
    admin_client, task, make_run, broker
) -> None:
    def queries() -> int:
        rollups.catch_up(NOW)
        with CaptureQueriesContext(connection) as captured:
            assert admin_client.get("/admin/?window=1h").status_code == 200
        return len(captured)

    for _ in range(9):
        make_run(task, S.COMPLETED, finished_at=NOW - dt.timedelta(minutes=1))
    make_run(task, S.FAILED, finished_at=NOW - dt.timedelta(minutes=1), error={"type": "E"})
    few = queries()
    for _ in range(990):
        make_run(task, S.FAILED, finished_at=NOW - dt.timedelta(minutes=2), error={"type": "E"})
    assert queries() == few


def test_each_part_is_shown_only_to_those_who_may_view_what_it_counts(client, db, history) -> None:
    user = User.objects.create_user("alerts-only", password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=["view_alert"]))
    client.force_login(user)
    html = client.get("/admin/").content.decode()
    assert 'id="card-alerts"' in html
    for part in (
        'class="runs-chart"',
        'id="top-failing-module"',
        'id="workers-module"',
        'id="next-fires-module"',
    ):
        assert part not in html
