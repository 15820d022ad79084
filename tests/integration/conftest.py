"""Real Celery worker and beat processes against the test database and Redis, and the local
receivers alerts are delivered to (an HTTP server for webhooks, an SMTP server for e-mail)."""

from __future__ import annotations

import email
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings
from django.db import connections

from tests.conftest import wait_until

ROOT = Path(__file__).resolve().parents[2]
CELERY = [sys.executable, "-m", "celery", "-A", "scheduler_site"]
# What a celery process logs once it is up, by its subcommand.
READY = {"worker": " ready.", "beat": "beat: Starting"}


class Process:
    """A process of its own session (group), its output kept in `log`; celery's by default."""

    def __init__(
        self,
        name: str,
        args: list[str],
        env: dict[str, str],
        log: Path,
        *,
        command: list[str] = CELERY,
        append: bool = False,
        cwd: Path = ROOT,
    ) -> None:
        self.name, self.args, self.env, self.log, self.command, self.cwd = name, args, env, log, command, cwd
        self._file = log.open("ab" if append else "wb")
        self.popen = subprocess.Popen(
            [*command, *args],
            cwd=cwd,
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

    def kill(self) -> None:
        """SIGKILL its group (the main process and its children, mid-whatever) and reap it."""
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()
        self._file.close()

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.terminate()
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        self._file.close()


def restart(platform: dict[str, Process], name: str, *, kill: bool = True) -> Process:
    """Replace the session's process `name` ("worker" or "beat") by a new one with its
    arguments, environment and log (appended to): SIGKILLed (or stopped), started again and
    waited for until it is up. Returns the new one, which the platform fixture stops."""
    old = platform[name]
    if kill:
        old.kill()
    else:
        old.stop()
    mark = len(old.output())
    new = Process(old.name, old.args, old.env, old.log, command=old.command, append=True, cwd=old.cwd)
    platform[name] = new
    ready = READY[old.args[0]]

    def up() -> bool:
        if new.popen.poll() is not None:
            raise AssertionError(f"{name} exited at start:\n{new.output()[mark:][-3000:]}")
        return ready in new.output()[mark:]

    wait_until(up, timeout=60, what=f"{name} to be up again")
    return new


# Alerts evaluated and delivered quickly; a lease longer than a delivery's timeout, as the
# settings demand.
ALERT_SETTINGS = {
    "ALERT_SWEEP_INTERVAL": "0.3",
    "ALERT_DELIVERY_INTERVAL": "0.1",
    "ALERT_DELIVERY_TIMEOUT": "2",
    "ALERT_DELIVERY_LEASE": "4",
    "ALERT_RETRY_BACKOFF": "0.2",
    "ALERT_RETRY_BACKOFF_MAX": "1",
}
# Where the receivers below listen, once their session fixtures (which the platform fixture
# waits for) started them: beat delivers alerts, so every process started from process_env()
# is told, not only the session's.
_alert_endpoints: dict[str, str] = {}


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
        **ALERT_SETTINGS,
        **_alert_endpoints,
    }


def _database_url() -> str:
    db = connections["default"].settings_dict
    password = f":{db['PASSWORD']}" if db["PASSWORD"] else ""
    return f"mysql://{db['USER']}{password}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 3306}/{db['NAME']}"


# --- the webhook receiver ------------------------------------------------------------

HOLD, DROP = "hold", "drop"  # answers besides a status: no answer for now, or none at all
Answer = int | str


@dataclass(frozen=True)
class Received:
    """One request as it arrived."""

    method: str
    path: str
    headers: Message  # case-insensitive
    body: bytes
    at: float  # time.monotonic()

    @property
    def delivery(self) -> str:
        return self.headers.get("X-Scheduler-Delivery", "")

    def json(self) -> Any:
        return json.loads(self.body)


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # a client gone before its answer is not news
            super().handle_error(request, client_address)


class WebhookReceiver:
    """A local HTTP server that records every request, on one port for the session. It answers
    200 unless a test says otherwise (`answer_with`): another status, HOLD (no answer until
    `release()`, at most HOLD_MAX s) or DROP (the connection closed without one). `stop()`
    closes the port (connections are refused); `start()` opens it again."""

    HOLD_MAX = 60.0

    def __init__(self) -> None:
        self.port = 0
        self._lock = threading.RLock()  # an answer may read what was received
        self._received: list[Received] = []
        self._answer: Callable[[Received], Answer] = lambda request: 200
        self._released = threading.Event()
        self._server: _Server | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        server = _Server(("127.0.0.1", self.port), self._handler())
        self.port = server.server_address[1]  # the first start picks it; every later one reuses it
        threading.Thread(target=server.serve_forever, name="webhook-receiver", daemon=True).start()
        self._server = server

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self.release()

    def answer_with(self, answer: Callable[[Received], Answer]) -> None:
        """Answer each request from now on with what `answer(request)` says (called one at a time)."""
        with self._lock:
            self._answer = answer

    def release(self) -> None:
        """Answer the held requests (200); later holds wait anew."""
        with self._lock:
            self._released.set()
            self._released = threading.Event()

    def reset(self) -> None:
        """Running, answering 200, nothing held, nothing recorded."""
        self.release()
        with self._lock:
            self._answer = lambda request: 200
            self._received.clear()
        if not self.running:
            self.start()

    def requests(self, path: str | None = None) -> list[Received]:
        """The requests received, in order of arrival (those to `path`, if given)."""
        with self._lock:
            return [r for r in self._received if path is None or r.path == path]

    def _arrived(self, request: Received) -> tuple[Answer, threading.Event]:
        with self._lock:
            self._received.append(request)
            return self._answer(request), self._released

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                answer, released = receiver._arrived(
                    Received(self.command, self.path, self.headers, body, time.monotonic())
                )
                if answer == HOLD:
                    released.wait(receiver.HOLD_MAX)
                    answer = 200
                if answer == DROP:
                    self.close_connection = True
                    return
                self.send_response(int(answer))
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_PUT = do_POST

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture(scope="session")
def webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    receiver.start()
    allowed = [host for host in os.environ.get("BUILTIN_HTTP_ALLOWED_HOSTS", "").split(",") if host.strip()]
    _alert_endpoints["BUILTIN_HTTP_ALLOWED_HOSTS"] = ",".join([*allowed, f"127.0.0.1:{receiver.port}"])
    try:
        yield receiver
    finally:
        _alert_endpoints.pop("BUILTIN_HTTP_ALLOWED_HOSTS", None)
        receiver.stop()


@pytest.fixture
def receiver(webhook_receiver: WebhookReceiver) -> Iterator[WebhookReceiver]:
    """The session's webhook receiver, running, answering 200, with nothing recorded; left so."""
    webhook_receiver.reset()
    yield webhook_receiver
    webhook_receiver.reset()


# --- the SMTP server -----------------------------------------------------------------


@dataclass(frozen=True)
class Mail:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    at: float  # time.monotonic()

    @property
    def message(self) -> Message:
        return email.message_from_bytes(self.content)


class SmtpServer:
    """An aiosmtpd server on a free local port that accepts and records every message."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self._lock = threading.Lock()
        self._mails: list[Mail] = []
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self._lock:
            self._mails.append(
                Mail(envelope.mail_from, list(envelope.rcpt_tos), envelope.content, time.monotonic())
            )
        return "250 Message accepted for delivery"

    def mails(self, to: str | None = None) -> list[Mail]:
        """The messages received, in order (those addressed to `to`, if given)."""
        with self._lock:
            return [m for m in self._mails if to is None or to in m.rcpt_tos]

    def clear(self) -> None:
        with self._lock:
            self._mails.clear()


@pytest.fixture(scope="session")
def smtp_server() -> Iterator[SmtpServer]:
    server = SmtpServer()
    server.controller.start()
    _alert_endpoints.update(EMAIL_HOST="127.0.0.1", EMAIL_PORT=str(server.port))
    try:
        yield server
    finally:
        _alert_endpoints.pop("EMAIL_HOST", None)
        _alert_endpoints.pop("EMAIL_PORT", None)
        server.controller.stop()


@pytest.fixture
def mailbox(smtp_server: SmtpServer) -> SmtpServer:
    """The session's SMTP server, with nothing recorded."""
    smtp_server.clear()
    return smtp_server


# --- the session's processes ---------------------------------------------------------


# Package-scoped: the worker and beat stop once the integration tests are done, so the unit
# tests that follow (some of which commit, and sweep as beat does) never race a real beat.
@pytest.fixture(scope="package")
def platform(
    django_db_setup: Any,
    django_db_blocker: Any,
    tmp_path_factory: Any,
    webhook_receiver: WebhookReceiver,
    smtp_server: SmtpServer,
) -> Iterator[dict[str, Process]]:
    """A worker (prefork, 2 processes) and a beat, started once for the integration tests, told where
    the receivers of alerts listen."""
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
