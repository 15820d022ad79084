"""Faults in the platform's own services and processes, injected into servers started for
these tests alone: a MariaDB and a Redis of their own, and a RabbitMQ where that is the broker
(each test runs on both brokers, but for Redis's own faults), with web, worker and beat
processes pointed at them, so stopping or flushing them touches nothing else. Runs are counted by the
handler `tests.record`, which writes one row under each run's id: a run executed twice
shows `times` = 2. Each test reports what it injected and what it counted in the run's output.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kombu
import MySQLdb
import pytest
import redis
from django.conf import settings

from tests.conftest import wait_until
from tests.integration.conftest import ROOT, Process, process_env

pytestmark = pytest.mark.integration
FINISHED = ("completed", "failed", "cancelled", "skipped")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def program(name: str) -> str:
    # Debian's rabbitmq-server in /usr/sbin runs the broker as its own user, in its own
    # directories; the script beside rabbitmqctl runs it as this one.
    places = [os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"]
    if name == "rabbitmq-server":
        places.insert(0, "/usr/lib/rabbitmq/bin")
    path = shutil.which(name, path=os.pathsep.join(places))
    if path is None:
        pytest.fail(f"{name} is not installed: these tests start a server of their own")
    return path


class Server:
    """A server of these tests' own, on a free port, its files under `root`; it can be stopped and
    started again (a new process on the same port and files)."""

    executable = ""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        self.starts = 0
        self.process: Process | None = None

    def arguments(self) -> list[str]:
        raise NotImplementedError

    def answers(self) -> bool:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def start(self) -> None:
        self.starts += 1
        name = f"{self.executable}-{self.starts}"
        self.process = Process(
            name,
            self.arguments(),
            self.environment(),
            self.root / f"{name}.log",
            command=[program(self.executable)],
        )
        wait_until(self.answers, timeout=30, what=f"{self.executable} to answer")

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()  # SIGTERM: a clean shutdown, as `systemctl stop` does


class MariaDB(Server):
    executable = "mariadbd"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.datadir = root / "mariadb"
        subprocess.run(
            [program("mariadb-install-db"), "--no-defaults", f"--datadir={self.datadir}",
             f"--user={getpass.getuser()}", "--auth-root-authentication-method=normal", "--skip-test-db"],
            check=True, capture_output=True,
        )  # fmt: skip

    def arguments(self) -> list[str]:
        return [
            "--no-defaults", f"--datadir={self.datadir}", f"--port={self.port}", "--bind-address=127.0.0.1",
            f"--socket={self.root / 'mariadb.sock'}", f"--pid-file={self.root / 'mariadb.pid'}",
            f"--user={getpass.getuser()}", "--innodb-buffer-pool-size=64M", "--skip-name-resolve",
        ]  # fmt: skip

    def answers(self) -> bool:
        try:
            self.query("SELECT 1", database=None)
        except MySQLdb.OperationalError:
            return False
        return True

    def query(self, sql: str, *params: Any, database: str | None = "platform") -> tuple[tuple[Any, ...], ...]:
        options = {"database": database} if database else {}
        connection = MySQLdb.connect(
            host="127.0.0.1", port=self.port, user="root", autocommit=True, **options
        )
        try:
            cursor = connection.cursor()
            cursor.execute(sql, params or None)
            return cursor.fetchall()
        finally:
            connection.close()


class Redis(Server):
    """Keeps nothing on disk: a restart starts it empty, as a flush leaves it."""

    executable = "redis-server"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.client = redis.Redis(port=self.port)

    def arguments(self) -> list[str]:
        return ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.root)]  # fmt: skip

    def answers(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.ConnectionError:
            return False


class RabbitMQ(Server):
    """A node of its own (name, ports, database, logs under `root`). Its queues are durable and
    its messages persistent: a restart keeps them."""

    executable = "rabbitmq-server"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.home = root / "rabbitmq"
        self.home.mkdir()
        (self.home / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
        (self.home / "env.conf").write_text("")
        self.dist_port = free_port()
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def arguments(self) -> list[str]:
        return []

    def environment(self) -> dict[str, str]:
        home = self.home
        return {
            **os.environ,
            "RABBITMQ_NODENAME": f"outages-{self.port}@localhost",
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONF_ENV_FILE": str(home / "env.conf"),  # not the machine's node's
            "RABBITMQ_CONFIG_FILE": str(home / "rabbitmq.conf"),
            "RABBITMQ_MNESIA_BASE": str(home / "mnesia"),
            "RABBITMQ_LOG_BASE": str(home / "log"),
            "RABBITMQ_PID_FILE": str(home / "pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(home / "plugins"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    def answers(self) -> bool:
        try:
            with kombu.Connection(self.url, connect_timeout=1) as connection:
                connection.connect()
        except OSError:
            return False
        return True

    def queued(self, queue: str) -> int:
        with kombu.Connection(self.url) as connection:
            return connection.default_channel.queue_declare(queue=queue, passive=True).message_count


@dataclass
class Platform:
    """Web, beat and workers against the servers above; `api()` speaks to it as a client would."""

    root: Path
    mariadb: MariaDB
    redis: Redis
    rabbitmq: RabbitMQ | None  # the broker, where not Redis
    env: dict[str, str]
    url: str
    token: str = ""
    processes: list[Process] = field(default_factory=list)

    def start(self, name: str, args: list[str], **options: Any) -> Process:
        process = Process(name, args, self.env, self.root / f"{name}.log", **options)
        self.processes.append(process)
        return process

    def worker(self, name: str, *, queue: str = "default", concurrency: int = 2) -> Process:
        process = self.start(
            name, ["worker", "-l", "info", "-c", str(concurrency), "-Q", queue, "-n", f"{name}@%h",
                   "--without-gossip", "--without-mingle"],
        )  # fmt: skip
        wait_until(
            lambda: self.mariadb.query("SELECT 1 FROM tasks_app_worker WHERE pid = %s", process.popen.pid),
            timeout=60,
            what=f"worker {name} to record itself",
        )
        return process

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        request = urllib.request.Request(
            self.url + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Token {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, text = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, text = error.code, error.read()
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text.decode(errors="replace")

    def task(self, name: str, **fields: Any) -> None:
        status, body = self.api("POST", "/api/v1/tasks/", {"name": name, "handler": "tests.record", **fields})
        assert status == 201, body

    def submit(self, task: str, count: int) -> list[int]:
        status, body = self.api("POST", "/api/v1/runs/bulk/", {"runs": [{"task": task}] * count})
        assert status == 201, body
        return [run["id"] for run in body]

    def queued(self, queue: str) -> int:
        """Messages waiting in `queue`, as its broker counts them."""
        if self.rabbitmq is not None:
            return self.rabbitmq.queued(queue)
        keys = self.redis.client.scan_iter(f"{settings.BROKER_KEY_PREFIX}{queue}*")
        return sum(self.redis.client.llen(key) for key in keys if self.redis.client.type(key) == b"list")

    def count(self, ids: list[int]) -> dict[str, Any]:
        """What became of the runs `ids`: states, and executions as the handler's rows show them."""
        marks = ", ".join(["%s"] * len(ids))
        rows = self.mariadb.query(  # dispatches: the column of Run.message_number
            f"SELECT id, state, dispatches FROM tasks_app_run WHERE id IN ({marks})", *ids
        )
        states = {pk: state for pk, state, _ in rows}
        times = dict(
            self.mariadb.query(f"SELECT run_id, times FROM support_execution WHERE run_id IN ({marks})", *ids)
        )
        return {
            "accepted": len(ids),
            "completed": sum(1 for pk in ids if states.get(pk) == "completed"),
            "duplicated": sum(1 for pk in ids if times.get(pk, 0) > 1),
            "lost": sum(1 for pk in ids if states.get(pk) != "completed" or pk not in times),
            "sent_again": sum(1 for _, _, message_number in rows if message_number > 1),
        }

    def executed(self, ids: list[int]) -> int:
        marks = ", ".join(["%s"] * len(ids))
        ((count,),) = self.mariadb.query(
            f"SELECT COUNT(*) FROM support_execution WHERE run_id IN ({marks})", *ids
        )
        return count

    def finished(self, ids: list[int]) -> bool:
        marks = ", ".join(["%s"] * len(ids))
        ((unfinished,),) = self.mariadb.query(
            f"SELECT COUNT(*) FROM tasks_app_run WHERE id IN ({marks}) AND state NOT IN %s", *ids, FINISHED
        )
        return unfinished == 0


@pytest.fixture(scope="module", params=["redis", "rabbitmq"])
def isolated(request: pytest.FixtureRequest, tmp_path_factory: Any) -> Iterator[Platform]:
    """The platform on servers of its own, its broker Redis or RabbitMQ (Redis keeps the locks)."""
    root = tmp_path_factory.mktemp(f"isolated-{request.param}")
    mariadb, redis_server, web_port = MariaDB(root), Redis(root), free_port()
    rabbitmq = RabbitMQ(root) if request.param == "rabbitmq" else None
    redis_url = f"redis://127.0.0.1:{redis_server.port}/0"
    env = {
        **process_env(),
        "DATABASE_URL": f"mysql://root@127.0.0.1:{mariadb.port}/platform",
        "REDIS_URL": redis_url,
        "BROKER_URL": rabbitmq.url if rabbitmq else redis_url,
        "SUBMIT_THROTTLE_RATE": "100000/min",
        "RUN_MAX_DELIVERIES": "3",
    }
    platform = Platform(root, mariadb, redis_server, rabbitmq, env, f"http://127.0.0.1:{web_port}")
    try:
        mariadb.start()
        mariadb.query("CREATE DATABASE platform", database=None)
        redis_server.start()
        if rabbitmq:
            rabbitmq.start()
        manage = [sys.executable, "manage.py"]
        subprocess.run([*manage, "migrate", "-v0"], cwd=ROOT, env=env, check=True)
        out = subprocess.run(
            [*manage, "bootstrap", "--credentials-file", str(root / "credentials.json")],
            cwd=ROOT, env=env, check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        platform.token = out.split("API token:")[1].split()[0]
        platform.start(
            "web", ["scheduler_site.wsgi", "-b", f"127.0.0.1:{web_port}", "-w", "2"],
            command=[sys.executable, "-m", "gunicorn"],
        )  # fmt: skip
        beat = platform.start("beat", ["beat", "-l", "info", "-s", str(root / "beat-schedule")])
        wait_until(lambda: _answers(platform.url + "/healthz"), timeout=60, what="the web process")
        wait_until(lambda: "beat: Starting" in beat.output(), timeout=60, what="beat to start")
        yield platform
    finally:
        for process in platform.processes:
            process.terminate()  # all at once: each may take seconds to shut down warm
        for process in platform.processes:
            process.stop()
        redis_server.stop()
        if rabbitmq:
            rabbitmq.stop()
        mariadb.stop()
        for process in platform.processes:
            sys.stderr.write(f"\n--- {process.name} log (tail) ---\n{process.output()[-3000:]}\n")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


def _counted(injected: str, counts: dict[str, Any], **more: Any) -> str:
    return f"injected: {injected}; counted: " + ", ".join(f"{k} {v}" for k, v in (counts | more).items())


def test_sigkill_of_a_worker_mid_runs_ends_each_run_completed_once(
    isolated: Platform, report: Callable[[str], None]
) -> None:
    isolated.task("fragile", queue="fragile", kwargs={"seconds": 2}, max_retries=2, retry_backoff=0.1,
                  retry_jitter=False)  # fmt: skip
    victim = isolated.worker("victim", queue="fragile")
    ids = isolated.submit("fragile", 6)

    def both_running() -> list[int] | None:
        rows = isolated.mariadb.query(
            "SELECT id FROM tasks_app_run WHERE state = 'running' AND worker LIKE 'victim@%%'"
        )
        return [pk for (pk,) in rows] if len(rows) == 2 else None

    killed = wait_until(both_running, timeout=30, what="the victim to run two")

    os.killpg(victim.popen.pid, signal.SIGKILL)  # the main process and its pool, mid-run
    isolated.worker("rescuer", queue="fragile")

    wait_until(lambda: isolated.finished(ids), timeout=90, what="every run to finish")
    counts = isolated.count(ids)
    reasons = isolated.mariadb.query(
        "SELECT run_id, reason FROM tasks_app_runevent WHERE to_state = 'retrying' AND run_id IN (%s, %s)",
        *killed,
    )
    report(_counted("SIGKILL of worker victim while it ran 2 of 6 runs", counts, moved_on=len(reasons)))
    assert (counts["completed"], counts["duplicated"], counts["lost"]) == (6, 0, 0)
    assert sorted(pk for pk, _ in reasons) == sorted(killed)
    assert all(reason.startswith("worker lost; retry 1 of 2") for _, reason in reasons)
    finished_by = isolated.mariadb.query(
        "SELECT attempt, worker FROM tasks_app_run WHERE id IN (%s, %s)", *killed
    )
    assert all(attempt == 2 and worker.startswith("rescuer@") for attempt, worker in finished_by)


def test_sigkill_of_a_pool_process_moves_its_run_on_while_the_worker_lives(
    isolated: Platform, report: Callable[[str], None]
) -> None:
    isolated.task("orphaned", queue="orphaned", kwargs={"seconds": 2}, max_retries=2, retry_backoff=0.1,
                  retry_jitter=False)  # fmt: skip
    worker = isolated.worker("parent", queue="orphaned", concurrency=1)
    (run,) = isolated.submit("orphaned", 1)
    running = "SELECT 1 FROM tasks_app_run WHERE id = %s AND state = 'running'"
    wait_until(lambda: isolated.mariadb.query(running, run), timeout=30, what="the run to start")

    (child,) = Path(f"/proc/{worker.popen.pid}/task/{worker.popen.pid}/children").read_text().split()
    os.kill(int(child), signal.SIGKILL)  # the pool process only: the worker replaces it and heartbeats on

    wait_until(lambda: isolated.finished([run]), timeout=60, what="the run to finish")
    counts = isolated.count([run])
    ((reason,),) = isolated.mariadb.query(
        "SELECT reason FROM tasks_app_runevent WHERE run_id = %s AND to_state = 'retrying'", run
    )
    ((attempt, ran_on),) = isolated.mariadb.query(
        "SELECT attempt, worker FROM tasks_app_run WHERE id = %s", run
    )
    report(_counted("SIGKILL of the pool process running the run", counts, moved_on=reason, attempts=attempt))
    assert (counts["completed"], counts["duplicated"], counts["lost"]) == (1, 0, 0)
    assert reason.startswith("worker lost; retry 1 of 2")
    assert attempt == 2 and ran_on.startswith("parent@") and worker.popen.poll() is None  # it lived on


def test_a_run_that_keeps_killing_its_pool_process_fails_after_run_max_deliveries(
    isolated: Platform, report: Callable[[str], None]
) -> None:
    status, body = isolated.api("POST", "/api/v1/tasks/", {"name": "poison", "handler": "tests.die",
                                "queue": "poison", "max_retries": 10, "retry_backoff": 0.1})  # fmt: skip
    assert status == 201, body
    worker = isolated.worker("poisoned", queue="poison", concurrency=1)
    (run,) = isolated.submit("poison", 1)

    wait_until(lambda: isolated.finished([run]), timeout=90, what="the run to be given up")
    ((state, attempt, reason),) = isolated.mariadb.query(
        "SELECT r.state, r.attempt, e.reason FROM tasks_app_run r"
        " JOIN tasks_app_runevent e ON e.run_id = r.id WHERE r.id = %s ORDER BY e.id DESC LIMIT 1",
        run,
    )
    report(_counted("a handler that SIGKILLs its pool process on every attempt (max_retries 10)", {},
            state=state, attempts=attempt, reason=reason))  # fmt: skip
    max_deliveries = int(isolated.env["RUN_MAX_DELIVERIES"])
    assert (state, attempt) == ("failed", max_deliveries)
    assert reason == f"worker lost {max_deliveries} times: not sent again"
    assert worker.popen.poll() is None  # the worker itself lived through it


def _under_way(platform: Platform, name: str, count: int) -> list[int]:
    """`count` short runs of a task `name` for a worker of their own, a few of them done already."""
    platform.task(name, queue=name, kwargs={"seconds": 0.1})
    platform.worker(name, queue=name)
    ids = platform.submit(name, count)
    wait_until(lambda: platform.executed(ids) >= 4, timeout=30, what="a few runs to complete")
    return ids


@pytest.mark.parametrize("isolated", ["redis"], indirect=True)  # Redis as the broker
def test_redis_flush_with_runs_pending_loses_none(isolated: Platform, report: Callable[[str], None]) -> None:
    ids = _under_way(isolated, "flushed", 60)

    queued = isolated.queued("flushed")
    isolated.redis.client.flushall()  # every queued message, the unacknowledged ones, kombu's bindings

    wait_until(lambda: isolated.finished(ids), timeout=90, what="every run to finish")
    counts = isolated.count(ids)
    report(_counted(f"FLUSHALL of Redis with {queued} messages queued", counts))
    assert queued > 0 and counts["sent_again"] >= queued
    assert (counts["completed"], counts["duplicated"], counts["lost"]) == (60, 0, 0)


@pytest.mark.parametrize("isolated", ["redis"], indirect=True)  # Redis as the broker
def test_redis_restart_with_runs_queued_answers_503_meanwhile_and_loses_none(
    isolated: Platform, report: Callable[[str], None]
) -> None:
    ids = _under_way(isolated, "restarted", 40)

    queued = isolated.queued("restarted")
    isolated.redis.stop()  # it keeps nothing on disk: it comes back empty
    refused = isolated.api("POST", "/api/v1/runs/", {"task": "restarted"})
    ready = isolated.api("GET", "/readyz")
    isolated.redis.start()
    # Submissions are accepted again once the web processes have reconnected.
    later = wait_until(
        lambda: _submitted(isolated, "restarted", 5), timeout=30, what="submissions to succeed"
    )

    wait_until(lambda: isolated.finished(ids + later), timeout=90, what="every run to finish")
    counts = isolated.count(ids + later)
    report(_counted(f"Redis stopped and started empty with {queued} messages queued", counts,
            submit_while_down=refused[0], readyz_while_down=ready[0]))  # fmt: skip
    assert queued > 0 and refused == (503, {"detail": "The broker is unreachable; try again shortly."})
    assert ready[0] == 503 and ready[1]["broker"] != "ok"
    assert (counts["completed"], counts["duplicated"], counts["lost"]) == (45, 0, 0)


@pytest.mark.parametrize("isolated", ["rabbitmq"], indirect=True)
def test_rabbitmq_restart_with_runs_queued_accepts_meanwhile_and_loses_none(
    isolated: Platform, report: Callable[[str], None]
) -> None:
    assert isolated.rabbitmq is not None
    ids = _under_way(isolated, "bounced", 40)

    queued = isolated.queued("bounced")
    isolated.rabbitmq.stop()  # a clean shutdown: durable queues, persistent messages
    # Accepted while it is down: the run is recorded pending, and its message sent once it is back.
    accepted = isolated.api("POST", "/api/v1/runs/", {"task": "bounced"})
    ready = isolated.api("GET", "/readyz")
    isolated.rabbitmq.start()
    later = wait_until(lambda: _submitted(isolated, "bounced", 4), timeout=30, what="submissions")

    everything = [*ids, accepted[1]["id"], *later]
    wait_until(lambda: isolated.finished(everything), timeout=90, what="every run to finish")
    counts = isolated.count(everything)
    report(_counted(f"RabbitMQ stopped and started again with {queued} messages queued", counts,
            submit_while_down=accepted[0], readyz_while_down=ready[0]))  # fmt: skip
    assert queued > 0 and accepted[0] == 201
    assert ready[0] == 503 and ready[1]["broker"] != "ok" and ready[1]["redis"] == "ok"
    assert (counts["completed"], counts["duplicated"], counts["lost"]) == (45, 0, 0)


def _submitted(platform: Platform, task: str, count: int) -> list[int] | None:
    status, body = platform.api("POST", "/api/v1/runs/bulk/", {"runs": [{"task": task}] * count})
    return [run["id"] for run in body] if status == 201 else None


class Load(threading.Thread):
    """Submits runs one after another over the API, keeping every answer: (status, run id or None)."""

    def __init__(self, platform: Platform, task: str) -> None:
        super().__init__(name="load", daemon=True)
        self.platform, self.task = platform, task
        self.answers: list[tuple[int, Any]] = []
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.02):  # pacing the load, about 30 submissions a second
            try:
                status, body = self.platform.api("POST", "/api/v1/runs/", {"task": self.task})
            except OSError as exc:  # no answer at all
                status, body = 0, str(exc)
            self.answers.append((status, body))

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=60)

    def since(self, mark: int, status: int) -> int:
        return sum(1 for answer, _ in self.answers[mark:] if answer == status)

    def accepted(self) -> list[int]:
        return [body["id"] for status, body in self.answers if status == 201]


def test_mariadb_stop_and_start_under_load_answers_503_and_loses_no_accepted_run(
    isolated: Platform, report: Callable[[str], None]
) -> None:
    isolated.task("steady", queue="steady", kwargs={"seconds": 0.3}, max_retries=5, retry_backoff=0.2,
                  retry_jitter=False)  # fmt: skip
    worker = isolated.worker("steady", queue="steady")
    beat = next(process for process in isolated.processes if process.name == "beat")
    load = Load(isolated, "steady")
    load.start()
    try:
        wait_until(lambda: load.since(0, 201) >= 40, timeout=60, what="the load to get going")
        stopped = len(load.answers)
        isolated.mariadb.stop()  # a clean shutdown, as `systemctl stop mariadb` does
        down_at = time.monotonic()
        # Down until every process has met the outage: the API, the worker, beat.
        wait_until(lambda: load.since(stopped, 503) >= 100, timeout=60, what="503s while MariaDB is down")
        wait_until(
            lambda: "database unreachable, trying again" in worker.output(), timeout=60, what="the worker"
        )
        wait_until(lambda: "database unreachable" in beat.output(), timeout=60, what="beat")
        ready = isolated.api("GET", "/readyz")
        isolated.mariadb.start()
        outage = time.monotonic() - down_at
        restarted = len(load.answers)
        wait_until(lambda: load.since(restarted, 201) >= 40, timeout=60, what="submissions to succeed again")
    finally:
        load.stop()

    accepted = load.accepted()
    wait_until(lambda: isolated.finished(accepted), timeout=120, what="every accepted run to finish")
    counts = isolated.count(accepted)
    statuses = Counter(status for status, _ in load.answers)
    refusals = [body for status, body in load.answers if status == 503]
    report(_counted("MariaDB stopped and started again under a steady load of submissions", counts,
            answers=dict(statuses), readyz_while_down=ready[0], outage_seconds=round(outage, 1)))  # fmt: skip
    assert set(statuses) == {201, 503}, statuses  # no 500, no request left unanswered
    assert all(set(body) == {"detail"} and "Traceback" not in body["detail"] for body in refusals)
    assert ready[0] == 503 and ready[1]["database"] != "ok"
    assert (counts["completed"], counts["duplicated"], counts["lost"]) == (len(accepted), 0, 0)
