"""Queue names and Redis keys: no name a user picks can land on a key the platform keeps."""

from __future__ import annotations

import datetime as dt
import json

import pytest
import redis
import time_machine
from django.conf import settings

import tasks_app.broker
from tasks_app.lifecycle import RunState
from tasks_app.models import Run, Task
from tasks_app.recovery import resend_lost_messages
from tests.conftest import broker_key, queued_ids

S = RunState
NOW = dt.datetime(2026, 3, 2, 12, 0, tzinfo=dt.UTC)
TASKS = "/api/v1/tasks/"
RESERVED = ["unacked", "unacked_index", "unacked_mutex", "UNACKED", "amq.direct", "x.reply.celery.pidbox",
            "celeryev.2f1c"]  # fmt: skip


@pytest.mark.parametrize("queue", RESERVED)
def test_a_queue_named_like_a_broker_key_is_refused(api, queue) -> None:
    response = api.post(TASKS, {"name": "t", "handler": "builtin.noop", "queue": queue}, format="json")

    assert response.status_code == 400
    assert "reserved" in str(response.data["queue"])
    assert not Task.objects.exists()


def test_a_queue_cannot_be_renamed_to_a_broker_key(api, make_task) -> None:
    make_task(name="t")
    response = api.patch(f"{TASKS}t/", {"queue": "unacked"}, format="json")
    assert response.status_code == 400
    assert Task.objects.get().queue == "default"


def test_the_database_refuses_a_reserved_queue_written_past_validation(make_task) -> None:
    from django.db import IntegrityError, transaction

    task = make_task()
    with pytest.raises(IntegrityError), transaction.atomic():
        Task.objects.filter(pk=task.pk).update(queue="unacked")


def test_broker_cache_and_locks_keep_their_keys_under_their_own_prefixes(
    api, make_task, broker, django_capture_on_commit_callbacks
) -> None:
    make_task(name="gated", concurrency_policy="forbid")
    with django_capture_on_commit_callbacks(execute=True):
        assert api.post("/api/v1/runs/", {"task": "gated", "priority": 9}, format="json").status_code == 201
        assert api.post("/api/v1/runs/", {"task": "gated", "priority": 0}, format="json").status_code == 201

    keys = sorted(key.decode() for key in broker.keys("*"))
    prefixes = (settings.BROKER_KEY_PREFIX, settings.LOCK_KEY_PREFIX, settings.METRICS_KEY_PREFIX, "cache:")
    assert keys, "the submissions wrote nothing to Redis"
    assert [key for key in keys if not key.startswith(prefixes)] == []
    assert any(key.startswith(settings.LOCK_KEY_PREFIX) for key in keys)  # the task's lock
    assert any(key.startswith("cache:") for key in keys)  # the submit throttle


@pytest.mark.parametrize("queue", ["u", "s", "q", "d", "unacked2"])
def test_the_lost_message_sweep_reads_only_its_own_queues_keys(make_task, make_run, broker, queue) -> None:
    task = make_task(queue=queue)
    run = make_run(task, S.PENDING, message_number=1, state_changed_at=NOW - dt.timedelta(minutes=5))
    # What kombu keeps beside the queues, a message delivered and not yet acknowledged, is
    # not the sweep's to read (it is Redis's alone): no worker's heartbeat holds this run.
    broker.hset(broker_key("unacked"), "tag", json.dumps([{"headers": {"id": f"{run.pk}.1"}}, "", queue]))
    broker.zadd(broker_key("unacked_index"), {"tag": 1.0})
    broker.lpush(broker_key("default"), b"{}")  # another queue's backlog does not hold this one up

    with time_machine.travel(NOW, tick=False):
        assert resend_lost_messages() == 1

    assert Run.objects.get(pk=run.pk).due_at is not None


def test_queue_length_counts_every_priority_of_one_queue_only(make_task, broker) -> None:
    broker.lpush(broker_key("reports"), b"{}")
    broker.lpush(broker_key("reports") + "\x06\x163", b"{}", b"{}")
    broker.lpush(broker_key("reports-2"), b"{}")
    broker.hset(broker_key("unacked"), "tag", "{}")
    assert tasks_app.broker.queue_length("reports") == 3
    assert tasks_app.broker.queue_length("r") == 0


def test_a_queue_named_like_the_throttles_cache_key_is_harmless(
    api, owner, make_task, broker, django_capture_on_commit_callbacks
) -> None:
    # What the submit throttle's counter is called in the cache, and the lock of task 1.
    throttle_key = f"scheduler:1:throttle_submit_{owner.pk}"
    for name, queue in (("a", throttle_key), ("b", f"cache:1:throttle_submit_{owner.pk}"), ("c", "lock:1")):
        make_task(name=name, queue=queue)
        for priority in (9, 0):
            with django_capture_on_commit_callbacks(execute=True):
                response = api.post("/api/v1/runs/", {"task": name, "priority": priority}, format="json")
            assert response.status_code == 201, response.data
        assert len(queued_ids(broker, queue)) == 2
    assert Run.objects.count() == 6


def test_a_redis_error_reaches_no_client_as_a_500(broker) -> None:
    from tasks_app.api.errors import exception_handler

    broker.hset(broker_key("unacked"), "tag", "{}")
    with pytest.raises(redis.ResponseError) as wrongtype:
        broker.lpush(broker_key("unacked"), b"x")  # what a queue named "unacked" did

    response = exception_handler(wrongtype.value, {})
    assert response is not None and response.status_code == 503
    assert "WRONGTYPE" not in str(response.data)


def test_queue_length_on_rabbitmq_counts_the_waiting_messages_of_every_priority(
    settings, monkeypatch
) -> None:
    import kombu

    from scheduler_site.celery import app

    url = "amqp://guest:guest@127.0.0.1:5672//"
    settings.BROKER_IS_REDIS = False
    monkeypatch.setattr(app.conf, "broker_url", url)
    queue = kombu.Queue(
        "length-check", queue_arguments={"x-max-priority": 9}, durable=False, auto_delete=True
    )
    with kombu.Connection(url) as connection:
        channel = connection.channel()
        bound = queue(channel)
        bound.declare()
        bound.purge()
        producer = kombu.Producer(channel, routing_key="length-check")
        for priority in (0, 9, 5):
            producer.publish({"n": priority}, priority=priority)
        try:
            assert tasks_app.broker.queue_length("length-check") == 3
            assert tasks_app.broker.queue_length("no-such-queue") == 0  # passive: nothing declared
        finally:
            bound.delete()
    assert tasks_app.broker.message_priority(9) == 9  # RabbitMQ serves the highest first
    settings.BROKER_IS_REDIS = True
    assert tasks_app.broker.message_priority(9) == 0  # kombu's Redis transport serves 0 first
