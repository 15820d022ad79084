"""/metrics: counters and histograms counted in Redis from the moves, gauges read at scrape time,
who may read it, and the Grafana dashboard built on it."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import time_machine
from django.db import DatabaseError, transaction
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from scheduler_site.celery import app
from tasks_app import controls, execution, metrics, scheduling, submission
from tasks_app.lifecycle import Move, RunState
from tasks_app.models import AlertRule, Run, Schedule, Worker, Workflow
from tasks_app.run_loader import get_with_task
from tasks_app.submission import RunRequest
from tasks_app.workers import record_worker

S = RunState
NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "docs" / "grafana" / "scheduler-dashboard.json"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(autouse=True)
def _metrics_written(broker: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty Redis, and no pause left by an outage another test made."""
    monkeypatch.setattr(metrics, "_paused_until", 0.0)


@pytest.fixture
def commits(django_capture_on_commit_callbacks: Any) -> Any:
    """Runs what follows a commit (the moves' subscribers) at the end of the block."""
    return lambda: django_capture_on_commit_callbacks(execute=True)


def scrape(client: Any) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200, response.content
    return parse(response.content.decode())


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, metric: str, /, **labels: str) -> float | None:
    return samples.get((metric, frozenset(labels.items())))


def task_labels(name: str, hostname: str = "", queue_name: str = "default") -> dict[str, str]:
    return {"name": name, "hostname": hostname, "queue_name": queue_name}


# --- counted from the moves ----------------------------------------------------------


def test_a_completed_run_counts_its_send_start_and_success_with_wait_and_runtime(
    make_task, broker, commits, reader
) -> None:
    task = make_task(name="report")
    with time_machine.travel(NOW, tick=False) as clock:
        with commits():
            run, _ = submission.submit(RunRequest(task=task), by="tester")
        clock.shift(2)  # waits 2 s in the queue
        with commits():
            claimed = get_with_task(run.pk)
            execution.claim(claimed, 1, "w1@host")
        clock.shift(3)  # runs 3 s
        with commits():
            execution.complete(claimed, {"ok": True}, "w1@host")

    samples = scrape(reader)

    assert value(samples, "celery_task_sent_total", **task_labels("report")) == 1
    on_w1 = task_labels("report", "w1@host")
    assert value(samples, "celery_task_started_total", **on_w1) == 1
    assert value(samples, "celery_task_succeeded_total", **on_w1) == 1
    assert value(samples, "scheduler_runs_total", name="report", state="completed") == 1
    wait = "celery_task_queue_wait_time"
    assert value(samples, f"{wait}_bucket", **on_w1, le="1.0") == 0
    assert value(samples, f"{wait}_bucket", **on_w1, le="2.5") == 1
    assert value(samples, f"{wait}_bucket", **on_w1, le="+Inf") == 1
    assert (value(samples, f"{wait}_count", **on_w1), value(samples, f"{wait}_sum", **on_w1)) == (1, 2.0)
    runtime = "celery_task_runtime"
    assert value(samples, f"{runtime}_bucket", **on_w1, le="2.5") == 0
    assert value(samples, f"{runtime}_bucket", **on_w1, le="5.0") == 1
    assert (value(samples, f"{runtime}_count", **on_w1), value(samples, f"{runtime}_sum", **on_w1)) == (
        1,
        3.0,
    )


def test_a_retried_then_failed_run_counts_the_retry_and_the_failure_by_exception(
    make_task, commits, reader
) -> None:
    task = make_task(
        name="explodes", handler="tests.explode", max_retries=1, retry_backoff=1, retry_jitter=False
    )
    AlertRule.objects.create(name="any failure", condition="failure")
    with commits():
        run, _ = submission.submit(RunRequest(task=task), by="tester")
    with commits():
        execution.execute(run.pk, 1, hostname="w1@host")  # -> retrying
    with commits():
        assert scheduling.send_due_runs(now=timezone.now() + dt.timedelta(seconds=5)) == 1
    with commits():
        execution.execute(run.pk, 2, hostname="w2@host")  # -> failed

    samples = scrape(reader)

    assert Run.objects.get(pk=run.pk).state == S.FAILED
    assert value(samples, "celery_task_sent_total", **task_labels("explodes")) == 2
    assert value(samples, "celery_task_started_total", **task_labels("explodes", "w1@host")) == 1
    assert value(samples, "celery_task_retried_total", **task_labels("explodes", "w1@host")) == 1
    failed = {**task_labels("explodes", "w2@host"), "exception": "ValueError"}
    assert value(samples, "celery_task_failed_total", **failed) == 1
    assert value(samples, "scheduler_runs_total", name="explodes", state="failed") == 1
    assert value(samples, "celery_task_succeeded_total", **task_labels("explodes", "w2@host")) is None
    assert value(samples, "scheduler_alerts_open", condition="failure") == 1


def test_a_cancel_counts_a_revoke_and_the_final_state(task, broker, commits, reader) -> None:
    with commits():
        run, _ = submission.submit(RunRequest(task=task), by="tester")
    with commits():
        controls.cancel(run, by="operator")

    samples = scrape(reader)

    assert value(samples, "celery_task_revoked_total", **task_labels("noop")) == 1
    assert value(samples, "scheduler_runs_total", name="noop", state="cancelled") == 1


def test_counters_only_grow_when_finished_runs_are_pruned(task, commits, reader) -> None:
    with commits():
        for _ in range(3):
            run, _ = submission.submit(RunRequest(task=task), by="tester")
            controls.cancel(run, by="operator")
    before = value(scrape(reader), "scheduler_runs_total", name="noop", state="cancelled")

    Run.objects.all().delete()

    assert before == 3
    assert value(scrape(reader), "scheduler_runs_total", name="noop", state="cancelled") == 3


def test_a_schedule_s_fire_counts_with_its_lateness(make_task, commits, reader) -> None:
    with time_machine.travel(NOW, tick=False):
        schedule = Schedule.objects.create(task=make_task(name="tick"), cron="* * * * *")
        scheduling.fire_due(now=NOW)  # computes its first instant
    with commits():
        assert scheduling.fire_due(now=NOW + dt.timedelta(seconds=61.5)) == 1  # 1.5 s late

    samples = scrape(reader)

    assert value(samples, "scheduler_schedule_fires_total", schedule=str(schedule.pk)) == 1
    lateness = "scheduler_schedule_fire_lateness_seconds"
    assert value(samples, f"{lateness}_bucket", le="1.0") == 0
    assert value(samples, f"{lateness}_bucket", le="2.0") == 1
    assert (value(samples, f"{lateness}_count"), value(samples, f"{lateness}_sum")) == (1, 1.5)
    assert value(samples, "scheduler_schedule_misfires_total", schedule=str(schedule.pk)) is None


def test_a_workflow_run_fired_by_a_schedule_counts_as_a_fire(make_task, commits, reader) -> None:
    make_task(name="step")
    step = {"key": "a", "task": "step", "kwargs": {}, "depends_on": [], "trigger_rule": "all_success"}
    workflow = Workflow.objects.create(name="nightly", steps=[step])
    with time_machine.travel(NOW, tick=False):
        schedule = Schedule.objects.create(workflow=workflow, interval_seconds=10)
        scheduling.fire_due(now=NOW)
    with commits():
        assert scheduling.fire_due(now=NOW + dt.timedelta(seconds=10.2)) == 1

    samples = scrape(reader)

    assert value(samples, "scheduler_schedule_fires_total", schedule=str(schedule.pk)) == 1
    assert value(samples, "scheduler_schedule_fire_lateness_seconds_count") == 1
    assert value(samples, "celery_task_sent_total", **task_labels("step")) == 1  # its step went out


def test_instants_missed_while_no_scheduler_ran_count_as_misfires(make_task, commits, reader) -> None:
    with time_machine.travel(NOW, tick=False):
        schedule = Schedule.objects.create(
            task=make_task(name="tick"), cron="* * * * *", misfire_policy="skip"
        )
        scheduling.fire_due(now=NOW)
    with commits():
        scheduling.fire_due(now=NOW + dt.timedelta(seconds=600.5))  # ten minutes down; the last on time

    samples = scrape(reader)

    assert value(samples, "scheduler_schedule_misfires_total", schedule=str(schedule.pk)) == 9
    assert value(samples, "scheduler_schedule_fires_total", schedule=str(schedule.pk)) == 1


def test_misfires_of_a_firing_that_rolled_back_are_not_counted(make_task, commits, reader) -> None:
    with time_machine.travel(NOW, tick=False):
        schedule = Schedule.objects.create(task=make_task(name="tick"), cron="* * * * *")
        scheduling.fire_due(now=NOW)
    with commits(), pytest.raises(DatabaseError), transaction.atomic():
        metrics.count_misfires([(schedule, [NOW])])
        raise DatabaseError("the firing fails after its misfires were seen")

    assert value(scrape(reader), "scheduler_schedule_misfires_total", schedule=str(schedule.pk)) is None


# --- the hook's cost -----------------------------------------------------------------


def test_moves_of_runs_that_carry_their_task_cost_no_query(
    make_task, make_run, django_assert_num_queries
) -> None:
    runs = [make_run(make_task(), S.PENDING) for _ in range(3)]
    for run in runs:
        run.task  # noqa: B018 - loaded, as every path but a workflow's cancel has it

    with django_assert_num_queries(0):
        metrics.count_moves([Move(run, S.CREATED, S.PENDING) for run in runs])


def test_moves_of_runs_without_their_task_read_the_tasks_in_one_query(
    make_task, make_run, django_assert_num_queries, reader
) -> None:
    for _ in range(3):
        make_run(make_task(), S.PENDING)
    runs = list(Run.objects.all())  # no task loaded

    with django_assert_num_queries(1):
        metrics.count_moves([Move(run, S.PENDING, S.CANCELLED) for run in runs])

    samples = scrape(reader)
    revoked = [value(samples, "celery_task_revoked_total", **task_labels(run.task.name)) for run in runs]
    assert revoked == [1, 1, 1]


def test_moves_are_counted_without_a_round_trip_and_written_in_one(
    make_task, make_run, broker, monkeypatch
) -> None:
    runs = [make_run(make_task(), S.PENDING) for _ in range(50)]
    client = metrics._writer()
    sent = []
    real = client.connection_pool.get_connection

    def counted(*args: Any, **kwargs: Any) -> Any:
        sent.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(client.connection_pool, "get_connection", counted)
    for run in runs:
        metrics.count_moves([Move(run, S.PENDING, S.RUNNING)])
    assert sent == []  # the moves' own path never waits on Redis
    metrics.flush()

    assert len(sent) == 1
    assert sum(int(n) for n in broker.hvals("metrics:celery_task_started")) == 50


# --- Redis away ------------------------------------------------------------------------


@pytest.fixture
def hanging_redis(settings: Any) -> Iterator[None]:
    """A Redis that takes connections and never answers (the kernel accepts for it)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        settings.REDIS_URL = f"redis://127.0.0.1:{server.getsockname()[1]}/0"
        yield


def test_a_redis_that_hangs_costs_one_timeout_and_one_warning_then_writes_pause(
    task, commits, caplog, hanging_redis, monkeypatch
) -> None:
    caplog.set_level(logging.WARNING, logger="tasks_app.metrics")
    tried, real = [], metrics._execute
    monkeypatch.setattr(metrics, "_execute", lambda pipe: (tried.append(1), real(pipe)))
    with commits():
        runs = [submission.submit(RunRequest(task=task), by="tester")[0] for _ in range(20)]
        for run in runs:
            controls.cancel(run, by="operator")
    assert tried == []  # 40 moves, none waited on Redis

    for _ in range(3):
        metrics.flush()

    assert Run.objects.filter(state=S.CANCELLED).count() == 20  # every move stands
    warnings = [r for r in caplog.records if r.name == "tasks_app.metrics"]
    assert len(warnings) == 1
    assert "metrics not recorded for 10s" in warnings[0].getMessage()
    assert len(tried) == 1  # one write tried: the next flushes wait out the pause


def test_counts_made_while_writes_pause_are_written_once_the_pause_is_over(
    task, commits, reader, settings, monkeypatch
) -> None:
    clock = [1000.0]  # the pause's own clock, moved by hand
    monkeypatch.setattr(metrics, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    working = settings.REDIS_URL
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    with commits():
        submission.submit(RunRequest(task=task), by="tester")
    metrics.flush()  # fails: this count is lost, and writes pause
    settings.REDIS_URL = working
    clock[0] += metrics.OUTAGE_PAUSE - 1
    with commits():
        submission.submit(RunRequest(task=task), by="tester")
    metrics.flush()  # still paused: the count waits
    assert metrics._writer().hlen("metrics:celery_task_sent") == 0
    clock[0] += 2
    with commits():
        submission.submit(RunRequest(task=task), by="tester")

    assert value(scrape(reader), "celery_task_sent_total", **task_labels("noop")) == 2


def test_a_scrape_while_redis_is_unreachable_still_answers_with_the_gauges(task, reader, settings) -> None:
    settings.REDIS_URL = "redis://127.0.0.1:1/0"

    response = reader.get("/metrics")

    assert response.status_code == 200
    names = {family.name for family in text_string_to_metric_families(response.content.decode())}
    assert {"celery_worker_up", "scheduler_alerts_open"} <= names
    assert "celery_task_sent" not in names


# --- gauges ------------------------------------------------------------------------


def test_workers_up_and_their_active_runs(task, make_run, reader) -> None:
    record_worker("w1@host", queues=["default", "reports"], concurrency=4)
    record_worker("w2@host", queues=["default"], concurrency=1, now=timezone.now() - dt.timedelta(minutes=10))
    record_worker("old@host", queues=["default"], concurrency=1, now=timezone.now() - dt.timedelta(days=2))
    make_run(task, S.RUNNING, worker="w1@host")
    make_run(task, S.RUNNING, worker="w1@host")
    make_run(task, S.COMPLETED, worker="w1@host")

    samples = scrape(reader)

    assert value(samples, "celery_worker_up", hostname="w1@host") == 1
    assert value(samples, "celery_worker_up", hostname="w2@host") == 0
    assert value(samples, "celery_worker_up", hostname="old@host") is None  # gone for over a day
    assert value(samples, "celery_worker_tasks_active", hostname="w1@host") == 2


def test_queue_lengths_of_the_tasks_and_workers_queues(make_task, commits, reader) -> None:
    task = make_task(name="r", queue="reports")
    record_worker("w1@host", queues=["default", "bulk"], concurrency=1)
    with commits():
        for _ in range(2):
            submission.submit(RunRequest(task=task), by="tester")

    samples = scrape(reader)

    assert value(samples, "celery_queue_length", queue_name="reports") == 2
    assert value(samples, "celery_queue_length", queue_name="bulk") == 0
    assert value(samples, "celery_queue_length", queue_name="default") == 0


def test_a_broker_that_refuses_leaves_the_queue_lengths_out_not_the_scrape(task, reader, monkeypatch) -> None:
    monkeypatch.setattr(app.conf, "broker_url", "redis://127.0.0.1:1/0")

    samples = scrape(reader)

    assert not any(name == "celery_queue_length" for name, _labels in samples)
    assert value(samples, "scheduler_alerts_open", condition="failure") == 0


def test_beats_alive_are_those_seen_lately(reader, broker) -> None:
    with time_machine.travel(NOW, tick=False) as clock:
        metrics.mark_beat_alive()
        broker.zadd("metrics:beats", {"other-host:1": (NOW - dt.timedelta(seconds=5)).timestamp()})
        assert value(scrape(reader), "scheduler_beats_alive") == 2
        clock.shift(metrics.BEAT_ALIVE_WITHIN - 1)
        metrics.mark_beat_alive()
        assert value(scrape(reader), "scheduler_beats_alive") == 1  # the other stopped saying so


def test_a_beat_tick_marks_the_beat_alive(db, reader, monkeypatch) -> None:
    # The tick's connection check would close the test's transaction.
    monkeypatch.setattr(scheduling, "close_old_connections", lambda: None)
    scheduler = scheduling.PlatformScheduler.__new__(scheduling.PlatformScheduler)  # its tick only
    scheduler.platform_tick()

    assert value(scrape(reader), "scheduler_beats_alive") == 1


# --- who may read it -------------------------------------------------------------------


def test_the_scrape_key_reads_the_metrics(anonymous, settings) -> None:
    settings.METRICS_TOKEN = "s3cret-scrape-key"
    anonymous.credentials(HTTP_AUTHORIZATION="Bearer s3cret-scrape-key")

    response = anonymous.get("/metrics")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    assert "# TYPE celery_worker_up gauge" in response.content.decode()


@pytest.mark.parametrize(
    ("key", "sent"),
    [
        ("s3cret-scrape-key", "Bearer wrong"),
        ("s3cret-scrape-key", "Bearer"),
        ("", "Bearer "),
        ("", "Bearer x"),
    ],
    ids=["wrong", "empty", "no key set, empty", "no key set"],
)
def test_any_other_bearer_is_a_401(anonymous, settings, key, sent) -> None:
    settings.METRICS_TOKEN = key
    anonymous.credentials(HTTP_AUTHORIZATION=sent)

    response = anonymous.get("/metrics")

    assert response.status_code == 401
    assert json.loads(response.content) == {"detail": "Invalid scrape key."}


PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)


def test_no_credentials_is_a_401_with_a_json_body(anonymous) -> None:
    response = anonymous.get("/metrics")

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"
    assert response["Content-Type"] == "application/json"
    assert json.loads(response.content) == {"detail": "Authentication credentials were not provided."}


def test_prometheus_gets_the_text_format_and_a_refusal_in_json(anonymous, settings) -> None:
    settings.METRICS_TOKEN = "s3cret-scrape-key"
    anonymous.credentials(HTTP_AUTHORIZATION="Bearer s3cret-scrape-key")
    assert anonymous.get("/metrics", HTTP_ACCEPT=PROMETHEUS_ACCEPT)["Content-Type"].startswith("text/plain")

    anonymous.credentials(HTTP_AUTHORIZATION="Bearer not-it")
    refused = anonymous.get("/metrics", HTTP_ACCEPT=PROMETHEUS_ACCEPT)
    assert refused.status_code == 401
    assert json.loads(refused.content) == {"detail": "Invalid scrape key."}


def test_the_scrape_key_reads_nothing_else(anonymous, settings) -> None:
    settings.METRICS_TOKEN = "s3cret-scrape-key"
    anonymous.credentials(HTTP_AUTHORIZATION="Bearer s3cret-scrape-key")

    assert anonymous.get("/api/v1/runs/").status_code == 401


# --- the dashboard and the docs ------------------------------------------------------


def exported_names(client: Any) -> set[str]:
    """The sample names /metrics can export: each family's, with a counter's and a histogram's
    suffixes (families are listed even while they have no sample)."""
    text = client.get("/metrics").content.decode()
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            suffixes = {"counter": [""], "histogram": ["_bucket", "_sum", "_count"]}.get(kind, [""])
            names.update(name + suffix for suffix in suffixes)
    return names


def dashboard_expressions() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in board["panels"] for target in panel.get("targets", [])]
    exprs += [var["query"]["query"] for var in board["templating"]["list"] if var.get("type") == "query"]
    return exprs


def test_the_dashboard_uses_only_metrics_that_are_exported(reader) -> None:
    exported = exported_names(reader)
    used = {
        name for expr in dashboard_expressions() for name in re.findall(r"\b(?:celery|scheduler)_\w+", expr)
    }

    assert used, "the dashboard queries nothing"
    assert used <= exported, f"the dashboard queries what /metrics does not export: {sorted(used - exported)}"
    family_of = {name: name.removesuffix("_total") for name in exported}
    assert {family_of[name] for name in used if name.endswith("_total")} >= {
        family.name for family in metrics.STORED if family.kind == "counter"
    }, "a counter has no panel"


def test_the_dashboard_is_importable_with_its_own_datasource() -> None:
    board = json.loads(DASHBOARD.read_text())

    assert [(i["name"], i["pluginId"]) for i in board["__inputs"]] == [("DS_PROMETHEUS", "prometheus")]
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
            assert panel["targets"], panel["title"]
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))


def test_every_metric_is_documented() -> None:
    text = (ROOT / "docs" / "metrics.md").read_text()
    names = [f"{f.name}_total" if f.kind == "counter" else f.name for f in metrics.STORED] + list(
        metrics.GAUGES
    )
    assert [name for name in names if f"`{name}`" not in text] == []


def test_a_failure_whose_error_is_not_an_object_is_counted_all_the_same(make_task, make_run, reader) -> None:
    run = make_run(make_task(name="odd"), S.FAILED, error=["written", "past", "the", "worker"])

    metrics.count_moves([Move(run, S.RUNNING, S.FAILED)])

    failed = {**task_labels("odd"), "exception": ""}
    assert value(scrape(reader), "celery_task_failed_total", **failed) == 1


def test_the_series_of_gone_workers_tasks_and_schedules_are_dropped(make_task, make_run, broker) -> None:
    kept, deleted = make_task(name="kept"), make_task(name="deleted")
    Worker.objects.create(hostname="here@host", last_heartbeat=timezone.now())
    Worker.objects.create(hostname="gone@host", last_heartbeat=timezone.now() - dt.timedelta(days=2))
    schedule = Schedule.objects.create(task=kept, interval_seconds=60)
    fired = make_run(kept, S.PENDING, trigger="schedule", schedule=schedule, scheduled_for=timezone.now())
    moves = [
        Move(make_run(kept, S.RUNNING, worker="here@host"), S.PENDING, S.RUNNING),
        Move(make_run(kept, S.RUNNING, worker="gone@host"), S.PENDING, S.RUNNING),
        Move(make_run(deleted, S.RUNNING, worker="here@host"), S.PENDING, S.RUNNING),
        Move(fired, "", S.PENDING),
    ]
    metrics.count_moves(moves)
    metrics.flush()
    deleted.delete()

    assert metrics.forget_gone() == 2  # gone@host's start, the deleted task's start

    started = [json.loads(field) for field in broker.hkeys("metrics:celery_task_started")]
    assert started == [["kept", "here@host", "default"]]
    assert broker.hlen("metrics:scheduler_schedule_fires") == 1  # its schedule is still there
    assert broker.hlen("metrics:celery_task_sent") == 1


def test_a_forked_pool_process_starts_with_nothing_to_write(make_task, make_run) -> None:
    metrics.count_moves([Move(make_run(make_task(), S.PENDING), S.PENDING, S.RUNNING)])

    pid = os.fork()
    if pid == 0:  # the child: a prefork pool process, say
        os._exit(0 if not metrics._pending.counts and metrics._flusher is None else 1)
    _, status = os.waitpid(pid, 0)

    assert os.waitstatus_to_exitcode(status) == 0
    assert metrics._pending.counts  # the parent's counts are still the parent's to write
