"""The worker registry as clients see it: the handlers each worker has, and which tasks
no online worker would run."""

from __future__ import annotations

import datetime as dt

import time_machine

from tasks_app import handlers
from tasks_app.workers import record_worker

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def test_a_worker_reports_the_handlers_registered_in_it(reader) -> None:
    record_worker("w1@host", queues=["default"], concurrency=2)

    (worker,) = reader.get("/api/v1/workers/").data["results"]

    assert worker["handlers"] == sorted(h.name for h in handlers.all_handlers())
    assert "builtin.noop" in worker["handlers"]


def test_task_tells_how_many_online_workers_would_run_it(reader, make_task) -> None:
    make_task(name="served", handler="builtin.noop")
    make_task(name="other-queue", handler="builtin.noop", queue="reports")
    make_task(name="unknown-handler", handler="reports.build")
    with time_machine.travel(NOW - dt.timedelta(minutes=10), tick=False):
        record_worker(
            "gone@host", queues=["default", "reports"], concurrency=1, handler_names=["reports.build"]
        )
    with time_machine.travel(NOW - dt.timedelta(seconds=1), tick=False):
        record_worker("w1@host", queues=["default"], concurrency=2, handler_names=["builtin.noop"])
        record_worker("w2@host", queues=["default"], concurrency=2, handler_names=["builtin.noop", "x.y"])

    with time_machine.travel(NOW, tick=False):
        listed = {t["name"]: t["online_workers"] for t in reader.get("/api/v1/tasks/").data["results"]}
        one = reader.get("/api/v1/tasks/unknown-handler/").data

    # An offline worker with the handler counts for nothing.
    assert listed == {"served": 2, "other-queue": 0, "unknown-handler": 0}
    assert one["online_workers"] == 0


def test_the_cancelled_timers_of_finished_runs_are_dropped_and_the_live_ones_kept() -> None:
    from kombu.asynchronous.timer import Timer

    from tasks_app.workers import purge_cancelled_timers

    timer = Timer()
    fired = []
    live = timer.call_at(2_000_000_000.0, lambda: fired.append("live"), priority=3)
    for _ in range(3):  # a run's time limit, cancelled when the run ended
        timer.call_at(2_000_000_000.0, lambda: fired.append("cancelled")).cancel()

    assert purge_cancelled_timers(timer) == 3

    (kept,) = timer.queue
    assert (kept.entry, kept.eta, kept.priority) == (live, 2_000_000_000.0, 3)
    assert purge_cancelled_timers(timer) == 0
