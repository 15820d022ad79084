"""Firing schedules in the database, with a controlled clock."""

from __future__ import annotations

import datetime as dt

import pytest
import time_machine
from django.db import IntegrityError, transaction

from tasks_app import scheduling
from tasks_app.choices import RunTrigger
from tasks_app.models import Run, Schedule
from tasks_app.models.schedules import RECOMPUTE
from tasks_app.scheduling import MIRROR_TASK, PlatformScheduler

UTC = dt.UTC
T0 = dt.datetime(2026, 3, 2, 12, 0, 0, tzinfo=UTC)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


@pytest.fixture
def make_schedule(make_task):
    def make(**fields) -> Schedule:
        fields.setdefault("task", make_task())
        with time_machine.travel(T0, tick=False):
            schedule = Schedule.objects.create(**fields)
        assert Schedule.objects.get(pk=schedule.pk).next_fire_at == RECOMPUTE  # the insert trigger
        scheduling.fire_due(now=T0)  # computes the first fire, fires nothing
        schedule.refresh_from_db()
        return schedule

    return make


def fire(now: dt.datetime) -> int:
    return scheduling.fire_due(now=now)


def fired_for(schedule: Schedule) -> list[dt.datetime]:
    return list(
        Run.objects.filter(schedule=schedule)
        .order_by("scheduled_for")
        .values_list("scheduled_for", flat=True)
    )


def test_new_schedule_gets_its_first_fire_computed_without_firing(make_schedule) -> None:
    schedule = make_schedule(cron="*/5 * * * *")
    assert schedule.next_fire_at == at(300)
    assert not Run.objects.exists()


def test_due_schedule_fires_one_run_for_its_instant(make_schedule, broker) -> None:
    schedule = make_schedule(cron="* * * * *", kwargs={"k": 1})

    assert fire(at(59)) == 0
    assert fire(at(60.4)) == 1

    run = Run.objects.get()
    assert (run.trigger, run.schedule_id, run.scheduled_for) == (RunTrigger.SCHEDULE, schedule.pk, at(60))
    assert run.kwargs == {"k": 1}
    assert run.lateness == dt.timedelta(seconds=0.4)
    schedule.refresh_from_db()
    assert (schedule.next_fire_at, schedule.last_fired_at) == (at(120), at(60.4))


def test_firing_twice_at_the_same_time_makes_one_run(make_schedule, broker) -> None:
    schedule = make_schedule(interval_seconds=10)
    fire(at(10))
    Schedule.objects.filter(pk=schedule.pk).update(next_fire_at=at(10))  # as a stale scheduler might see it
    fire(at(10))
    assert fired_for(schedule) == [at(10)]


def test_database_refuses_a_second_run_for_the_same_instant(make_schedule, make_run) -> None:
    schedule = make_schedule(interval_seconds=10)
    make_run(schedule.task, schedule=schedule, scheduled_for=at(10))
    with pytest.raises(IntegrityError), transaction.atomic():
        make_run(schedule.task, schedule=schedule, scheduled_for=at(10))


def test_seconds_field_fires_every_few_seconds(make_schedule, broker) -> None:
    schedule = make_schedule(cron="*/2 * * * * *")
    for second in range(1, 9):
        fire(at(second + 0.1))
    assert fired_for(schedule) == [at(2), at(4), at(6), at(8)]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("skip", [at(600)]),  # nothing for the missed minutes; the current one fires
        ("run_once", [at(540), at(600)]),  # one for all the missed, plus the current one
        ("catch_up", [at(s) for s in range(60, 601, 60)]),
    ],
)
def test_misfire_policy_after_the_schedulers_were_down(make_schedule, broker, policy, expected) -> None:
    schedule = make_schedule(cron="* * * * *", misfire_policy=policy)

    fire(at(600.5))  # ten minutes without a scheduler; 12:10 is on time

    assert fired_for(schedule) == expected
    schedule.refresh_from_db()
    assert (schedule.next_fire_at, schedule.missed_fires) == (at(660), 9)
    reasons = [
        run.events.first().reason for run in Run.objects.filter(schedule=schedule).order_by("scheduled_for")
    ]
    assert reasons[-1] == "scheduled"
    if policy == "run_once":
        assert reasons[0] == "misfire run_once: one run for 9 missed instant(s)"
    if policy == "catch_up":
        assert set(reasons[:-1]) == {"misfire catch_up: a missed instant"}


def test_catch_up_is_capped(make_schedule, broker, settings) -> None:
    settings.SCHEDULE_CATCH_UP_MAX = 3
    schedule = make_schedule(cron="* * * * *", misfire_policy="catch_up")
    fire(at(3600.5))
    assert fired_for(schedule) == [at(60), at(120), at(180)]


def test_bulk_update_of_the_expression_takes_effect_by_the_next_tick(make_schedule, broker) -> None:
    schedule = make_schedule(cron="0 * * * *")  # hourly: next 13:00
    assert schedule.next_fire_at == at(3600)

    Schedule.objects.filter(pk=schedule.pk).update(cron="*/10 * * * *")  # no save(), no signal
    fire(at(1))  # recomputes
    fire(at(600.2))

    assert fired_for(schedule) == [at(600)]


def test_paused_schedule_does_not_fire_and_resumes_from_now(make_schedule, broker) -> None:
    schedule = make_schedule(cron="* * * * *", misfire_policy="catch_up")
    Schedule.objects.filter(pk=schedule.pk).update(enabled=False)
    fire(at(300.5))
    assert fired_for(schedule) == []

    Schedule.objects.filter(pk=schedule.pk).update(enabled=True)
    fire(at(301))  # recompute: the minutes while paused are not caught up
    fire(at(360.5))
    assert fired_for(schedule) == [at(360)]


def test_once_schedule_fires_once(make_schedule, broker) -> None:
    schedule = make_schedule(run_at=at(30))
    fire(at(30.1))
    fire(at(90))
    assert fired_for(schedule) == [at(30)]
    assert Schedule.objects.get(pk=schedule.pk).next_fire_at is None


def test_start_and_end_bound_the_fires(make_schedule, broker) -> None:
    schedule = make_schedule(interval_seconds=60, start_at=at(120), end_at=at(240))
    for minute in range(1, 7):
        fire(at(minute * 60 + 0.1))
    assert fired_for(schedule) == [at(120), at(180), at(240)]


def test_schedule_of_a_disabled_task_fires_nothing(make_schedule, make_task, broker) -> None:
    schedule = make_schedule(task=make_task(enabled=False), interval_seconds=60)
    fire(at(60.1))
    assert fired_for(schedule) == []
    assert Schedule.objects.get(pk=schedule.pk).next_fire_at == at(120)


def test_fire_uses_the_schedule_overrides_over_the_task_defaults(make_schedule, make_task, broker) -> None:
    task = make_task(args=[1], kwargs={"a": 1, "b": 1})
    schedule = make_schedule(task=task, interval_seconds=60, args=[2], kwargs={"b": 2})
    fire(at(60))
    run = Run.objects.get(schedule=schedule)
    assert (run.args, run.kwargs) == ([2], {"a": 1, "b": 2})


def test_many_due_schedules_fire_in_one_tick(make_task, broker) -> None:
    task = make_task()
    with time_machine.travel(T0, tick=False):
        Schedule.objects.bulk_create([Schedule(task=task, cron="* * * * *") for _ in range(50)])
    fire(T0)
    assert fire(at(60.1)) == 50
    assert Run.objects.filter(scheduled_for=at(60)).count() == 50


def test_beat_never_sends_the_mirrors_of_platform_schedules(db) -> None:
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    every = IntervalSchedule.objects.create(every=10, period="seconds")
    PeriodicTask.objects.create(name="mirror", task=MIRROR_TASK, interval=every)
    PeriodicTask.objects.create(name="plain", task="celery.backend_cleanup", interval=every)

    names = set(
        PlatformScheduler.enabled_models_qs(PlatformScheduler.__new__(PlatformScheduler)).values_list(
            "name", flat=True
        )
    )

    assert names == {"plain"}


def test_a_schedule_made_invalid_past_validation_stops_alone(make_schedule, broker, api) -> None:
    broken = make_schedule(interval_seconds=60)
    healthy = make_schedule(interval_seconds=60)
    Schedule.objects.filter(pk=broken.pk).update(interval_seconds=None, cron="not a cron")

    fire(at(1))  # recompute
    fire(at(60.1))

    assert Schedule.objects.get(pk=broken.pk).next_fire_at is None
    assert fired_for(healthy) == [at(60)]
    shown = api.get(f"/api/v1/schedules/{broken.pk}/")
    assert shown.status_code == 200
    assert shown.data["description"].startswith("invalid")
    assert shown.data["next_runs"] == []


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("cron", "0 0 30 2 *", "never fires"),
        ("cron", "0 0 31 4,6,9,11 *", "never fires"),
        ("cron", "R R * * *", "random"),
        ("timezone", "Mars/Olympus", "unknown time zone"),
        ("kwargs", [1, 2], "kwargs"),
    ],
)
def test_a_row_made_invalid_in_the_database_is_set_aside_and_every_other_schedule_fires(
    make_schedule, broker, api, column, value, reason
) -> None:
    canary = make_schedule(interval_seconds=1)
    broken = make_schedule(cron="* * * * * *")
    Schedule.objects.filter(pk=broken.pk).update(**{column: value})  # past every validation

    for second in range(1, 6):  # five ticks, a second apart
        fire(at(second + 0.1))

    assert fired_for(canary) == [at(s) for s in range(1, 6)]
    broken.refresh_from_db()
    assert broken.next_fire_at is None
    assert reason in broken.invalid_reason
    assert (broken.last_fired_at, fired_for(broken)) == (None, [])  # it fired nothing
    listed = api.get("/api/v1/schedules/")
    assert listed.status_code == 200
    shown = {s["id"]: s for s in listed.data["results"]}[broken.pk]
    assert reason in shown["invalid_reason"]
    assert shown["next_runs"] == []
    assert {s["id"]: s for s in listed.data["results"]}[canary.pk]["invalid_reason"] == ""


def test_a_row_the_scheduler_can_fire_but_not_describe_still_reads(make_schedule, api) -> None:
    schedule = make_schedule(cron="* * * * *")
    Schedule.objects.filter(pk=schedule.pk).update(cron="* * * * mon-sun/99999")  # refused by the API now

    shown = api.get(f"/api/v1/schedules/{schedule.pk}/")

    assert shown.status_code == 200
    assert shown.data["description"].startswith("invalid")


def test_an_edit_of_the_kwargs_mends_a_schedule_set_aside_for_them(make_schedule, broker) -> None:
    schedule = make_schedule(interval_seconds=1)
    Schedule.objects.filter(pk=schedule.pk).update(kwargs=[1])
    fire(at(1.1))
    assert Schedule.objects.get(pk=schedule.pk).invalid_reason == "kwargs must be an object"

    Schedule.objects.filter(pk=schedule.pk).update(kwargs={"x": 1})  # the trigger: look again
    fire(at(1.2))  # recomputes
    fire(at(2.1))

    assert Schedule.objects.get(pk=schedule.pk).invalid_reason == ""
    assert fired_for(schedule) == [at(2)]


def test_an_edit_that_mends_a_set_aside_schedule_makes_it_fire_again(make_schedule, broker) -> None:
    schedule = make_schedule(interval_seconds=60)
    Schedule.objects.filter(pk=schedule.pk).update(interval_seconds=None, cron="0 0 30 2 *")
    fire(at(1))
    assert Schedule.objects.get(pk=schedule.pk).invalid_reason

    Schedule.objects.filter(pk=schedule.pk).update(cron="* * * * * *")
    fire(at(2))  # recomputes
    fire(at(3.1))

    schedule.refresh_from_db()
    assert schedule.invalid_reason == ""
    assert fired_for(schedule) == [at(3)]


def test_a_workflow_schedule_that_cannot_start_is_set_aside_alone(make_schedule, make_task, broker) -> None:
    from tasks_app.models import Workflow

    step_task = make_task(name="gone-later")
    step = {"key": "a", "task": "gone-later", "kwargs": {}, "depends_on": [], "trigger_rule": "all_success"}
    workflow = Workflow.objects.create(name="w", steps=[step])
    canary = make_schedule(interval_seconds=1)
    broken = make_schedule(task=None, workflow=workflow, interval_seconds=1)
    Run.objects.filter(task=step_task).delete()
    type(step_task).objects.filter(pk=step_task.pk).delete()

    fire(at(1.1))
    fire(at(2.1))

    assert fired_for(canary) == [at(1), at(2)]
    broken.refresh_from_db()
    assert "no longer exist" in broken.invalid_reason
    assert broken.next_fire_at is None


def test_a_beat_tick_that_fires_nothing_logs_nothing_at_info(
    make_schedule, broker, caplog, monkeypatch
) -> None:
    # The tick's connection check would close the test's transaction (whose rows no other
    # beat, such as the integration tests' one, can see and fire first).
    monkeypatch.setattr(scheduling, "close_old_connections", lambda: None)
    make_schedule(interval_seconds=60)
    scheduler = PlatformScheduler.__new__(PlatformScheduler)  # its tick only, no beat around it

    with caplog.at_level("INFO"), time_machine.travel(at(30), tick=False):
        scheduler.platform_tick()
    assert [r.getMessage() for r in caplog.records if r.levelno >= 20] == []

    with caplog.at_level("INFO"), time_machine.travel(at(60), tick=False):
        scheduler.platform_tick()
    assert [r.getMessage() for r in caplog.records if r.levelno >= 20] == ["fire due schedules: 1"]


def test_schedules_sharing_a_due_instant_are_saved_by_one_update_each_with_its_own_counts(
    make_schedule, make_task, broker
) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    shared = [make_schedule(cron="* * * * *") for _ in range(20)]
    behind = make_schedule(cron="* * * * *")  # missed before: its count goes on from there
    idle = make_schedule(task=make_task(enabled=False), cron="* * * * *")  # fires nothing
    Schedule.objects.filter(pk=behind.pk).update(missed_fires=5, next_fire_at=at(-60))
    Schedule.objects.filter(pk=idle.pk).update(last_fired_at=at(-3600))

    with CaptureQueriesContext(connection) as queries:
        fire(at(60.5))

    saves = [q for q in queries.captured_queries if q["sql"].startswith('UPDATE "tasks_app_schedule"')
             or q["sql"].startswith("UPDATE `tasks_app_schedule`")]  # fmt: skip
    assert len(saves) == 3  # the 20 sharing their new values; `behind`, which missed some; `idle`
    for schedule in [*shared, behind]:
        schedule.refresh_from_db()
        assert (schedule.next_fire_at, schedule.last_fired_at) == (at(120), at(60.5))
    assert {s.missed_fires for s in shared} == {0}
    assert behind.missed_fires == 5 + 2  # 11:59 and 12:00 are older than the grace
    idle.refresh_from_db()
    assert (idle.next_fire_at, idle.last_fired_at, idle.missed_fires) == (at(120), at(-3600), 0)


def test_a_cron_shared_by_schedules_answers_as_a_fresh_one_through_a_repeated_hour(db) -> None:
    from tasks_app import timing

    shared = timing.cron("*/20 * * * *", "Europe/Berlin")
    assert timing.cron("*/20 * * * *", "Europe/Berlin") is shared
    # 2026-10-25: Berlin's 02:00-03:00 happens twice (00:00-02:00 UTC); 400 instants a
    # minute apart outnumber what a cron remembers, and each is asked twice.
    night = [dt.datetime(2026, 10, 24, 23, 0, tzinfo=UTC) + dt.timedelta(minutes=m) for m in range(400)]
    for instant in night + night:
        assert shared.next_after(instant) == timing.Cron("*/20 * * * *", "Europe/Berlin").next_after(instant)
    assert shared.next_after(dt.datetime(2026, 10, 25, 0, 50, tzinfo=UTC)) == dt.datetime(
        2026, 10, 25, 1, 0, tzinfo=UTC
    )  # 02:00 the second time round


def test_beat_reads_its_entries_past_the_mirrors_by_an_index(db) -> None:
    from django.db import connection
    from django_celery_beat.models import PeriodicTask

    table = PeriodicTask._meta.db_table
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, table)
    assert constraints["periodictask_task_platform"]["columns"] == ["task"]  # migration 0022
