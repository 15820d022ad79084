"""Workers on two hosts that see each other only through the broker and the database: each
its own node name and host, its own working directory, its own queue beside a shared one."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.db import connection

from tasks_app import submission
from tasks_app.lifecycle import RunState
from tasks_app.models import Run, Task, Worker
from tasks_app.submission import RunRequest
from tests.conftest import wait_until
from tests.integration.conftest import ROOT, Process, process_env

S = RunState
pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
HOSTS = {"east": "worker@host-east", "west": "worker@host-west"}


def start_host(name: str, home: Path) -> Process:
    """A worker of host `name`: its queue and the shared one, run from a directory of its own."""
    home.mkdir()
    env = {**process_env(), "PYTHONPATH": str(ROOT), "HOME": str(home), "TMPDIR": str(home)}
    return Process(
        f"host-{name}",
        ["worker", "-l", "info", "-c", "2", "-n", HOSTS[name], "-Q", f"{name},shared",
         "--without-gossip", "--without-mingle"],
        env,
        home / "worker.log",
        cwd=home,
    )  # fmt: skip


@pytest.fixture
def hosts(platform: dict[str, Process], tmp_path: Path) -> Iterator[dict[str, Process]]:
    # The table tests.record counts executions in (the workers have its app; this process not).
    manage = [sys.executable, "manage.py", "migrate", "support", "-v0"]
    subprocess.run(manage, cwd=ROOT, env=process_env(), check=True)
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM support_execution")
    started = {name: start_host(name, tmp_path / name) for name in HOSTS}
    try:
        for name, hostname in HOSTS.items():
            wait_until(
                lambda hostname=hostname: Worker.objects.filter(hostname=hostname, stopped_at=None).exists(),
                timeout=60,
                what=f"the worker of host {name} to record itself",
            )
        yield started
    finally:
        for process in started.values():
            process.stop()


def submit(task: Task, count: int, **kwargs: float) -> list[int]:
    return [submission.submit(RunRequest(task=task, kwargs=kwargs), by="tester")[0].pk for _ in range(count)]


def test_runs_execute_on_a_host_of_their_queue_and_a_stopped_hosts_runs_move_on(
    hosts, api, admin_client, report
) -> None:
    east, west, shared = (
        Task.objects.create(name=f"{queue}-work", handler="tests.record", queue=queue, max_retries=3,
                            retry_backoff=0.1, retry_jitter=False)
        for queue in ("east", "west", "shared")
    )  # fmt: skip
    routed = {"east": submit(east, 6), "west": submit(west, 6), "shared": submit(shared, 6)}
    everything = [pk for ids in routed.values() for pk in ids]
    done = Run.objects.filter(pk__in=everything, state=S.COMPLETED)
    wait_until(lambda: done.count() == len(everything), timeout=60, what="the routed runs to complete")

    ran_on = {
        queue: set(Run.objects.filter(pk__in=ids).values_list("worker", flat=True))
        for queue, ids in routed.items()
    }
    assert ran_on["east"] == {HOSTS["east"]} and ran_on["west"] == {HOSTS["west"]}
    assert ran_on["shared"] <= set(HOSTS.values())
    # The workers page: both hosts, their queues and capacity.
    listed = {w["hostname"]: w for w in api.get("/api/v1/workers/").data["results"]}
    for name, hostname in HOSTS.items():
        assert listed[hostname]["status"] == "online"
        assert sorted(listed[hostname]["queues"]) == sorted([name, "shared"])
        assert listed[hostname]["concurrency"] == 2
    page = admin_client.get("/admin/tasks_app/worker/").content.decode()  # the console's workers page
    for name, hostname in HOSTS.items():
        assert hostname in page and ", ".join(sorted([name, "shared"])) in page
    assert page.count(" / 2</span>") >= 2  # active of capacity, for each host

    # Host east stops abruptly while shared runs are under way: host west takes them on.
    slow = submit(shared, 8, seconds=1.5)
    running_east = Run.objects.filter(pk__in=slow, state=S.RUNNING, worker=HOSTS["east"])
    wait_until(lambda: running_east.exists(), timeout=30, what="host east to run a shared run")
    hosts["east"].kill()
    finished = Run.objects.filter(pk__in=slow, state=S.COMPLETED)
    wait_until(lambda: finished.count() == len(slow), timeout=90, what="the shared runs to complete")

    with connection.cursor() as cursor:
        marks = ", ".join(["%s"] * len(slow))
        cursor.execute(f"SELECT run_id, times FROM support_execution WHERE run_id IN ({marks})", slow)
        times = dict(cursor.fetchall())
    moved = Run.objects.filter(pk__in=slow, attempt__gt=1).count()
    last = set(Run.objects.filter(pk__in=slow, attempt__gt=1).values_list("worker", flat=True))
    duplicated = sum(count > 1 for count in times.values())
    report(
        f"injected: SIGKILL of host east's worker under 8 shared runs; counted: completed "
        f"{finished.count()}, executed {len(times)}, duplicated {duplicated}, moved on {moved} to {last}"
    )
    assert sorted(times) == sorted(slow) and set(times.values()) == {1}
    assert moved >= 1 and last == {HOSTS["west"]}
