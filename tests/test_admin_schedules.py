"""The schedule editor and list in the admin: when a schedule fires, in its zone, read from the
server; the API's preview the editor's script asks; the last fire's run on each row."""

from __future__ import annotations

import datetime as dt
import re

import pytest
import time_machine
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from tasks_app import workflows
from tasks_app.lifecycle import RunState
from tasks_app.models import Schedule, Workflow
from tasks_app.models.workflows import check_steps

NOW = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)  # a Sunday; New York springs forward on the 8th
PREVIEW = "/api/v1/schedules/preview/"


@pytest.fixture
def frozen():
    with time_machine.travel(NOW, tick=False):
        yield


def fire_times(page: str) -> list[tuple[str, str]]:
    """The (datetime attribute, text) of each next fire time the page lists."""
    return re.findall(r'<li class="next-fire"><time datetime="([^"]+)">([^<]+)</time></li>', page)


def test_the_change_page_says_in_words_and_in_its_zone_when_a_cron_schedule_fires(
    admin_client, task, frozen
) -> None:
    schedule = Schedule.objects.create(task=task, cron="0 9 * * 1-5", timezone="America/New_York")

    page = admin_client.get(f"/admin/tasks_app/schedule/{schedule.pk}/change/").content.decode()

    assert 'id="schedule-preview"' in page
    assert '<p class="schedule-description">At 09:00, Monday through Friday</p>' in page
    assert 'Next 10 fire time(s) in <span class="schedule-zone">America/New_York</span>:' in page
    weekdays = [2, 3, 4, 5, 6, 9, 10, 11, 12, 13]  # March 2026; from the 9th, daylight-saving time
    assert fire_times(page) == [
        (
            f"2026-03-{day:02d}T09:00:00{'-05:00' if day < 8 else '-04:00'}",
            f"{dt.date(2026, 3, day):%a} 2026-03-{day:02d} 09:00:00 {'-05:00' if day < 8 else '-04:00'}",
        )
        for day in weekdays
    ]


def test_the_change_page_lists_the_next_fires_of_an_interval_and_of_an_instant(
    admin_client, task, frozen
) -> None:
    every = Schedule.objects.create(
        task=task, interval_seconds=90, timezone="Europe/Berlin", start_at=NOW - dt.timedelta(seconds=30)
    )
    once = Schedule.objects.create(task=task, run_at=NOW + dt.timedelta(hours=1, seconds=5), enabled=False)

    every_page = admin_client.get(f"/admin/tasks_app/schedule/{every.pk}/change/").content.decode()
    once_page = admin_client.get(f"/admin/tasks_app/schedule/{once.pk}/change/").content.decode()

    assert "Every 90 seconds" in every_page
    times = [text for _iso, text in fire_times(every_page)]
    assert times[:2] == ["Sun 2026-03-01 13:01:00 +01:00", "Sun 2026-03-01 13:02:30 +01:00"]
    assert len(times) == 10
    assert "(paused: the times it would fire)" in once_page
    assert fire_times(once_page) == [("2026-03-01T13:00:05+00:00", "Sun 2026-03-01 13:00:05 +00:00")]


def test_the_add_page_has_the_preview_box_and_its_script_from_the_apps_own_static_files(
    admin_client, task
) -> None:
    page = admin_client.get("/admin/tasks_app/schedule/add/").content.decode()

    box = re.search(r'<div id="schedule-preview"[^>]*>', page)
    assert box and f'data-preview-url="{PREVIEW}"' in box.group() and 'data-count="10"' in box.group()
    assert '<script src="/static/tasks_app/schedule_editor.js"' in page
    scripts = re.findall(r'<script[^>]+src="([^"]+)"', page)
    assert scripts and all(src.startswith("/") and not src.startswith("//") for src in scripts)  # no CDN


def test_a_schedule_that_cannot_fire_says_why_on_its_page(admin_client, task) -> None:
    schedule = Schedule.objects.create(task=task, interval_seconds=60)
    Schedule.objects.filter(pk=schedule.pk).update(interval_seconds=None, cron="0 0 30 2 *")

    response = admin_client.get(f"/admin/tasks_app/schedule/{schedule.pk}/change/")

    assert response.status_code == 200
    assert re.search(
        r'class="schedule-preview-problem errornote">[^<]*never fires', response.content.decode()
    )


# --- the preview the editor's script asks ------------------------------------------------


@pytest.fixture
def browser(db):
    """A browser's session: signed in to the admin, with CSRF checked as a real one is."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(User.objects.create_superuser("editor", password="pw"))
    return client


def csrf_token(client: Client) -> str:
    page = client.get("/admin/tasks_app/schedule/add/").content.decode()
    return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)


def test_the_preview_answers_the_admins_session_with_the_number_of_times_asked(browser, frozen) -> None:
    token = csrf_token(browser)
    body = {"cron": "30 2 * * *", "timezone": "America/New_York", "count": 10}

    refused = browser.post(PREVIEW, body, content_type="application/json")
    answered = browser.post(PREVIEW, body, content_type="application/json", headers={"X-CSRFToken": token})

    assert refused.status_code == 403  # a session's write needs its CSRF token, as the script sends
    assert answered.status_code == 200
    assert answered.json()["description"] == "At 02:30"
    runs = answered.json()["next_runs"]
    assert len(runs) == 10
    # 02:30 does not exist on March 8th in New York: it fires once, as the clocks jump.
    assert runs[:8] == [
        "2026-03-02T02:30:00-05:00", "2026-03-03T02:30:00-05:00", "2026-03-04T02:30:00-05:00",
        "2026-03-05T02:30:00-05:00", "2026-03-06T02:30:00-05:00", "2026-03-07T02:30:00-05:00",
        "2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({"cron": "0 25 * * *", "count": 10}, "cron", "hour field: 25 is out of range 0-23"),
        ({"cron": "0 9 * * *", "timezone": "Mars/Olympus", "count": 10}, "timezone", "unknown time zone"),
        ({"cron": "0 9 * * *", "count": 51}, "count", "less than or equal to 50"),
        ({"cron": "0 9 * * *", "count": 0}, "count", "greater than or equal to 1"),
    ],
)
def test_the_preview_refuses_with_a_400_naming_the_field(browser, body, field, says) -> None:
    response = browser.post(
        PREVIEW, body, content_type="application/json", headers={"X-CSRFToken": csrf_token(browser)}
    )

    assert response.status_code == 400
    assert list(response.json()) == [field]
    assert says in response.json()[field][0]


def test_the_preview_lists_five_times_when_no_count_is_given(browser) -> None:
    response = browser.post(
        PREVIEW,
        {"cron": "@hourly"},
        content_type="application/json",
        headers={"X-CSRFToken": csrf_token(browser)},
    )
    assert (response.status_code, len(response.json()["next_runs"])) == (200, 5)


# --- the list ----------------------------------------------------------------------------


def _fired(task, make_run, state: RunState, at: dt.datetime) -> tuple[Schedule, int]:
    """A schedule whose last fire made a run that is now in `state`."""
    schedule = Schedule.objects.create(task=task, cron="*/5 * * * *", last_fired_at=at)
    make_run(task, RunState.COMPLETED, schedule=schedule, scheduled_for=at - dt.timedelta(minutes=5))
    run = make_run(task, state, schedule=schedule, scheduled_for=at)
    make_run(task, RunState.PENDING, schedule=schedule)  # fired by hand: no scheduled instant
    return schedule, run.pk


def _list(admin_client) -> tuple[str, int]:
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get("/admin/tasks_app/schedule/")
    assert response.status_code == 200
    return response.content.decode(), len(queries)


def test_the_list_shows_next_and_last_fire_to_the_second_and_the_last_fires_run_state_in_one_query(
    admin_client, task, make_run, frozen
) -> None:
    first, first_run = _fired(task, make_run, RunState.FAILED, NOW - dt.timedelta(seconds=7))
    Schedule.objects.filter(pk=first.pk).update(next_fire_at=NOW + dt.timedelta(minutes=3, seconds=9))
    _page, alone = _list(admin_client)

    _second, second_run = _fired(task, make_run, RunState.RUNNING, NOW - dt.timedelta(minutes=1))
    steps = check_steps([{"key": "A", "task": "noop"}], {"noop"})
    flow = Schedule.objects.create(workflow=Workflow.objects.create(name="etl-daily", steps=steps),
                                   interval_seconds=60, last_fired_at=NOW)  # fmt: skip
    workflow_run = workflows.start(flow.workflow, schedule=flow, scheduled_for=NOW, now=NOW)
    Schedule.objects.create(task=task, interval_seconds=60)  # never fired
    page, several = _list(admin_client)

    assert several == alone  # no query per row
    assert "2026-03-01 12:03:09 UTC" in page  # next fire
    assert "2026-03-01 11:59:53 UTC" in page  # last fire
    for url, state in [
        (f"/admin/tasks_app/run/{first_run}/change/", "failed"),
        (f"/admin/tasks_app/run/{second_run}/change/", "running"),
        (f"/admin/tasks_app/workflowrun/{workflow_run.pk}/change/", "running"),
    ]:
        badge = f'<span class="state-badge state-{state}">{state}</span>'
        assert re.search(rf'<a class="last-fire-run" href="{url}"[^>]*>{badge}</a>', page), url
    assert "workflow etl-daily" in page  # what each fires, by name
