"""Workers in the admin: online or not, heartbeat age, active runs against capacity, queues,
handlers, what each finished in the last 24 hours (from the rollup); read-only pages."""

from __future__ import annotations

import datetime as dt
import re

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tasks_app import rollups
from tasks_app.lifecycle import RunState
from tasks_app.models import Worker

S = RunState
NOW = dt.datetime(2026, 3, 2, 12, 0, 0, tzinfo=dt.UTC)
ADMIN = "/admin/tasks_app/worker/"


@pytest.fixture
def frozen():
    with time_machine.travel(NOW, tick=False):
        yield


def worker(hostname: str, *, heartbeat_age: float = 12, **fields) -> Worker:
    fields.setdefault("queues", ["default", "reports"])
    fields.setdefault("concurrency", 4)
    fields.setdefault("handlers", ["builtin.noop", "builtin.http"])
    return Worker.objects.create(
        hostname=hostname, last_heartbeat=NOW - dt.timedelta(seconds=heartbeat_age), **fields
    )


def finished(make_run, task, hostname: str, state: RunState, n: int, hours_ago: float) -> None:
    at = NOW - dt.timedelta(hours=hours_ago)
    for _ in range(n):
        make_run(task, state, worker=hostname, started_at=at - dt.timedelta(seconds=3), finished_at=at)


@pytest.fixture
def busy(task, make_run, frozen) -> Worker:
    """w1: 3 runs running of 4 slots; 5 completed and 2 failed in the last day, 4 failed before."""
    w1 = worker("w1")
    running = [
        make_run(task, S.RUNNING, worker="w1", started_at=NOW - dt.timedelta(seconds=s)) for s in (5, 9, 70)
    ]
    finished(make_run, task, "w1", S.COMPLETED, 5, hours_ago=1)
    finished(make_run, task, "w1", S.FAILED, 2, hours_ago=3)
    finished(make_run, task, "w1", S.FAILED, 4, hours_ago=30)  # out of the window
    finished(make_run, task, "w2", S.FAILED, 1, hours_ago=1)  # another worker's
    rollups.catch_up(NOW)
    w1.running = running
    return w1


def field(page: str, name: str) -> str:
    found = re.search(rf'<div class="form-row field-{name}">.*?<div class="readonly">(.*?)</div>', page, re.S)
    assert found, name
    return found.group(1).strip()


def test_a_workers_page_shows_its_counts_capacity_heartbeat_age_and_running_runs(admin_client, busy) -> None:
    page = admin_client.get(f"{ADMIN}{busy.pk}/change/").content.decode()

    assert "<h1>worker w1</h1>" in page
    assert 'class="worker-status worker-online"' in field(page, "status")
    assert "online" in field(page, "status")
    assert field(page, "heartbeat").endswith(">12 s ago</span>")
    assert 'title="2026-03-02 11:59:48 UTC"' in field(page, "heartbeat")  # the instant, to the second
    assert field(page, "active_of_capacity") == '<span class="worker-active">3 / 4</span>'
    assert field(page, "processed") == '<span class="worker-processed">7</span>'
    assert field(page, "failed") == '<span class="worker-failed">2</span>'
    assert field(page, "queue_list") == "default, reports"
    assert field(page, "handler_list") == "builtin.http, builtin.noop"
    links = re.findall(
        r'<a class="worker-run" href="/admin/tasks_app/run/(\d+)/change/">', field(page, "running_runs")
    )
    assert links == [str(run.pk) for run in reversed(busy.running)]  # oldest first
    assert "(running for 1 min 10 s)" in field(page, "running_runs")


def test_a_workers_page_offers_no_save_and_no_delete_and_cannot_be_posted(admin_client, busy) -> None:
    page = admin_client.get(f"{ADMIN}{busy.pk}/change/").content.decode()

    assert 'name="_save"' not in page and 'name="_continue"' not in page
    assert "deletelink" not in page
    assert admin_client.post(f"{ADMIN}{busy.pk}/change/", {"concurrency": 99}).status_code == 403
    assert admin_client.post(f"{ADMIN}{busy.pk}/delete/", {"post": "yes"}).status_code == 403
    busy.refresh_from_db()
    assert busy.concurrency == 4


def _list(admin_client) -> tuple[str, int]:
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(ADMIN)
    assert response.status_code == 200
    return response.content.decode(), len(queries)


def row(page: str, hostname: str) -> str:
    found = re.search(rf"<tr>(?:(?!</tr>).)*?>{hostname}</a></th>.*?</tr>", page, re.S)
    assert found, hostname
    return found.group()


def test_the_list_shows_each_worker_in_one_query_for_all_rows(admin_client, busy, task, make_run) -> None:
    _page, alone = _list(admin_client)
    worker("w2", heartbeat_age=600, concurrency=2, queues=["default"])  # gone quiet: offline
    make_run(task, S.RUNNING, worker="w2", started_at=NOW)
    worker("w3", concurrency=8)

    page, several = _list(admin_client)

    assert several == alone  # no query per row
    assert 'value="delete_selected"' not in page
    w1, w2, w3 = (row(page, hostname) for hostname in ("w1", "w2", "w3"))
    assert 'class="worker-status worker-online"' in w1 and "3 / 4" in w1 and "12 s ago" in w1
    assert '<span class="worker-processed">7</span>' in w1 and '<span class="worker-failed">2</span>' in w1
    assert 'class="worker-status worker-offline"' in w2 and "1 / 2" in w2 and "10 min 0 s ago" in w2
    assert '<span class="worker-failed">1</span>' in w2
    assert "0 / 8" in w3 and '<span class="worker-processed">0</span>' in w3
