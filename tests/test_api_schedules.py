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


def test_the_mirror_says_the_whole_timing_and_follows_every_edit(api, task) -> None:
    created = api.post(
        URL, {"task": "noop", "cron": "*/10 * * * * *", "timezone": "Europe/Berlin"}, format="json"
    )
    pk = created.data["id"]
    mirror = Schedule.objects.get(pk=pk).periodic_task
    assert mirror.description.startswith(
        f"Mirror of schedule {pk}: cron */10 * * * * * (Europe/Berlin): Every 10 seconds."
    )
    assert f"edit, pause or delete schedule {pk} there" in mirror.description

    PeriodicTask.objects.filter(pk=mirror.pk).update(
        description="Platform schedule 1 of task noop: ..."
    )  # older
    api.post(f"{URL}{pk}/pause/")
    assert "cron */10 * * * * * (Europe/Berlin)" in PeriodicTask.objects.get(pk=mirror.pk).description

    api.patch(f"{URL}{pk}/", {"interval_seconds": 90}, format="json")
    assert PeriodicTask.objects.get(pk=mirror.pk).description.startswith(
        f"Mirror of schedule {pk}: every 90s."
    )


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
    assert response.data["next_runs"][0] == "2026-03-02T09:00:00-05:00"  # the zone's own offset
    assert not Schedule.objects.exists()


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({"cron": "bad"}, "cron", "got 1 field(s)"),
        ({"cron": "* * * * *", "timezone": "X/Y"}, "timezone", "unknown time zone"),
        ({"cron": "0 0 30 2 *"}, "cron", "never fires"),
        ({"cron": "0 0 31 4,6,9,11 *", "timezone": "Europe/Berlin"}, "cron", "never fires"),
        ({"cron": "R * * * *"}, "cron", "random"),
        ({"cron": "* * * * mon-sun/99999"}, "cron", "step 99999 in 'mon-sun/99999' is out of range 1-6"),
    ],
)
def test_preview_of_a_bad_expression_is_a_400(api, body, field, says) -> None:
    response = api.post(URL + "preview/", body, format="json")
    assert response.status_code == 400
    assert says in response.data[field][0]


@pytest.mark.parametrize(
    ("cron", "says"),
    [
        ("5-1 * * * *", "cron expression '5-1 * * * *': minute field: range 5-1 runs backwards (5 > 1)"),
        ("0 22-2 * * *", "hour field: range 22-2 runs backwards (22 > 2); to wrap around, list two ranges"),
        ("0 0 20-10 * *", "day of month field: range 20-10 runs backwards (20 > 10)"),
        ("0 0 1 nov-feb *", "month field: range nov-feb runs backwards (11 > 2)"),
        ("0 9 * * fri-mon", "day of week field: range fri-mon runs backwards (5 > 1)"),
        ("30-10 * * * * *", "seconds field: range 30-10 runs backwards (30 > 10)"),
        ("0 25 * * *", "hour field: 25 is out of range 0-23"),
        ("*/0 * * * *", "minute field: step 0 in '*/0' is out of range 1-59"),
        ("0 0 1 jab *", "month field: unknown name 'jab' (use 1-12 or jan-dec)"),
        ("* * *", "got 3 field(s)"),
        ("what ever", "got 2 field(s)"),
    ],
)  # fmt: skip
def test_a_bad_cron_is_a_400_saying_which_field_and_why(api, task, cron, says) -> None:
    created = api.post(URL, {"task": "noop", "cron": cron}, format="json")
    previewed = api.post(URL + "preview/", {"cron": cron}, format="json")

    assert (created.status_code, previewed.status_code) == (400, 400)
    assert says in created.data["cron"][0]
    assert says in previewed.data["cron"][0]
    assert not Schedule.objects.exists()


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


def test_next_runs_of_a_paused_schedule_are_listed_with_the_schedules_offset(api, task) -> None:
    # New York springs forward on 2027-03-14: 02:30 does not exist that day, 03:00 EDT comes instead.
    with time_machine.travel(dt.datetime(2027, 3, 12, 12, tzinfo=dt.UTC), tick=False):
        created = api.post(
            URL,
            {"task": "noop", "cron": "30 2 * * *", "timezone": "America/New_York", "enabled": False},
            format="json",
        )
        shown = api.get(f"{URL}{created.data['id']}/")

    assert (created.status_code, shown.status_code) == (201, 200)
    assert shown.data["enabled"] is False
    assert shown.data["next_runs"] == [
        "2027-03-13T02:30:00-05:00",
        "2027-03-14T03:00:00-04:00",
        "2027-03-15T02:30:00-04:00",
        "2027-03-16T02:30:00-04:00",
        "2027-03-17T02:30:00-04:00",
    ]


def test_next_runs_stay_listed_after_a_pause(api, task) -> None:
    created = api.post(
        URL, {"task": "noop", "cron": "0 9 * * 1-5", "timezone": "Asia/Kolkata"}, format="json"
    )
    path = f"{URL}{created.data['id']}/"
    before = api.get(path).data["next_runs"]

    api.post(path + "pause/")
    paused = api.get(path).data

    assert paused["enabled"] is False
    assert paused["next_runs"] == before
    assert before[0] == "2026-03-03T09:00:00+05:30"  # NOW is Monday 17:30 in Kolkata
    assert len(before) == 5
