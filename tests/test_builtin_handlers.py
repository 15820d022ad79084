from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from tasks_app import handlers
from tasks_app.execution import execute
from tasks_app.lifecycle import RunState
from tasks_app.models import Run

S = RunState


class _Handler(BaseHTTPRequestHandler):
    hits: list[tuple[str, str, bytes]] = []

    def _reply(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        _Handler.hits.append((self.command, self.path, self.rfile.read(length)))
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "http://example.org/")
            self.end_headers()
            return
        status = 404 if self.path == "/missing" else 200
        body = b'{"ok": true}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _reply

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def local_server(settings) -> Iterator[str]:
    """An HTTP server on loopback, the one host builtin.http is allowed to reach."""
    server = HTTPServer(("127.0.0.1", 0), _Handler)
    _Handler.hits = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    settings.BUILTIN_HTTP_ALLOWED_HOSTS = [f"127.0.0.1:{server.server_address[1]}"]
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def run_http(make_task, make_run, **kwargs: Any) -> Run:
    run = make_run(make_task(handler="builtin.http"), S.PENDING, kwargs=kwargs)
    execute(run.pk, 1, hostname="w1")
    run.refresh_from_db()
    return run


def test_the_four_builtins_are_registered() -> None:
    names = {h.name for h in handlers.all_handlers()}
    assert {"builtin.noop", "builtin.sleep", "builtin.http", "builtin.flaky"} <= names


def test_http_request_to_an_allowed_host(make_task, make_run, local_server) -> None:
    run = run_http(make_task, make_run, url=f"{local_server}/hook", method="POST", body="hi")

    assert run.state == S.COMPLETED, run.error
    assert run.result["status"] == 200
    assert run.result["body"] == '{"ok": true}'
    assert _Handler.hits == [("POST", "/hook", b"hi")]


def test_http_to_a_host_not_allowed_is_refused_before_any_request(make_task, make_run, local_server) -> None:
    run = run_http(make_task, make_run, url=local_server.replace("127.0.0.1", "localhost") + "/x")

    assert run.state == S.FAILED
    assert run.error["type"] == "PermissionError"
    assert _Handler.hits == []


def test_http_allows_nothing_by_default(make_task, make_run, local_server, settings) -> None:
    settings.BUILTIN_HTTP_ALLOWED_HOSTS = []
    run = run_http(make_task, make_run, url=f"{local_server}/x")
    assert (run.state, run.error["type"]) == (S.FAILED, "PermissionError")
    assert _Handler.hits == []


def test_http_unexpected_status_fails_the_run(make_task, make_run, local_server) -> None:
    run = run_http(make_task, make_run, url=f"{local_server}/missing")
    assert run.state == S.FAILED
    assert "answered 404" in run.error["message"]


def test_http_expected_status_can_be_named(make_task, make_run, local_server) -> None:
    run = run_http(make_task, make_run, url=f"{local_server}/missing", expect_status=404)
    assert run.state == S.COMPLETED


def test_http_does_not_follow_redirects_out_of_the_allowed_hosts(make_task, make_run, local_server) -> None:
    run = run_http(make_task, make_run, url=f"{local_server}/redirect")
    assert run.state == S.FAILED
    assert "answered 302" in run.error["message"]


def test_http_refuses_other_schemes(make_task, make_run, local_server) -> None:
    run = run_http(make_task, make_run, url="file:///etc/passwd")
    assert (run.state, run.error["type"]) == (S.FAILED, "ValueError")


@pytest.mark.parametrize(
    ("fail_times", "attempt", "state"), [(2, 1, S.FAILED), (2, 3, S.COMPLETED), (0, 1, S.COMPLETED)]
)
def test_flaky_fails_its_first_attempts(make_task, make_run, fail_times, attempt, state) -> None:
    run = make_run(
        make_task(handler="builtin.flaky"), S.PENDING, attempt=attempt - 1, kwargs={"fail_times": fail_times}
    )
    execute(run.pk, 1, hostname="w1")
    assert Run.objects.get(pk=run.pk).state == state


def test_sleep_of_zero_seconds_completes(make_task, make_run) -> None:
    run = make_run(make_task(handler="builtin.sleep"), S.PENDING, kwargs={"seconds": 0})
    execute(run.pk, 1, hostname="w1")
    run.refresh_from_db()
    assert (run.state, run.result) == (S.COMPLETED, {"slept": 0.0})


def test_sleep_refuses_negative_seconds(make_task, make_run) -> None:
    run = make_run(make_task(handler="builtin.sleep"), S.PENDING, kwargs={"seconds": -1})
    execute(run.pk, 1, hostname="w1")
    assert Run.objects.get(pk=run.pk).error["type"] == "ValueError"
