"""Prometheus metrics: counters and histograms kept in Redis, gauges read at scrape time.

Counters and histograms only grow, and every process (web, workers, beats, on any host) adds
to the same ones: each lives in a Redis hash under METRICS_KEY_PREFIX, one field per set of
label values. `count_moves` (lifecycle's subscriber), and beat for misfires, count into the
process's tally, which `flush()` writes in one pipeline every FLUSH_INTERVAL seconds.
`/metrics` (tasks_app.health) reads them with the gauges of `collect()`. Names and labels are
celery-exporter's where the meaning is the same, so its dashboards and alerts work on them;
the platform's own start with `scheduler_`. docs/metrics.md lists every metric and where it is
counted.

Queue waits and attempts' run times are measured from `Move.since`, when the run entered the
state it leaves, as the process that moved it knew it (the worker's claim, its completion).

A Redis that fails or hangs costs a flush one short timeout and what it carried: writes then
pause for OUTAGE_PAUSE seconds (in that process), with one warning, the counts waiting meanwhile.
No move ever waits on it.
"""

from __future__ import annotations

import atexit
import datetime as dt
import json
import logging
import os
import socket
import threading
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import redis
from django.conf import settings
from django.db import transaction
from django.db.models import Count
from django.utils import timezone
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString
from redis.backoff import NoBackoff
from redis.retry import Retry

from tasks_app import broker
from tasks_app.choices import TERMINAL_STATES, AlertCondition, AlertState, RunState, RunTrigger
from tasks_app.lifecycle import Move
from tasks_app.models import Alert, Run, Schedule, Task, Worker
from tasks_app.models.rollups import DURATION_BOUNDS, LATENESS_BOUNDS
from tasks_app.workers import known_queues

logger = logging.getLogger(__name__)
S = RunState

OUTAGE_PAUSE = 10.0  # seconds without writes after Redis failed
WRITE_TIMEOUT = 0.25  # seconds; Redis answers a batch's pipeline in well under a millisecond
READ_TIMEOUT = 2.0
BEAT_MARK_INTERVAL = 5.0  # how often each beat says it is alive (scheduling.PlatformScheduler)
BEAT_ALIVE_WITHIN = 20.0  # a beat seen this recently is alive
WORKERS_SHOWN_FOR = dt.timedelta(days=1)  # a worker gone longer has no series any more


@dataclass(frozen=True)
class Family:
    """A counter or a histogram kept in Redis (a counter's name without `_total`)."""

    name: str
    kind: str  # "counter" or "histogram"
    help: str
    labels: tuple[str, ...]
    bounds: tuple[float, ...] = ()  # a histogram's bucket bounds, the last +Inf

    @property
    def key(self) -> str:
        return f"{settings.METRICS_KEY_PREFIX}{self.name}"


TASK = ("name", "hostname", "queue_name")
SENT = Family("celery_task_sent", "counter", "Runs sent to the broker (moves to pending).", TASK)
STARTED = Family("celery_task_started", "counter", "Runs a worker started (moves to running).", TASK)
SUCCEEDED = Family("celery_task_succeeded", "counter", "Runs completed.", TASK)
FAILED = Family(
    "celery_task_failed", "counter", "Runs failed, by the type of their error.", (*TASK, "exception")
)
RETRIED = Family("celery_task_retried", "counter", "Attempts that failed and will be retried.", TASK)
REVOKED = Family("celery_task_revoked", "counter", "Runs cancelled.", TASK)
RUNTIME = Family(
    "celery_task_runtime", "histogram", "Seconds the completing attempt ran.", TASK, DURATION_BOUNDS
)
QUEUE_WAIT = Family(
    "celery_task_queue_wait_time",
    "histogram",
    "Seconds from a run's send to the broker to its start by a worker.",
    TASK,
    DURATION_BOUNDS,
)
RUNS = Family("scheduler_runs", "counter", "Runs that reached a final state.", ("name", "state"))
FIRES = Family(
    "scheduler_schedule_fires", "counter", "Runs and workflow runs fired by a schedule.", ("schedule",)
)
MISFIRES = Family(
    "scheduler_schedule_misfires",
    "counter",
    "Instants of a schedule missed by more than SCHEDULE_MISFIRE_GRACE.",
    ("schedule",),
)
LATENESS = Family(
    "scheduler_schedule_fire_lateness_seconds",
    "histogram",
    "Seconds from a schedule's instant to the fire of its run or workflow run.",
    (),
    LATENESS_BOUNDS,
)
STORED = (
    SENT,
    STARTED,
    SUCCEEDED,
    FAILED,
    RETRIED,
    REVOKED,
    RUNTIME,
    QUEUE_WAIT,
    RUNS,
    FIRES,
    MISFIRES,
    LATENESS,
)
GAUGES = {
    "celery_worker_up": "1 if the worker heartbeats, else 0 (workers seen in the last day).",
    "celery_worker_tasks_active": "Runs running on the worker.",
    "celery_queue_length": "Messages waiting in the broker's queue.",
    "scheduler_alerts_open": "Open alerts, by their rule's condition.",
    "scheduler_beats_alive": f"Beats that said they were alive in the last {BEAT_ALIVE_WITHIN:.0f}s.",
}


# Both are asked for at every move a worker makes, for a handful of distinct values.
@lru_cache(maxsize=256)
def _le(bound: float) -> str:
    return floatToGoString(bound)


@lru_cache(maxsize=4096)
def _labels_field(labels: tuple[str, ...]) -> str:
    # JSON escapes control characters: a histogram adds "\n" and its bucket after it.
    return json.dumps(labels, separators=(",", ":"))


def _field(labels: Iterable[str]) -> str:
    return _labels_field(tuple(labels))


def _beats_key() -> str:
    return f"{settings.METRICS_KEY_PREFIX}beats"


# --- writing -------------------------------------------------------------------------

_paused_until = 0.0


@lru_cache(maxsize=8)
def _client(url: str, timeout: float) -> redis.Redis:
    # Not redis_client's (5 s timeouts, retries with backoff): a move waits for the writes
    # after its commit, and a scrape must answer within Prometheus' scrape timeout.
    return redis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0),
        decode_responses=True,
    )  # fmt: skip


def _writer() -> redis.Redis:
    return _client(settings.REDIS_URL, WRITE_TIMEOUT)


def _paused() -> bool:
    return time.monotonic() < _paused_until


def _execute(pipe: Any) -> None:
    global _paused_until
    try:
        pipe.execute()
    except redis.RedisError as exc:
        # The pause is also what keeps an outage to one warning per process every OUTAGE_PAUSE s.
        _paused_until = time.monotonic() + OUTAGE_PAUSE
        logger.warning("metrics not recorded for %.0fs: Redis failed: %s", OUTAGE_PAUSE, exc)


class _Batch:
    """What one batch of moves adds, gathered, then written in one pipeline."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self.sums: Counter[tuple[str, str]] = Counter()

    def add(self, family: Family, *labels: str) -> None:
        self.counts[family.key, _field(labels)] += 1

    def observe(self, family: Family, seconds: float, *labels: str) -> None:
        seconds = max(seconds, 0.0)
        field = _field(labels)
        self.counts[family.key, f"{field}\n{_le(family.bounds[bisect_left(family.bounds, seconds)])}"] += 1
        self.sums[family.key, f"{field}\nsum"] += seconds

    def merge(self, other: _Batch) -> None:
        self.counts.update(other.counts)
        self.sums.update(other.sums)

    def write(self) -> None:
        if not self.counts:
            return
        pipe = _writer().pipeline(transaction=False)
        for (key, field), count in self.counts.items():
            pipe.hincrby(key, field, count)
        for (key, field), total in self.sums.items():
            pipe.hincrbyfloat(key, field, total)
        _execute(pipe)


# What this process counted and has not written yet: a move adds to it (no Redis round trip in
# the move's path: bench/e2e's worker spent a quarter of a run's time there), and a thread of
# the process writes it every FLUSH_INTERVAL seconds in one pipeline, as a scrape in this
# process does first. A process killed loses at most its last FLUSH_INTERVAL of counts.
FLUSH_INTERVAL = 1.0
BACKGROUND = True  # off in the tests: their flushes are theirs to make
_pending = _Batch()
_pending_lock = threading.Lock()
_flusher: threading.Thread | None = None


def _keep(batch: _Batch) -> None:
    global _flusher
    if not batch.counts:
        return
    with _pending_lock:
        _pending.merge(batch)
        if BACKGROUND and (_flusher is None or not _flusher.is_alive()):
            _flusher = threading.Thread(target=_flush_every, name="tasks_app-metrics", daemon=True)
            _flusher.start()


def _flush_every() -> None:
    while not _stopping.wait(FLUSH_INTERVAL):
        flush()


_stopping = threading.Event()


def flush() -> None:
    """Write what this process counted since the last flush. While writes pause after an
    outage, the counts wait (one field per series: bounded); a write that fails loses its own."""
    global _pending
    if _paused():
        return
    with _pending_lock:
        batch, _pending = _pending, _Batch()
    batch.write()


def _forget_in_child() -> None:
    # A forked child (a prefork pool process) starts with nothing to write and no flusher: the
    # parent's pending counts are the parent's to write.
    global _pending, _flusher, _pending_lock
    _pending, _flusher, _pending_lock = _Batch(), None, threading.Lock()


os.register_at_fork(after_in_child=_forget_in_child)
atexit.register(flush)


_TASK_FIELD = Run._meta.get_field("task")


def _tasks_of(runs: list[Run]) -> dict[int, tuple[str, str]]:
    """(name, queue) of the runs' tasks. Every path that moves a run but one has its task at
    hand (a workflow run's cancel does not): the others are read in one query for the batch."""
    found = {run.task_id: (run.task.name, run.task.queue) for run in runs if _TASK_FIELD.is_cached(run)}
    missing = {run.task_id for run in runs} - found.keys()
    if missing:
        rows = Task.objects.filter(pk__in=missing).values_list("pk", "name", "queue")
        found.update((pk, (name, queue)) for pk, name, queue in rows)
    return found


def count_moves(moves: list[Move]) -> None:
    """Lifecycle's subscriber: what the moves count, kept for the next flush."""
    batch = _Batch()
    # A move to created counts nothing but a birth (a fire, maybe): skipped -> created does not.
    runs = [move for move in moves if move.is_run and (move.target != S.CREATED or move.source == "")]
    tasks = _tasks_of([move.subject for move in runs])
    for move in runs:
        _count_run(batch, move, tasks.get(move.subject.task_id, ("", "")))
    for move in moves:
        if not move.is_run and move.source == "" and move.subject.schedule_id:  # fired by a schedule
            _count_fire(batch, move.subject.schedule_id, move.subject.created_at, move.subject.scheduled_for)
    _keep(batch)


def _count_run(batch: _Batch, move: Move, task: tuple[str, str]) -> None:
    run, source, target = move.subject, move.source, move.target
    name, queue = task
    # Only a running attempt has a worker: a run's `worker` stays the last one's afterwards.
    labels = (name, run.worker if S.RUNNING in (source, target) else "", queue)
    if source == "" and run.trigger == RunTrigger.SCHEDULE and run.schedule_id:
        _count_fire(batch, run.schedule_id, run.created_at, run.scheduled_for)
    # How long it was in the state it leaves: the wait in the queue, or the attempt that ran.
    waited = (run.state_changed_at - move.since).total_seconds() if move.since else None
    if target == S.PENDING:
        batch.add(SENT, *labels)
    elif target == S.RUNNING:
        batch.add(STARTED, *labels)
        if source == S.PENDING and waited is not None:
            batch.observe(QUEUE_WAIT, waited, *labels)
    elif target == S.COMPLETED:
        batch.add(SUCCEEDED, *labels)
        if waited is not None:
            batch.observe(RUNTIME, waited, *labels)
    elif target == S.FAILED:
        error = run.error if isinstance(run.error, dict) else {}  # a row written past the worker
        batch.add(FAILED, *labels, str(error.get("type", "")))
    elif target == S.RETRYING:
        batch.add(RETRIED, *labels)
    elif target == S.CANCELLED:
        batch.add(REVOKED, *labels)
    if target in TERMINAL_STATES:
        batch.add(RUNS, name, target)


def _count_fire(batch: _Batch, schedule_id: int, created_at: dt.datetime, scheduled_for: Any) -> None:
    batch.add(FIRES, str(schedule_id))
    if scheduled_for is not None:
        batch.observe(LATENESS, (created_at - scheduled_for).total_seconds())


def count_misfires(missed: list[tuple[Schedule, list[dt.datetime]]]) -> None:
    """The instants schedules missed (scheduling.fire_due, in its transaction): counted once
    that commits, as their fires are."""
    batch = _Batch()
    for schedule, instants in missed:
        batch.counts[MISFIRES.key, _field([str(schedule.pk)])] += len(instants)

    transaction.on_commit(lambda: _keep(batch))


def mark_beat_alive() -> None:
    """This beat is alive now (beat calls it every BEAT_MARK_INTERVAL s)."""
    if _paused():
        return
    now = timezone.now().timestamp()
    pipe = _writer().pipeline(transaction=False)
    pipe.zadd(_beats_key(), {f"{socket.gethostname()}:{os.getpid()}": now})
    pipe.zremrangebyscore(_beats_key(), "-inf", now - 3600)  # beats long gone
    _execute(pipe)


def forget_gone(now: dt.datetime | None = None) -> int:
    """Drop the series of what is gone, so the hashes do not grow with every worker host a
    deploy brings: workers not heard from for WORKERS_SHOWN_FOR, tasks and schedules deleted
    (retention.prune calls it daily). Prometheus sees those series end, as it does when a
    celery-exporter restarts. Returns the fields dropped."""
    now = now or timezone.now()
    live = {
        "hostname": {"", *Worker.objects.filter(last_heartbeat__gte=now - WORKERS_SHOWN_FOR).values_list(
            "hostname", flat=True
        )},
        "name": set(Task.objects.values_list("name", flat=True)),
        "schedule": {str(pk) for pk in Schedule.objects.values_list("pk", flat=True)},
    }  # fmt: skip
    client = _client(settings.REDIS_URL, READ_TIMEOUT)
    dropped = 0
    for family in STORED:
        checked = [(i, live[label]) for i, label in enumerate(family.labels) if label in live]
        if not checked:
            continue
        stale = []
        for field in client.hkeys(family.key):
            labels = field.rpartition("\n")[0] if family.kind == "histogram" else field
            values = json.loads(labels)
            if len(values) != len(family.labels) or any(values[i] not in kept for i, kept in checked):
                stale.append(field)
        if stale:
            dropped += client.hdel(family.key, *stale)
    return dropped


# --- reading -------------------------------------------------------------------------


def collect(now: dt.datetime | None = None) -> Iterator[Metric]:
    """Every metric, as prometheus-client's families: the stored ones as Redis holds them
    (none while it cannot be read), the gauges as they are now."""
    now = now or timezone.now()
    flush()  # this process's own counts, written before they are read
    try:
        with _client(settings.REDIS_URL, READ_TIMEOUT).pipeline(transaction=False) as pipe:
            for family in STORED:
                pipe.hgetall(family.key)
            pipe.zcount(_beats_key(), now.timestamp() - BEAT_ALIVE_WITHIN, "+inf")
            *stored, beats = pipe.execute()
    except redis.RedisError as exc:
        logger.warning("metrics: Redis cannot be read, counters and histograms left out: %s", exc)
    else:
        for family, fields in zip(STORED, stored, strict=True):
            yield _counter(family, fields) if family.kind == "counter" else _histogram(family, fields)
        yield GaugeMetricFamily("scheduler_beats_alive", GAUGES["scheduler_beats_alive"], value=beats)
    yield from _gauges(now)


def _counter(family: Family, fields: dict[str, str]) -> Metric:
    metric = CounterMetricFamily(family.name, family.help, labels=family.labels)
    for field, value in sorted(fields.items()):
        labels = json.loads(field)
        if len(labels) == len(family.labels):  # else written by a version with other labels
            metric.add_metric(labels, float(value))
    return metric


def _histogram(family: Family, fields: dict[str, str]) -> Metric:
    buckets: dict[str, dict[float, int]] = {}
    sums: dict[str, float] = {}
    for field, value in fields.items():
        labels, _, part = field.rpartition("\n")
        if part == "sum":
            sums[labels] = float(value)
        else:
            buckets.setdefault(labels, {})[float(part)] = int(value)
    metric = HistogramMetricFamily(family.name, family.help, labels=family.labels)
    for labels, counts in sorted(buckets.items()):
        values = json.loads(labels)
        if len(values) != len(family.labels):
            continue
        # Cumulative: a bucket written under other bounds is counted in the next bound above it.
        cumulative = [
            (_le(bound), sum(n for le, n in counts.items() if le <= bound)) for bound in family.bounds
        ]
        metric.add_metric(values, cumulative, sums.get(labels, 0.0))
    return metric


def _gauges(now: dt.datetime) -> Iterator[Metric]:
    online_since = Worker.online_since(now)
    workers = list(Worker.objects.filter(last_heartbeat__gte=now - WORKERS_SHOWN_FOR))
    # As workers.online_workers(), on the rows read already.
    online = [w for w in workers if w.stopped_at is None and w.last_heartbeat > online_since]
    up = GaugeMetricFamily("celery_worker_up", GAUGES["celery_worker_up"], labels=["hostname"])
    for worker in workers:
        up.add_metric([worker.hostname], 1 if worker in online else 0)
    yield up
    # GROUP BY over running runs only (index run_state_due starts with state).
    running = dict(
        Run.objects.filter(state=S.RUNNING).values_list("worker").annotate(n=Count("id")).order_by()
    )
    active = GaugeMetricFamily(
        "celery_worker_tasks_active", GAUGES["celery_worker_tasks_active"], labels=["hostname"]
    )
    for hostname in sorted({worker.hostname for worker in online} | set(running)):
        active.add_metric([hostname], running.get(hostname, 0))
    yield active
    try:
        lengths = broker.queue_lengths(known_queues(online))
    except Exception as exc:  # the broker is unreachable: no gauge rather than no scrape
        logger.warning("metrics: queue lengths left out, the broker did not answer: %s", exc)
    else:
        length = GaugeMetricFamily(
            "celery_queue_length", GAUGES["celery_queue_length"], labels=["queue_name"]
        )
        for queue, count in lengths.items():
            length.add_metric([queue], count)
        yield length
    open_by = dict(
        Alert.objects.filter(state=AlertState.OPEN)
        .values_list("rule__condition")
        .annotate(n=Count("id"))
        .order_by()
    )
    alerts = GaugeMetricFamily("scheduler_alerts_open", GAUGES["scheduler_alerts_open"], labels=["condition"])
    for condition in AlertCondition.values:
        alerts.add_metric([condition], open_by.get(condition, 0))
    yield alerts
