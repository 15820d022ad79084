"""Outbound requests a user aims (builtin.http, later webhooks): checked after resolution."""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from tasks_app import outbound
from tasks_app.execution import execute
from tasks_app.lifecycle import RunState
from tasks_app.models import Run

S = RunState


class _Echo(BaseHTTPRequestHandler):
    seen: list[tuple[str, str | None]] = []

    def do_GET(self) -> None:
        _Echo.seen.append((self.path, self.headers.get("Host")))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def port() -> Iterator[int]:
    server = HTTPServer(("127.0.0.1", 0), _Echo)
    _Echo.seen = []
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "172.16.0.9", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
     "224.0.0.251", "255.255.255.255", "::1", "fe80::1", "fc00::1", "::ffff:127.0.0.1", "ff02::1", "::",
     "64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::1", "::7f00:1", "2001:0:4136:e378:8000:63bf:f5ff:fffe"],
)  # fmt: skip
def test_non_public_addresses_are_refused_unless_the_allowlist_names_them(address) -> None:
    with pytest.raises(PermissionError, match="non-public"):
        outbound.Allowlist.parse(["example.org"]).check_address("example.org", ipaddress.ip_address(address))
    network = "0.0.0.0/0" if "." in address or address.startswith("::ffff") else "::/0"
    outbound.Allowlist.parse([network]).check_address("example.org", ipaddress.ip_address(address))


def test_public_addresses_pass() -> None:
    for address in ("93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"):
        outbound.Allowlist.parse([]).check_address("example.org", ipaddress.ip_address(address))


def test_a_name_that_resolves_to_loopback_is_refused_though_allowed_by_name(port) -> None:
    with pytest.raises(PermissionError, match="resolves to"):
        outbound.request("GET", f"http://localhost:{port}/", allowed=[f"localhost:{port}"])
    assert _Echo.seen == []


def test_naming_the_address_allows_it(port) -> None:
    allowed = [f"localhost:{port}", "127.0.0.0/8", "::1"]
    status, _headers, body = outbound.request("GET", f"http://localhost:{port}/x?y=1", allowed=allowed)
    assert (status, body) == (200, b"ok")
    assert _Echo.seen == [("/x?y=1", f"localhost:{port}")]


@pytest.mark.parametrize("service", [6379, 3306])
def test_a_port_other_than_80_and_443_needs_its_own_entry(service) -> None:
    # The platform's own Redis and MariaDB answered with their banners in the run's error.
    with pytest.raises(PermissionError, match=f"port {service}") as refused:
        outbound.request("GET", f"http://127.0.0.1:{service}/", allowed=["127.0.0.1"])
    assert "redis" not in str(refused.value).lower() and "mariadb" not in str(refused.value).lower()


def test_a_host_header_override_is_refused(port) -> None:
    with pytest.raises(PermissionError, match="Host header"):
        outbound.request("GET", f"http://127.0.0.1:{port}/", allowed=[f"127.0.0.1:{port}"],
                         headers={"host": "internal.example"})  # fmt: skip
    assert _Echo.seen == []


def test_a_url_with_a_password_is_refused_without_repeating_it(port) -> None:
    with pytest.raises(PermissionError) as refused:
        outbound.request("GET", f"http://admin:hunter2@127.0.0.1:{port}/", allowed=[f"127.0.0.1:{port}"])
    assert "hunter2" not in str(refused.value)
    assert _Echo.seen == []


def test_the_connection_goes_to_the_address_that_was_checked(port, monkeypatch) -> None:
    # One lookup per request: a second one, at connect time, could answer otherwise (rebinding).
    lookups: list[str] = []
    real = socket.getaddrinfo

    def counted(host: str, *args: Any, **kwargs: Any) -> Any:
        lookups.append(host)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", counted)
    outbound.request("GET", f"http://localhost:{port}/", allowed=[f"localhost:{port}", "127.0.0.1", "::1"])
    assert lookups[0] == "localhost"
    assert all(ipaddress.ip_address(host) for host in lookups[1:])  # connects by address only


@pytest.mark.parametrize(
    ("entries", "host", "port", "allowed"),
    [
        (["example.org"], "example.org", 443, True),
        (["example.org"], "example.org", 8443, False),
        (["example.org:8443"], "example.org", 8443, True),
        (["EXAMPLE.org"], "example.org", 80, True),
        (["example.org"], "api.example.org", 443, False),
        (["10.0.0.0/8"], "10.2.3.4", 80, True),
        (["10.0.0.0/8"], "11.0.0.1", 80, False),
        (["[::1]:8080"], "::1", 8080, True),
        (["127.0.0.1:9000"], "127.0.0.1", 9001, False),
    ],
)
def test_allowlist_entries(entries, host, port, allowed) -> None:
    allowlist = outbound.Allowlist.parse(entries)
    if allowed:
        allowlist.check_host(host, port)
    else:
        with pytest.raises(PermissionError):
            allowlist.check_host(host, port)


def test_builtin_http_keeps_the_password_out_of_the_run(make_task, make_run, port, settings) -> None:
    settings.BUILTIN_HTTP_ALLOWED_HOSTS = [f"127.0.0.1:{port}"]
    run = make_run(
        make_task(handler="builtin.http"), S.PENDING, kwargs={"url": f"http://u:s3cret@127.0.0.1:{port}/"}
    )
    execute(run.pk, 1, hostname="w1")
    run = Run.objects.get(pk=run.pk)
    assert (run.state, run.error["type"]) == (S.FAILED, "PermissionError")
    assert "s3cret" not in str(run.error)
    assert not any("s3cret" in line for line in run.logs.values_list("message", flat=True))


def test_builtin_http_logs_no_query_string(make_task, make_run, port, settings) -> None:
    settings.BUILTIN_HTTP_ALLOWED_HOSTS = [f"127.0.0.1:{port}"]
    run = make_run(
        make_task(handler="builtin.http"), S.PENDING, kwargs={"url": f"http://127.0.0.1:{port}/?token=t0k"}
    )
    execute(run.pk, 1, hostname="w1")
    assert Run.objects.get(pk=run.pk).state == S.COMPLETED
    assert not any(
        "t0k" in line for line in Run.objects.get(pk=run.pk).logs.values_list("message", flat=True)
    )
