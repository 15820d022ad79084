"""Worker registry and the recovery sweeps, with a controlled clock."""

from __future__ import annotations

import datetime as dt

import pytest
import time_machine
from django.db import OperationalError
from django.utils import timezone

from tasks_app import scheduling
from tasks_app.lifecycle import RunState
from tasks_app.models import Run, Worker
from tasks_app.recovery import recover_lost_runs, resend_lost_messages
from tasks_app.scheduling import PlatformScheduler
from tasks_app.workers import record_worker
from tests.conftest import broker_key, queued_ids

S = RunState
NOW = dt.datetime(2026, 3, 2, 12, 0, tzinfo=dt.UTC)


def ago(seconds: float) -> dt.datetime:
    return NOW - dt.timedelta(seconds=seconds)


def test_worker_records_itself_and_goes_offline_after_missed_heartbeats(db) -> None:
    with time_machine.travel(ago(60), tick=False):
        record_worker("w1@host", queues=["default"], concurrency=2)
    with time_machine.travel(ago(2), tick=False):
        record_worker("w2@host", queues=["default", "reports"], concurrency=4)

    with time_machine.travel(NOW, tick=False):
        online = {w.hostname: w.online for w in Worker.objects.all()}
    assert online == {"w1@host": False, "w2@host": True}  # 5 s beats, 3 missed = 15 s


def test_workers_endpoint_shows_status_queues_and_active_runs(reader, task, make_run) -> None:
    record_worker("w1@host", queues=["default"], concurrency=2)
    make_run(task, S.RUNNING, worker="w1@host")
    make_run(task, S.COMPLETED, worker="w1@host")

    response = reader.get("/api/v1/workers/")

    assert response.status_code == 200
    (worker,) = response.data["results"]
    assert {k: worker[k] for k in ("hostname", "status", "queues", "concurrency", "active")} == {
        "hostname": "w1@host", "status": "online", "queues": ["default"], "concurrency": 2, "active": 1,
    }  # fmt: skip
    assert "last_heartbeat" in worker


def test_idle_worker_has_zero_active_runs(reader) -> None:
    record_worker("idle@host", queues=["default"], concurrency=2)
    assert reader.get("/api/v1/workers/").data["results"][0]["active"] == 0


def test_workers_endpoint_needs_a_signed_in_user(anonymous) -> None:
    assert anonymous.get("/api/v1/workers/").status_code == 401


def test_run_on_an_offline_worker_is_retried_or_failed(make_task, make_run) -> None:
    with time_machine.travel(ago(100), tick=False):
        record_worker("dead@host", queues=["default"], concurrency=2)
    with time_machine.travel(ago(1), tick=False):
        record_worker("alive@host", queues=["default"], concurrency=2)
    retried = make_run(make_task(max_retries=1), S.RUNNING, worker="dead@host", state_changed_at=ago(90))
    failed = make_run(make_task(max_retries=0), S.RUNNING, worker="dead@host", state_changed_at=ago(90))
    healthy = make_run(make_task(), S.RUNNING, worker="alive@host", state_changed_at=ago(90))
    unknown = make_run(make_task(), S.RUNNING, worker="never-seen@host", state_changed_at=ago(90))
    just_started = make_run(make_task(), S.RUNNING, worker="dead@host", state_changed_at=ago(1))

    with time_machine.travel(NOW, tick=False):
        assert recover_lost_runs() == 3

    states = {r.pk: r.state for r in Run.objects.all()}
    assert states[retried.pk] == S.RETRYING
    assert states[failed.pk] == S.FAILED and states[unknown.pk] == S.FAILED
    assert states[healthy.pk] == S.RUNNING and states[just_started.pk] == S.RUNNING
    assert Run.objects.get(pk=failed.pk).events.last().reason == "worker lost"
    assert Run.objects.get(pk=retried.pk).error["type"] == "WorkerLost"


def test_run_its_online_worker_no_longer_executes_is_moved_on(make_task, make_run) -> None:
    # The worker lives, but its pool process died under the run, or it could not record the outcome.
    orphan = make_run(
        make_task(max_retries=1), S.RUNNING, worker="w@host", state_changed_at=ago(30), message_number=1
    )
    executing = make_run(make_task(), S.RUNNING, worker="w@host", state_changed_at=ago(30), message_number=2)
    just_claimed = make_run(
        make_task(), S.RUNNING, worker="w@host", state_changed_at=ago(3), message_number=1
    )
    # Its first attempt started long ago (kept by a resume); this one was claimed just now.
    resumed = make_run(
        make_task(),
        S.RUNNING,
        worker="w@host",
        started_at=ago(600),
        state_changed_at=ago(3),
        message_number=3,
    )
    silent = make_run(make_task(), S.RUNNING, worker="old@host", state_changed_at=ago(30), message_number=1)
    with time_machine.travel(ago(1), tick=False):
        record_worker("w@host", queues=["default"], concurrency=4, executing=[f"{executing.pk}.2"])
        record_worker("old@host", queues=["default"], concurrency=1, executing=None)  # says nothing

    with time_machine.travel(NOW, tick=False):
        assert recover_lost_runs() == 1

    states = {r.pk: r.state for r in Run.objects.all()}
    assert states == {orphan.pk: S.RETRYING, executing.pk: S.RUNNING, just_claimed.pk: S.RUNNING,
                      resumed.pk: S.RUNNING, silent.pk: S.RUNNING}  # fmt: skip
    orphan.refresh_from_db()
    assert orphan.error["message"] == "worker w@host is no longer executing it"
    assert orphan.events.last().reason.startswith("worker lost; retry 1 of 1")


def test_a_run_that_keeps_losing_its_worker_stops_being_sent(make_task, make_run, settings) -> None:
    settings.RUN_MAX_DELIVERIES = 3
    run = make_run(
        make_task(max_retries=10), S.RUNNING, worker="gone@host", state_changed_at=ago(90), attempt=3
    )
    with time_machine.travel(NOW, tick=False):
        recover_lost_runs()
    run.refresh_from_db()
    assert run.state == S.FAILED
    assert run.events.last().reason == "worker lost 3 times: not sent again"


def test_pending_run_whose_message_was_lost_is_sent_again(
    make_task, make_run, broker, django_capture_on_commit_callbacks
) -> None:
    task = make_task()
    lost = make_run(task, S.PENDING, message_number=1, state_changed_at=ago(60))
    recent = make_run(task, S.PENDING, message_number=1, state_changed_at=ago(5))

    with time_machine.travel(NOW, tick=False), django_capture_on_commit_callbacks(execute=True):
        assert resend_lost_messages() == 1
        scheduling.send_due_runs()  # beat's next tick

    lost.refresh_from_db()
    assert lost.message_number == 2
    assert queued_ids(broker) == [f"{lost.pk}.2"]
    assert Run.objects.get(pk=recent.pk).message_number == 1


def test_nothing_is_sent_again_while_the_queue_has_messages_or_a_worker_holds_its_own(
    make_task, make_run, broker
) -> None:
    run = make_run(make_task(), S.PENDING, message_number=1, state_changed_at=ago(60))
    broker.lpush(broker_key("default"), b"{}")
    with time_machine.travel(NOW, tick=False):
        assert resend_lost_messages() == 0
    broker.delete(broker_key("default"))
    with time_machine.travel(NOW, tick=False):
        # Received by a worker that is alive (its heartbeat says so), waiting for a free process.
        record_worker("w1@host", queues=["default"], concurrency=1, executing=[], held=[f"{run.pk}.1"])
        assert resend_lost_messages() == 0
        # A worker that does not say what it holds (an older version): nothing is judged.
        record_worker("w1@host", queues=["default"], concurrency=1, executing=[], held=None)
        assert resend_lost_messages() == 0
    assert Run.objects.get(pk=run.pk).message_number == 1


def test_what_a_worker_gone_offline_held_is_sent_again_and_only_that(
    make_task, make_run, broker, django_capture_on_commit_callbacks
) -> None:
    task = make_task()
    held = make_run(task, S.PENDING, message_number=1, state_changed_at=ago(60))
    lost = make_run(task, S.PENDING, message_number=3, state_changed_at=ago(60))
    with time_machine.travel(ago(30), tick=False):  # its last heartbeat, long before NOW
        record_worker("dead@host", queues=["default"], concurrency=1, executing=[], held=[f"{lost.pk}.3"])
    with time_machine.travel(NOW, tick=False):
        record_worker("w1@host", queues=["default"], concurrency=1, executing=[], held=[f"{held.pk}.1"])

    with time_machine.travel(NOW, tick=False), django_capture_on_commit_callbacks(execute=True):
        assert resend_lost_messages() == 1
        scheduling.send_due_runs()

    assert queued_ids(broker) == [f"{lost.pk}.4"]
    assert Run.objects.get(pk=held.pk).message_number == 1


def test_timestamps_in_the_registry_are_aware(db) -> None:
    record_worker("w@h", queues=[], concurrency=1)
    assert timezone.is_aware(Worker.objects.get().last_heartbeat)


@pytest.mark.django_db(transaction=True)  # beat's tick closes connections: no test transaction
def test_beat_gives_workers_their_heartbeat_allowance_after_a_database_outage(
    make_task, make_run, monkeypatch, settings
) -> None:
    an_hour_ago = timezone.now() - dt.timedelta(hours=1)
    run = make_run(make_task(), S.RUNNING, worker="gone@host", state_changed_at=an_hour_ago)
    scheduler = PlatformScheduler.__new__(PlatformScheduler)  # its tick only, no beat around it

    def unreachable(**kwargs: object) -> int:
        raise OperationalError(2003, "Can't connect to server on '127.0.0.1'")

    with monkeypatch.context() as patch:
        patch.setattr(scheduling, "fire_due", unreachable)
        scheduler.platform_tick()  # the outage: the step fails, beat goes on
    scheduler.platform_tick()  # back, but the workers may not have heartbeaten yet
    assert Run.objects.get(pk=run.pk).state == S.RUNNING

    scheduler._database_failed_at -= settings.WORKER_HEARTBEAT_INTERVAL * settings.WORKER_MISSED_HEARTBEATS
    scheduler.platform_tick()  # their allowance is over: the run's worker is gone
    assert Run.objects.get(pk=run.pk).state == S.FAILED
