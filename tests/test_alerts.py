"""Alert conditions, the flip model and the outbox rows, with a controlled clock. Moves go
through lifecycle and its after-move hook (on_commit callbacks executed); the sweep is called
as beat calls it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
import time_machine

from tasks_app import alerts, controls, lifecycle, recovery, scheduling
from tasks_app.alerts import Subject
from tasks_app.choices import (
    AlertCondition,
    AlertEventKind,
    AlertState,
    ChannelKind,
    ConcurrencyPolicy,
    RunState,
    WorkflowState,
)
from tasks_app.models import Alert, AlertRule, Channel, Notification, Run, Schedule, Task, Workflow
from tasks_app.workers import record_worker

S, C = RunState, AlertCondition
NOW = dt.datetime(2026, 3, 2, 12, 0, tzinfo=dt.UTC)


def at(seconds: float) -> dt.datetime:
    return NOW + dt.timedelta(seconds=seconds)


@pytest.fixture
def hook(django_capture_on_commit_callbacks: Any) -> Callable[..., Any]:
    """Runs what follows moves (the after-move hook) as a commit would."""
    return lambda: django_capture_on_commit_callbacks(execute=True)


@pytest.fixture
def channels(db: Any) -> list[Channel]:
    return [
        Channel.objects.create(name="ops hook", kind=ChannelKind.WEBHOOK, target="https://hooks.example/x"),
        Channel.objects.create(name="ops mail", kind=ChannelKind.EMAIL, target="ops@example.com"),
    ]


@pytest.fixture
def make_rule(channels: list[Channel]) -> Callable[..., AlertRule]:
    def make(condition: str, **fields: Any) -> AlertRule:
        fields.setdefault("name", f"{condition} {AlertRule.objects.count() + 1}")
        rule = AlertRule.objects.create(condition=condition, **fields)
        rule.channels.set(channels)
        return rule

    return make


def finish(run: Run, target: RunState, **changes: Any) -> None:
    """pending -> running -> target, as a worker moves it."""
    lifecycle.move(run, S.RUNNING, actor="worker", actor_name="w1@host", worker="w1@host")
    lifecycle.move(run, target, actor="worker", actor_name="w1@host", **changes)


ERROR = {"type": "ValueError", "message": "boom", "traceback": ""}


def told(alert: Alert) -> list[tuple[str, str]]:
    """(event, channel name) of each notification of `alert`, in order."""
    return [(n.kind, n.channel.name) for n in alert.notifications.select_related("channel").order_by("pk")]


# --- failure -----------------------------------------------------------------------------


def test_a_burst_of_failures_is_one_alert_and_one_notification_per_channel(
    make_rule, task, make_run, hook
) -> None:
    rule = make_rule(C.FAILURE)
    runs = [make_run(task, S.PENDING) for _ in range(30)]

    with hook():
        for run in runs:
            finish(run, S.FAILED, error=ERROR)

    (alert,) = Alert.objects.all()
    assert (alert.rule, alert.state, alert.subject, alert.run_id) == (rule, "open", "task noop", runs[0].pk)
    assert alert.reason == f"run {runs[0].pk} failed: ValueError: boom"
    assert told(alert) == [("opened", "ops hook"), ("opened", "ops mail")]


def test_the_next_completed_run_resolves_with_the_downtime(make_rule, task, make_run, hook) -> None:
    make_rule(C.FAILURE)
    failing, passing = make_run(task, S.PENDING), make_run(task, S.PENDING)
    with time_machine.travel(NOW, tick=False), hook():
        finish(failing, S.FAILED, error=ERROR)
    with time_machine.travel(at(125), tick=False), hook():
        finish(passing, S.COMPLETED)

    alert = Alert.objects.get()
    assert (alert.state, alert.open_key, alert.resolved_at, alert.downtime) == (
        "resolved",
        None,
        at(125),
        125,
    )
    assert alert.resolution == f"run {passing.pk} completed"
    assert [e.kind for e in alert.events.all()] == ["opened", "resolved"]
    assert alert.events.last().reason == f"run {passing.pk} completed; it was open 2 min 5 s"
    resolved = alert.notifications.filter(kind="resolved").first().payload
    assert {k: resolved[k] for k in ("event", "alert", "condition", "subject", "downtime_seconds")} == {
        "event": "resolved", "alert": alert.pk, "condition": "failure", "subject": "task noop",
        "downtime_seconds": 125.0,
    }  # fmt: skip
    assert resolved["resolved_at"] == at(125).isoformat()
    assert resolved["url"].endswith(f"/admin/tasks_app/alert/{alert.pk}/change/")


def test_after_resolving_a_new_failure_opens_a_new_alert(make_rule, task, make_run, hook) -> None:
    make_rule(C.FAILURE)
    with hook():
        for state in (S.FAILED, S.COMPLETED, S.FAILED):
            finish(make_run(task, S.PENDING), state, **({"error": ERROR} if state == S.FAILED else {}))

    assert list(Alert.objects.order_by("pk").values_list("state", flat=True)) == ["resolved", "open"]


def test_consecutive_failures_open_only_after_that_many_in_a_row(make_rule, task, make_run, hook) -> None:
    make_rule(C.FAILURE, consecutive=3)
    with hook():
        finish(make_run(task, S.PENDING), S.FAILED, error=ERROR)
        finish(make_run(task, S.PENDING), S.FAILED, error=ERROR)
        finish(make_run(task, S.PENDING), S.COMPLETED)  # the streak is broken
        finish(make_run(task, S.PENDING), S.FAILED, error=ERROR)
        finish(make_run(task, S.PENDING), S.FAILED, error=ERROR)
        assert not Alert.objects.exists()
        last = make_run(task, S.PENDING)
        finish(last, S.FAILED, error=ERROR)

    alert = Alert.objects.get()
    assert alert.run_id == last.pk
    assert alert.reason.startswith("3 runs in a row did not complete; the last: run")


def test_a_rule_of_one_task_ignores_the_others(make_rule, make_task, make_run, hook) -> None:
    mine, other = make_task(name="mine"), make_task(name="other")
    make_rule(C.FAILURE, task=mine)
    with hook():
        finish(make_run(other, S.PENDING), S.FAILED, error=ERROR)
        assert not Alert.objects.exists()
        finish(make_run(mine, S.PENDING), S.FAILED, error=ERROR)

    assert Alert.objects.get().subject == "task mine"


def test_a_rule_over_everything_has_an_alert_per_task(make_rule, make_task, make_run, hook) -> None:
    make_rule(C.FAILURE)
    with hook():
        for name in ("a", "b", "a"):
            finish(
                make_run(Task.objects.get_or_create(name=name, handler="builtin.noop")[0], S.PENDING),
                S.FAILED,
            )

    assert sorted(Alert.objects.values_list("subject", flat=True)) == ["task a", "task b"]


def test_an_operators_cancel_alerts(make_rule, task, make_run, hook) -> None:
    make_rule(C.FAILURE)
    run = make_run(task, S.PENDING)
    with hook():
        controls.cancel(run, by="alice")

    assert Alert.objects.get().reason.startswith(f"run {run.pk} was cancelled by alice")


def test_a_run_failed_by_recovery_after_its_worker_died_alerts(make_rule, task, make_run, hook) -> None:
    make_rule(C.FAILURE)
    with time_machine.travel(NOW, tick=False):
        record_worker("dead@host", queues=["default"], concurrency=1)
        run = make_run(task, S.RUNNING, worker="dead@host", attempt=1, state_changed_at=NOW, started_at=NOW)
    with time_machine.travel(at(60), tick=False), hook():
        assert recovery.recover_lost_runs() == 1

    alert = Alert.objects.get()
    assert (alert.run_id, alert.reason) == (
        run.pk,
        f"run {run.pk} failed: WorkerLost: worker dead@host went offline",
    )


def test_a_disabled_rule_and_a_disabled_channel_tell_nobody(
    make_rule, task, make_run, hook, channels
) -> None:
    make_rule(C.FAILURE, enabled=False)
    with hook():
        finish(make_run(task, S.PENDING), S.FAILED)
    assert not Alert.objects.exists()

    make_rule(C.FAILURE)
    Channel.objects.filter(pk=channels[1].pk).update(enabled=False)
    with hook():
        finish(make_run(task, S.PENDING), S.FAILED)
    assert told(Alert.objects.get()) == [("opened", "ops hook")]


def test_an_alert_opens_once_however_many_see_it(make_rule, task) -> None:
    rule = make_rule(C.FAILURE)
    subject = Subject(f"task:{task.pk}", "task noop", task.pk)

    first = alerts.open_alert(rule, subject, "one", now=NOW)
    second = alerts.open_alert(rule, subject, "two", now=NOW)

    assert first is not None and second is None
    assert Alert.objects.count() == 1 and Notification.objects.count() == 2
    assert alerts.resolve_alert(first, "ok", now=NOW) is True
    assert alerts.resolve_alert(first, "ok", now=NOW) is False  # once
    assert Notification.objects.count() == 4


def test_the_database_refuses_a_second_open_alert_of_one_rule_and_subject(make_rule) -> None:
    from django.db import IntegrityError, transaction

    rule = make_rule(C.WORKER_OFFLINE)
    Alert.objects.create(rule=rule, subject_key="worker:w", open_key="worker:w", subject="w", reason="r")
    with pytest.raises(IntegrityError), transaction.atomic():
        Alert.objects.create(rule=rule, subject_key="worker:w", open_key="worker:w", subject="w", reason="r")


# --- workflow_failure ------------------------------------------------------------------


def test_a_failed_workflow_run_alerts_and_the_next_completed_resolves(make_rule, task, hook) -> None:
    workflow = Workflow.objects.create(name="nightly", steps=[{"key": "a", "task": task.name}])
    make_rule(C.WORKFLOW_FAILURE, workflow=workflow)
    with hook():
        failing = lifecycle.start_workflow_run(at=NOW, actor="user", workflow=workflow)
        lifecycle.move_workflow_run(failing, WorkflowState.FAILED, reason="step a failed")
    alert = Alert.objects.get()
    assert (alert.subject, alert.reason) == (
        "workflow nightly",
        f"workflow run {failing.pk} failed: step a failed",
    )
    with hook():
        passing = lifecycle.start_workflow_run(at=NOW, actor="user", workflow=workflow)
        lifecycle.move_workflow_run(passing, WorkflowState.COMPLETED, reason="done")

    assert Alert.objects.get().state == "resolved"


# --- late ----------------------------------------------------------------------------


@pytest.fixture
def schedule(task: Task) -> Schedule:
    with time_machine.travel(NOW, tick=False):
        return Schedule.objects.create(task=task, interval_seconds=60, next_fire_at=NOW)


def test_an_instant_no_scheduler_fired_is_late_after_the_grace(make_rule, schedule) -> None:
    make_rule(C.LATE, grace_seconds=30)
    assert alerts.sweep(at(29)) == 0

    assert alerts.sweep(at(31)) == 1
    alert = Alert.objects.get()
    assert (alert.subject, alert.schedule_id, alert.scheduled_for) == (
        f"schedule {schedule.pk} of task noop", schedule.pk, NOW,
    )  # fmt: skip
    assert "was not fired" in alert.reason
    assert alerts.sweep(at(40)) == 0  # no repeat while open


def test_a_fired_run_no_worker_started_is_late_and_its_start_resolves(
    make_rule, schedule, make_run, hook
) -> None:
    make_rule(C.LATE, grace_seconds=30)
    Schedule.objects.filter(pk=schedule.pk).update(next_fire_at=at(3600))
    run = make_run(schedule.task, S.PENDING, schedule=schedule, scheduled_for=NOW, trigger="schedule")

    alerts.sweep(at(31))
    alert = Alert.objects.get()
    assert alert.run_id == run.pk
    assert "has not started 31 s after it (pending; 0 online worker(s) take queue default" in alert.reason

    with hook():
        lifecycle.move(run, S.RUNNING, actor="worker")
    alert.refresh_from_db()
    assert (alert.state, alert.resolution) == ("resolved", f"run {run.pk} of it started")


def test_the_sweep_resolves_a_late_alert_whose_run_started_unannounced(make_rule, schedule, make_run) -> None:
    make_rule(C.LATE, grace_seconds=30)
    Schedule.objects.filter(pk=schedule.pk).update(next_fire_at=at(3600))
    run = make_run(schedule.task, S.PENDING, schedule=schedule, scheduled_for=NOW, trigger="schedule")
    alerts.sweep(at(31))

    Run.objects.filter(pk=run.pk).update(started_at=at(40))  # as if the hook's process died
    alerts.sweep(at(45))

    assert Alert.objects.get().resolution == "a run of it started"


def test_a_run_the_forbid_policy_skipped_is_late_at_once(make_rule, make_task, make_run, hook) -> None:
    task = make_task(name="exclusive", concurrency_policy=ConcurrencyPolicy.FORBID)
    schedule = Schedule.objects.create(task=task, interval_seconds=60, next_fire_at=at(60))
    make_rule(C.LATE, task=task)
    run = make_run(task, S.CREATED, schedule=schedule, scheduled_for=NOW, trigger="schedule")

    with hook():
        lifecycle.move(run, S.SKIPPED, reason="forbid: run 1 is still active")

    alert = Alert.objects.get()
    assert alert.reason == f"run {run.pk} for {NOW.isoformat()} was skipped: forbid: run 1 is still active"


def test_instants_missed_while_no_scheduler_ran_are_late(make_rule, schedule, settings) -> None:
    make_rule(C.LATE, schedule=schedule)
    settings.SCHEDULE_MISFIRE_GRACE = 60

    scheduling.fire_due(at(600))  # beat was down ten minutes: the skip policy fires nothing

    alert = Alert.objects.get()
    assert (
        alert.reason
        == f"9 instant(s) from {NOW.isoformat()} passed while no scheduler ran (misfire policy skip)"
    )


def test_a_schedule_the_scheduler_set_aside_is_late(make_rule, schedule) -> None:
    make_rule(C.LATE)
    Schedule.objects.filter(pk=schedule.pk).update(next_fire_at=None, invalid_reason="cron: bad minute")

    alerts.sweep(at(1))

    assert Alert.objects.get().reason == "it fires no more until edited: cron: bad minute"


def test_a_paused_schedule_is_not_late(make_rule, schedule) -> None:
    make_rule(C.LATE, grace_seconds=30)
    alerts.sweep(at(31))
    Schedule.objects.filter(pk=schedule.pk).update(enabled=False)

    alerts.sweep(at(32))

    assert Alert.objects.get().resolution == "the schedule was paused"


# --- overrun -------------------------------------------------------------------------


def test_a_run_running_too_long_overruns_and_its_end_resolves(make_rule, task, make_run, hook) -> None:
    make_rule(C.OVERRUN, max_seconds=300)
    run = make_run(task, S.RUNNING, state_changed_at=NOW, started_at=NOW, worker="w1@host")

    assert alerts.sweep(at(299)) == 0
    assert alerts.sweep(at(301)) == 1
    alert = Alert.objects.get()
    assert (alert.subject, alert.reason) == (
        f"run {run.pk} of task noop",
        "running for 5 min 1 s, longer than 5 min, on worker w1@host",
    )
    assert alerts.sweep(at(400)) == 0

    with hook():
        lifecycle.move(run, S.COMPLETED)
    alert.refresh_from_db()
    assert alert.resolution == f"run {run.pk} is completed"


def test_the_sweep_resolves_an_overrun_whose_end_was_not_announced(make_rule, task, make_run) -> None:
    make_rule(C.OVERRUN, max_seconds=300)
    run = make_run(task, S.RUNNING, state_changed_at=NOW, started_at=NOW)
    alerts.sweep(at(301))
    Run.objects.filter(pk=run.pk).update(state=S.FAILED, finished_at=at(350))

    alerts.sweep(at(360))

    assert Alert.objects.get().resolution == f"run {run.pk} is failed"


# --- worker_offline ------------------------------------------------------------------


def test_a_worker_missing_its_heartbeats_is_offline_until_it_beats_again(make_rule) -> None:
    with time_machine.travel(NOW, tick=False):
        make_rule(C.WORKER_OFFLINE)
        record_worker("w1@host", queues=["default"], concurrency=2)
    assert alerts.sweep(at(10)) == 0  # 5 s beats, 3 missed: 15 s

    assert alerts.sweep(at(16)) == 1
    alert = Alert.objects.get()
    assert (alert.subject, alert.state) == ("worker w1@host", "open")
    assert alert.reason.startswith("no heartbeat for 16 s (one is due every 5 s)")

    with time_machine.travel(at(20), tick=False):
        record_worker("w1@host", queues=["default"], concurrency=2)
    alerts.sweep(at(21))
    alert.refresh_from_db()
    assert alert.resolution == "it heartbeats again"


def test_a_worker_that_stopped_cleanly_is_not_offline(make_rule) -> None:
    with time_machine.travel(NOW, tick=False):
        make_rule(C.WORKER_OFFLINE)
        record_worker("w1@host", queues=["default"], concurrency=2)
    from tasks_app.models import Worker

    Worker.objects.update(stopped_at=at(1))
    assert alerts.sweep(at(60)) == 0


# --- reminders -----------------------------------------------------------------------


def test_reminders_repeat_while_open_at_the_rules_pace(make_rule) -> None:
    rule = make_rule(C.WORKER_OFFLINE, reminder_seconds=600)
    alert = alerts.open_alert(rule, Subject("worker:w", "worker w"), "gone", now=NOW)

    assert alerts.send_reminders(at(599)) == 0
    assert alerts.send_reminders(at(601)) == 1
    assert alerts.send_reminders(at(700)) == 0
    assert alerts.send_reminders(at(1202)) == 1
    assert [e.kind for e in alert.events.all()] == ["opened", "reminder", "reminder"]
    assert alert.notifications.filter(kind=AlertEventKind.REMINDER).count() == 4  # two channels

    alerts.resolve_alert(alert, "back", now=at(1300))
    assert alerts.send_reminders(at(5000)) == 0


def test_without_reminder_seconds_an_open_alert_is_told_once(make_rule) -> None:
    rule = make_rule(C.WORKER_OFFLINE)
    alerts.open_alert(rule, Subject("worker:w", "worker w"), "gone", now=NOW)

    assert alerts.send_reminders(at(10**6)) == 0
    assert Alert.objects.get().state == AlertState.OPEN


def test_resolved_alerts_are_pruned_with_the_runs_and_open_ones_kept(make_rule, settings) -> None:
    from tasks_app import retention

    settings.RUN_RETENTION_DAYS = 30
    rule = make_rule(C.WORKER_OFFLINE)
    old = alerts.open_alert(rule, Subject("worker:old", "worker old"), "gone", now=NOW)
    alerts.resolve_alert(old, "back", now=at(60))
    still = alerts.open_alert(rule, Subject("worker:still", "worker still"), "gone", now=NOW)

    retention.prune(now=at(31 * 86400))

    assert list(Alert.objects.values_list("pk", flat=True)) == [still.pk]
    assert set(Notification.objects.values_list("alert_id", flat=True)) == {still.pk}


def test_a_rule_made_by_another_process_judges_the_next_run_end_at_once(
    make_rule, task, make_run, hook
) -> None:
    import redis
    from django.conf import settings

    assert alerts.rules_by_condition() == {}  # cached: no rules
    AlertRule.objects.bulk_create([AlertRule(name="elsewhere", condition=C.FAILURE)])  # no signal here
    assert alerts.rules_by_condition() == {}  # still within RULES_TTL
    redis.Redis.from_url(settings.REDIS_URL).incr(alerts.VERSION_KEY)  # what that process's commit did

    with hook():
        finish(make_run(task, S.PENDING), S.FAILED)

    assert Alert.objects.get().rule.name == "elsewhere"


def test_a_stuck_run_behind_a_later_one_that_started_does_not_flap(make_rule, schedule, make_run) -> None:
    make_rule(C.LATE, grace_seconds=30)
    Schedule.objects.filter(pk=schedule.pk).update(next_fire_at=at(3600))
    make_run(schedule.task, S.PENDING, schedule=schedule, scheduled_for=NOW, trigger="schedule")
    make_run(schedule.task, S.COMPLETED, schedule=schedule, scheduled_for=at(60), started_at=at(61))

    changes = [alerts.sweep(at(120 + n)) for n in range(3)]

    assert changes == [0, 0, 0] and not Alert.objects.exists()


def test_more_late_schedules_than_a_pass_opens_are_reached_in_the_next(make_rule, task, monkeypatch) -> None:
    monkeypatch.setattr(alerts, "BATCH", 2)
    make_rule(C.LATE, grace_seconds=30)
    for _ in range(3):
        Schedule.objects.create(task=task, interval_seconds=60, next_fire_at=NOW)

    assert [alerts.sweep(at(31)), alerts.sweep(at(32)), alerts.sweep(at(33))] == [2, 1, 0]


def test_more_overruns_than_a_pass_opens_are_reached_in_the_next(
    make_rule, task, make_run, monkeypatch
) -> None:
    monkeypatch.setattr(alerts, "BATCH", 2)
    make_rule(C.OVERRUN, max_seconds=60)
    for _ in range(3):
        make_run(task, S.RUNNING, state_changed_at=NOW, started_at=NOW)

    assert [alerts.sweep(at(61)), alerts.sweep(at(62)), alerts.sweep(at(63))] == [2, 1, 0]
