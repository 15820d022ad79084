"""Messages to the broker: a run's message, sent always after the transaction that made
the run pending; a revoke; a queue's length.

A run is committed as `pending` before its message is published. If publishing
fails (the broker is down) the run stays pending with a `due_at` a few seconds on,
and beat's scheduling.send_due_runs() sends it again then, under its next message
number; a message that still arrives later is harmless, as only the run's latest
message number can claim it (execution.claim).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from amqp.exceptions import NotFound
from celery import current_app
from django.conf import settings
from django.utils import timezone

from tasks_app import run_loader
from tasks_app.choices import RunState
from tasks_app.lifecycle import Move
from tasks_app.models import Run
from tasks_app.models.tasks import PRIORITY_MAX

logger = logging.getLogger(__name__)

BATCH = 500  # messages per Redis pipeline
RESEND_AFTER = dt.timedelta(seconds=5)


def publish(runs: Iterable[Run]) -> int:
    """Publish one message per run over one producer, pipelined; returns how many were sent."""
    runs = list(runs)
    sent = 0
    if not runs:
        return sent
    app = current_app
    queues: dict[str, Any] = {}  # declared on this producer's channel
    conf = app.conf  # read once: each of Celery's setting lookups costs some 20 us
    options = {
        "serializer": conf.task_serializer,
        "delivery_mode": conf.task_default_delivery_mode,
        "retry": conf.task_publish_retry,
        "retry_policy": conf.task_publish_retry_policy,
    }
    try:
        with app.producer_or_acquire() as producer:
            if len(runs) == 1:  # a pipeline pays off only for several
                _send(app, producer, options, queues, runs[0])
                sent = 1
            else:
                for first in range(0, len(runs), BATCH):
                    group = runs[first : first + BATCH]
                    # kombu's batch pipelines the LPUSHes: one Redis round trip per group.
                    with producer.batch(max_size=BATCH):
                        for run in group:
                            _send(app, producer, options, queues, run)
                    sent += len(group)
    except Exception:
        unsent = [run.pk for run in runs[sent:]]
        logger.exception("broker refused %d run message(s) %s; sending again later", len(unsent), unsent[:20])
        _resend_later(unsent)
    return sent


def _resend_later(run_ids: list[int]) -> None:
    try:
        Run.objects.filter(pk__in=run_ids, state=RunState.PENDING).update(
            due_at=timezone.now() + RESEND_AFTER
        )
    except Exception:
        logger.exception("could not mark runs %s to be sent again", run_ids[:20])


def time_limits(task: Any) -> tuple[float | None, float]:
    """(soft, hard) seconds for a run of `task`: RUN_MAX_DURATION is every run's hard limit,
    which a task may lower, never raise (a sleep of 1e9 s cannot hold a worker)."""
    longest = settings.RUN_MAX_DURATION
    hard = min(task.time_limit or longest, longest)
    soft = min(task.soft_time_limit, hard) if task.soft_time_limit else None
    return soft, hard


def message_priority(priority: int) -> int:
    """The message's priority for a run's (our API's 9 is the most urgent): RabbitMQ serves
    the highest first, kombu's Redis transport 0 first."""
    return PRIORITY_MAX - priority if settings.BROKER_IS_REDIS else priority


def _send(app: Any, producer: Any, options: dict[str, Any], queues: dict[str, Any], run: Run) -> None:
    """Publish `run`'s message: Celery's own task message (app.amqp.create_task_message), put
    on its queue as app.send_task() would, through the producer directly. send_task() also
    routes, merges options and sends the publish signals (which nothing here listens to) for
    every message: half the cost of a bulk's 1,000 (bench/orm.py `publish_1000`: 2026-12-06,
    0.13 ms a message here against 0.26 ms through send_task()). tests/test_broker.py holds
    the two messages equal."""
    task = run.task
    queue = queues.get(task.queue)
    if queue is None:  # declared once a producer: on RabbitMQ an undeclared queue drops messages
        queue = queues[task.queue] = app.amqp.queues[task.queue]
        producer.maybe_declare(queue, retry=options["retry"])
    soft, hard = time_limits(task)
    names = {"run_id": run.pk, "message_number": run.message_number}
    headers, properties, body, _sent_event = app.amqp.create_task_message(
        run.message_id,
        task.handler,
        (),
        {**names, **run_loader.carried(run)},
        kwargsrepr=repr(names),  # what Flower and logs show: the run, not its inputs again
        shadow=task.name,  # the name the worker log, Flower and `celery inspect` show
        soft_time_limit=soft,
        time_limit=hard,
        ignore_result=None,  # the task's own setting stands (send_task()'s default)
    )
    producer.publish(
        body,
        exchange="",  # the default exchange: routed by the queue's name, as send_task() does
        routing_key=queue.name,
        headers=headers,
        priority=message_priority(run.priority),
        **options,
        **properties,
    )


# A queue's length is asked for by pages and scrapes: a broker that takes the connection and never
# answers must not hang them (kombu sets no socket timeout of its own).
LENGTH_TIMEOUT = 1.0


@contextmanager
def _answering() -> Iterator[Any]:
    """A connection to the broker, made within LENGTH_TIMEOUT or raising."""
    timeouts = {"socket_timeout": LENGTH_TIMEOUT, "socket_connect_timeout": LENGTH_TIMEOUT}
    with current_app.connection_for_read(transport_options=timeouts) as connection:
        connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0)
        yield connection


def ping() -> None:
    """Raise unless the broker takes a connection within LENGTH_TIMEOUT."""
    with _answering():
        pass


def queue_length(queue: str) -> int:
    """Messages waiting in `queue`, every priority counted, as the broker reports them; raises
    if it does not answer within LENGTH_TIMEOUT."""
    with _answering() as connection:
        channel = connection.default_channel
        if settings.BROKER_IS_REDIS:
            # Not passive: kombu's Redis transport checks a passive declare against unprefixed
            # keys (EXISTS is not among the commands it prefixes), so it finds no queue at all.
            return channel.queue_declare(queue=queue, durable=True, auto_delete=False).message_count
        # Passive on RabbitMQ: a declare with other arguments than the queue's (its
        # x-max-priority) is refused. Ready messages only: a consumer's unacknowledged ones are
        # in its worker's heartbeat, and back in the queue if its connection drops.
        try:
            return channel.queue_declare(queue=queue, passive=True).message_count
        except NotFound:  # no such queue (yet): nothing waits in it
            return 0


def queue_lengths(queues: Iterable[str]) -> dict[str, int]:
    """Messages waiting in each of `queues`; raises if the broker does not answer."""
    return {queue: queue_length(queue) for queue in sorted(queues)}


def revoke(message_id: str, *, terminate: bool) -> None:
    """Tell the workers to drop a message, and to stop it if it is executing."""
    try:
        current_app.control.revoke(message_id, terminate=terminate, signal="SIGTERM")
    except Exception:
        logger.exception("could not revoke message %s", message_id)


def revoke_cancelled(moves: list[Move]) -> None:
    """Subscriber of lifecycle: a run cancelled while its message was out is revoked, and
    stopped if it was executing."""
    for moved in moves:
        if (
            moved.is_run
            and moved.target == RunState.CANCELLED
            and moved.source in (RunState.PENDING, RunState.RUNNING)
        ):
            revoke(moved.subject.message_id, terminate=moved.source == RunState.RUNNING)
