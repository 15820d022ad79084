"""Queues named like the keys Redis keeps beside them: a real worker consumes them and stays up."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from scheduler_site.celery import app
from tasks_app import submission
from tasks_app.lifecycle import RunState
from tasks_app.models import Run, Task
from tasks_app.recovery import resend_lost_messages
from tasks_app.submission import RunRequest
from tests.conftest import wait_until
from tests.integration.conftest import Process, process_env

S = RunState
pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

# Each was a key of something else once: kombu's own, the cache's, a concurrency lock's,
# or a prefix the lost-message sweep's scan matched with kombu's keys.
HOSTILE = ["u", "s", "scheduler:1:throttle_submit_1", "cache:1:throttle_submit_1", "tasks_app:task:1:lock",
           "lock:task:1", "broker:unacked"]  # fmt: skip


@pytest.fixture
def hostile_worker(platform: dict[str, Process], tmp_path) -> Iterator[Process]:
    worker = Process(
        "hostile-worker",
        [
            "worker",
            *"-l info -c 1 -n hostile@%h --without-gossip --without-mingle".split(),
            "-Q",
            ",".join(HOSTILE),
        ],
        process_env(),
        tmp_path / "worker.log",
    )
    try:
        wait_until(
            lambda: app.control.ping(destination=[worker_name()], timeout=0.5),
            timeout=60,
            what="the worker of the hostile queues to answer a ping",
        )
        yield worker
    finally:
        worker.stop()


def worker_name() -> str:
    import socket

    return f"hostile@{socket.gethostname()}"


def test_runs_on_queues_named_like_other_keys_complete_and_the_worker_stays_up(hostile_worker) -> None:
    runs = []
    for index, queue in enumerate(HOSTILE):
        task = Task.objects.create(name=f"q{index}", handler="builtin.noop", queue=queue)
        for priority in (9, 0, 5):
            runs.append(submission.submit(RunRequest(task=task, priority=priority), by="tester")[0])

    def all_completed() -> bool:
        return Run.objects.filter(pk__in=[r.pk for r in runs], state=S.COMPLETED).count() == len(runs)

    wait_until(all_completed, timeout=60, what=f"the {len(runs)} runs on hostile queues to complete")
    assert hostile_worker.popen.poll() is None, hostile_worker.output()[-3000:]
    assert "WRONGTYPE" not in hostile_worker.output()
    assert resend_lost_messages() == 0  # the sweep reads these queues without an error
    assert app.control.ping(destination=[worker_name()], timeout=1)


def test_a_waiting_queue_is_served_most_urgent_first(platform: dict[str, Process], tmp_path) -> None:
    from tasks_app import broker

    task = Task.objects.create(name="ordered", handler="builtin.noop", queue="ordered")
    priorities = [3, 9, 0, 5, 7, 1, 8, 2, 6, 4]
    ids = {submission.submit(RunRequest(task=task, priority=p), by="tester")[0].pk: p for p in priorities}
    # All waiting before any worker takes the queue (Redis: a list per priority; RabbitMQ: x-max-priority).
    wait_until(lambda: broker.queue_length("ordered") == len(ids), timeout=10, what="the messages to wait")
    worker = Process(
        "ordered-worker",
        ["worker", *"-l info -c 1 -n ordered@%h --without-gossip --without-mingle -Q ordered".split()],
        process_env(),
        tmp_path / "worker.log",
    )
    try:
        done = Run.objects.filter(pk__in=ids, state=S.COMPLETED)
        wait_until(lambda: done.count() == len(ids), timeout=60, what="the ordered runs to complete")
    finally:
        worker.stop()
    served = [ids[pk] for pk in done.order_by("started_at").values_list("pk", flat=True)]
    assert served == sorted(priorities, reverse=True)
