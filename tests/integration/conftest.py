"""Real Celery worker and beat processes against the test database and Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings
from django.db import connections

from tests.conftest import wait_until

ROOT = Path(__file__).resolve().parents[2]
CELERY = [sys.executable, "-m", "celery", "-A", "scheduler_site"]


class Process:
    """A process of its own session (group), its output kept in `log`; celery's by default."""

    def __init__(
        self, name: str, args: list[str], env: dict[str, str], log: Path, *, command: list[str] = CELERY
    ) -> None:
        self.name, self.log = name, log
        self._file = log.open("wb")
        self.popen = subprocess.Popen(
            [*command, *args],
            cwd=ROOT,
            env=env,
            stdout=self._file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def terminate(self) -> None:
        """Ask it to stop (SIGTERM to its group), without waiting."""
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.terminate()
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        self._file.close()


def process_env() -> dict[str, str]:
    """Worker and beat settings for the tests: the test database, quick sweeps."""
    return {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "RUN_DISPATCH_INTERVAL": "0.1",
        "WORKER_HEARTBEAT_INTERVAL": "0.5",
        "WORKER_MISSED_HEARTBEATS": "2",
        "PENDING_RESEND_AFTER": "2",
        "EXTRA_INSTALLED_APPS": "tests.support",
    }


def _database_url() -> str:
    db = connections["default"].settings_dict
    password = f":{db['PASSWORD']}" if db["PASSWORD"] else ""
    return f"mysql://{db['USER']}{password}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 3306}/{db['NAME']}"


@pytest.fixture(scope="session")
def platform(
    django_db_setup: Any, django_db_blocker: Any, tmp_path_factory: Any
) -> Iterator[dict[str, Process]]:
    """A worker (prefork, 2 processes) and a beat, started once for the session."""
    redis.Redis.from_url(settings.REDIS_URL).flushdb()
    logs = tmp_path_factory.mktemp("processes")
    env = process_env()
    processes = {
        "worker": Process(
            "worker",
            ["worker", "-l", "info", "-c", "2", "-n", "itest@%h", "--without-gossip", "--without-mingle"],
            env,
            logs / "worker.log",
        ),
        "beat": Process(
            "beat", ["beat", "-l", "info", "-s", str(logs / "beat-schedule")], env, logs / "beat.log"
        ),
    }
    try:
        from scheduler_site.celery import app

        wait_until(lambda: app.control.ping(timeout=0.5), timeout=60, what="the worker to answer a ping")
        wait_until(lambda: "beat: Starting" in processes["beat"].output(), timeout=60, what="beat to start")
        yield processes
    finally:
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            process.stop()
        for process in processes.values():
            sys.stderr.write(f"\n--- {process.name} log (tail) ---\n{process.output()[-3000:]}\n")


@pytest.fixture
def report(capsys: pytest.CaptureFixture[str]) -> Callable[[str], None]:
    """Writes a line into the test run's output even when the test passes: what a fault
    test injected and what it counted belongs in CI's log."""

    def write(line: str) -> None:
        with capsys.disabled():
            sys.stdout.write(f"\n{line}\n")

    return write
