from __future__ import annotations

import datetime as dt

import pytest
import time_machine
from django_celery_beat.models import PeriodicTask

from tasks_app.models import Run, Schedule

URL = "/api/v1/schedules/"
NOW = dt.datetime(2026, 3, 2, 12, 0, 20, tzinfo=dt.UTC)
SCHEDULE_FIELDS = {
    "id", "task", "cron", "interval_seconds", "run_at", "timezone", "args", "kwargs", "start_at", "end_at",
    "misfire_policy", "enabled", "description", "next_runs", "last_fired_at",
}  # fmt: skip


@pytest.fixture(autouse=True)
def _frozen():
    with time_machine.travel(NOW, tick=False):
        yield


def test_create_cron_schedule_reads_back_description_and_next_runs(api, task) -> None:
    response = api.post(
        URL,
        {"task": "noop", "cron": "30 2 * * *", "timezone": "Europe/Berlin", "kwargs": {"x": 1}},
        format="json",
    )

    assert response.status_code == 201, response.data
    assert SCHEDULE_FIELDS <= set(response.data)
    assert response.data["description"] == "At 02:30"
    # In the schedule's zone: 02:30 in Berlin, an hour ahead of UTC in March.
    assert response.data["next_runs"][:2] == ["2026-03-03T02:30:00+01:00", "2026-03-04T02:30:00+01:00"]
    assert len(response.data["next_runs"]) == 5
    assert response.data["misfire_policy"] == "skip"


def test_schedule_is_mirrored_as_a_periodic_task(api, task) -> None:
    response = api.post(URL, {"task": "noop", "cron": "*/10 * * * * *"}, format="json")

    mirror = Schedule.objects.get(pk=response.data["id"]).periodic_task
    assert mirror.crontab.minute == "*" and mirror.crontab.hour == "*"
    assert mirror.task == "tasks_app.schedule"

    interval = api.post(URL, {"task": "noop", "interval_seconds": 30}, format="json")
    assert Schedule.objects.get(pk=interval.data["id"]).periodic_task.interval.every == 30

    api.delete(f"{URL}{response.data['id']}/")
    assert not PeriodicTask.objects.filter(pk=mirror.pk).exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "* * *"}, "cron"),
        ({"cron": "* * * * *", "timezone": "Mars/Olympus"}, "timezone"),
        ({"interval_seconds": 0}, "interval_seconds"),
        ({}, "cron"),
        ({"cron": "* * * * *", "interval_seconds": 60}, "interval_seconds"),
        ({"interval_seconds": 60, "run_at": "2026-04-01T00:00:00Z"}, "run_at"),
        (
            {"interval_seconds": 60, "start_at": "2026-04-02T00:00:00Z", "end_at": "2026-04-01T00:00:00Z"},
            "end_at",
        ),
        ({"interval_seconds": 60, "misfire_policy": "sometimes"}, "misfire_policy"),
        ({"interval_seconds": 60, "task": "missing"}, "task"),
        ({"interval_seconds": 60, "workflow": "nightly"}, "workflow"),
        ({"cron": "0 0 30 2 *"}, "cron"),
        ({"cron": "0 0 31 4,6,9,11 *"}, "cron"),
        ({"cron": "R R * * *"}, "cron"),
        ({"cron": "0 r(1-5) * * *"}, "cron"),
        ({"cron": "* * * * mon-sun/99999"}, "cron"),
    ],
)
def test_invalid_schedule_is_a_400_naming_the_problem(api, task, body, field) -> None:
    response = api.post(URL, {"task": "noop", **body}, format="json")
    assert response.status_code == 400
    assert field in response.data
    assert not Schedule.objects.exists()


def test_patch_to_another_kind_switches_it(api, task) -> None:
    created = api.post(URL, {"task": "noop", "cron": "* * * * *"}, format="json")
    response = api.patch(f"{URL}{created.data['id']}/", {"interval_seconds": 90}, format="json")
    assert response.status_code == 200
    schedule = Schedule.objects.get()
    assert (schedule.cron, schedule.interval_seconds) == ("", 90)


def test_preview_answers_without_saving(api) -> None:
    response = api.post(
        URL + "preview/", {"cron": "0 9 * * 1-5", "timezone": "America/New_York"}, format="json"
    )
    assert response.status_code == 200
    assert response.data["description"] == "At 09:00, Monday through Friday"
    assert response.data["next_runs"][0] == "2026-03-02T14:00:00+00:00"
    assert not Schedule.objects.exists()


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({"cron": "bad"}, "cron", "invalid"),
        ({"cron": "* * * * *", "timezone": "X/Y"}, "timezone", "unknown time zone"),
        ({"cron": "0 0 30 2 *"}, "cron", "never fires"),
        ({"cron": "0 0 31 4,6,9,11 *", "timezone": "Europe/Berlin"}, "cron", "never fires"),
        ({"cron": "R * * * *"}, "cron", "random"),
        ({"cron": "* * * * mon-sun/99999"}, "cron", "invalid"),
    ],
)
def test_preview_of_a_bad_expression_is_a_400(api, body, field, says) -> None:
    response = api.post(URL + "preview/", body, format="json")
    assert response.status_code == 400
    assert says in str(response.data[field])


def test_a_cron_that_fires_only_in_leap_years_is_accepted(api, task) -> None:
    response = api.post(URL, {"task": "noop", "cron": "0 0 29 2 *"}, format="json")
    assert response.status_code == 201, response.data
    assert response.data["next_runs"][:2] == ["2028-02-29T00:00:00+00:00", "2032-02-29T00:00:00+00:00"]


def test_a_refused_cron_writes_nothing(api, task) -> None:
    response = api.post(URL, {"task": "noop", "cron": "0 0 30 2 *"}, format="json")
    assert response.status_code == 400
    assert not Schedule.objects.exists()
    assert not PeriodicTask.objects.exists()


def test_pause_resume_and_their_409s(api, task) -> None:
    created = api.post(URL, {"task": "noop", "interval_seconds": 60}, format="json")
    path = f"{URL}{created.data['id']}/"

    paused = api.post(path + "pause/")
    again = api.post(path + "pause/")
    resumed = api.post(path + "resume/")

    assert (paused.status_code, paused.data["enabled"]) == (200, False)
    assert len(paused.data["next_runs"]) == 5  # listed while paused, as they would fire once resumed
    assert again.status_code == 409
    assert (resumed.status_code, resumed.data["enabled"]) == (200, True)
    assert Schedule.objects.get().periodic_task.enabled is True
    assert api.post(path + "resume/").status_code == 409


def test_trigger_fires_once_now_as_a_manual_run(api, task, broker) -> None:
    created = api.post(URL, {"task": "noop", "cron": "0 0 1 1 *", "kwargs": {"x": 2}}, format="json")
    response = api.post(f"{URL}{created.data['id']}/trigger/")
    assert response.status_code == 201
    assert (response.data["trigger"], response.data["schedule"], response.data["kwargs"]) == (
        "manual",
        created.data["id"],
        {"x": 2},
    )
    assert Run.objects.get().schedule_id == created.data["id"]


def test_runs_filter_by_schedule(api, task, broker) -> None:
    created = api.post(URL, {"task": "noop", "interval_seconds": 60}, format="json")
    api.post(f"{URL}{created.data['id']}/trigger/")
    api.post("/api/v1/runs/", {"task": "noop"}, format="json")
    listed = api.get("/api/v1/runs/", {"schedule": created.data["id"]})
    assert len(listed.data["results"]) == 1


def test_schedule_writes_need_permissions(reader, anonymous, task) -> None:
    assert anonymous.get(URL).status_code == 401
    assert reader.get(URL).status_code == 200
    assert reader.post(URL, {"task": "noop", "interval_seconds": 60}, format="json").status_code == 403
    assert reader.post(URL + "preview/", {"cron": "* * * * *"}, format="json").status_code == 200
    assert not Schedule.objects.exists()
