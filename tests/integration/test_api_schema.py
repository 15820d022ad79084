"""schemathesis against the live API, as an attacker would run it: its coverage, fuzzing and
stateful phases, seeded and bounded, over HTTP to gunicorn on the test database.

No answer may be a 5xx, fall outside the documented schema, or carry a status code the
schema does not document. Path parameters draw half the time from the objects that exist,
so detail pages and controls are reached, not only their 404s.
"""

from __future__ import annotations

import collections
import http.client
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from rest_framework.authtoken.models import Token

from tasks_app.lifecycle import RunState
from tasks_app.models import Run, Schedule, Task, Workflow, WorkflowRun
from tasks_app.workers import record_worker
from tests.conftest import wait_until
from tests.integration.conftest import ROOT, Process, process_env

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
S = RunState
SEED = 20261202
# Per operation, in the fuzzing and stateful phases: about 5,000 cases in all. A deeper run:
# SCHEMATHESIS_EXAMPLES=1000 scripts/test tests/integration/test_api_schema.py
EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "100"))
PHASES = "examples,coverage,fuzzing,stateful"
CHECKS = "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance"
STEP = {"key": "a", "task": "noop", "kwargs": {}, "depends_on": [], "trigger_rule": "all_success"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def seed_objects() -> dict[str, list[Any]]:
    """Objects of each kind in each state, so generated paths can name them."""
    noop = Task.objects.create(name="noop", handler="builtin.noop")
    Task.objects.create(name="sleepy", handler="builtin.sleep", concurrency_policy="forbid")
    runs = [
        Run.objects.create(task=noop, state=state, message_number=1, finished_at=at)
        for state, at in ((S.CREATED, None), (S.PENDING, None), (S.FAILED, "2026-01-01T00:00:00Z"),
                          (S.COMPLETED, "2026-01-01T00:00:00Z"), (S.PAUSED, None))
    ]  # fmt: skip
    schedules = [
        Schedule.objects.create(task=noop, cron="*/10 * * * * *", timezone="Europe/Berlin"),
        Schedule.objects.create(task=noop, interval_seconds=3600, enabled=False),
    ]
    workflow = Workflow.objects.create(name="flow", steps=[STEP])
    schedules.append(Schedule.objects.create(workflow=workflow, interval_seconds=600))
    workflow_run = WorkflowRun.objects.create(workflow=workflow, steps=[STEP], state="failed")
    Run.objects.create(
        task=noop, state=S.FAILED, workflow_run=workflow_run, step="a", finished_at=runs[2].finished_at
    )
    record_worker("w1@host", queues=["default"], concurrency=2)
    ids = sorted({r.pk for r in runs} | {s.pk for s in schedules} | {workflow_run.pk})
    return {"ids": ids, "names": ["noop", "sleepy", "flow"], "hostnames": ["w1@host"]}


def config_file(path: Path, known: dict[str, list[Any]]) -> Path:
    # No cache of earlier runs' failures: each run is the seed's alone.
    lines = ["[cache]\nenabled = false\n"]
    lines += [f"[dictionaries.{kind}]\nvalues = {json.dumps(values)}\n" for kind, values in known.items()]
    lines.append("[parameters]")
    for parameter, kind in (("id", "ids"), ("name", "names"), ("hostname", "hostnames")):
        lines.append(f'"path.{parameter}" = {{ dictionary = "{kind}", probability = 0.5 }}')
    path.write_text("\n".join(lines) + "\n")
    return path


def cases_by_phase(events: Path) -> dict[str, int]:
    counted: collections.Counter[str] = collections.Counter()
    for line in events.read_text().splitlines():
        event = json.loads(line)
        finished = event.get("ScenarioFinished")
        if finished:
            counted[finished["phase"]] += len((finished.get("recorder") or {}).get("cases") or {})
    return dict(counted)


@pytest.fixture
def web(tmp_path) -> Iterator[str]:
    """gunicorn on the test database; its base URL."""
    port = free_port()
    process = Process(
        "web",
        ["scheduler_site.wsgi", "-b", f"127.0.0.1:{port}", "-w", "2"],
        {**process_env(), "SUBMIT_THROTTLE_RATE": "1000000/min"},
        tmp_path / "web.log",
        command=[sys.executable, "-m", "gunicorn"],
    )
    try:
        wait_until(lambda: "Booting worker" in process.output(), timeout=60, what="gunicorn to start")
        yield f"http://127.0.0.1:{port}"
        assert "Traceback" not in process.output(), process.output()[-4000:]
    finally:
        process.stop()


def owner_token() -> str:
    owner = User.objects.create_user("owner", password="x")
    owner.user_permissions.set(Permission.objects.filter(content_type__app_label="tasks_app"))
    return Token.objects.create(user=owner).key


@pytest.mark.timeout(300 + EXAMPLES * 3)
def test_schemathesis_finds_no_server_error_and_no_answer_outside_the_schema(web, tmp_path, report) -> None:
    token = owner_token()
    known = seed_objects()
    schema = tmp_path / "schema.json"
    call_command("spectacular", "--file", str(schema), "--format", "openapi-json")
    config = config_file(tmp_path / "st.toml", known)
    command = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run", str(schema)]
    command += ["--url", web, "-H", f"Authorization: Token {token}"]
    command += ["--phases", PHASES, "--seed", str(SEED), "-n", str(EXAMPLES), "--checks", CHECKS]
    command += ["--report", "ndjson", "--report-ndjson-path", str(tmp_path / "events.ndjson")]
    command += ["--generation-database", "none", "--no-color", "--max-failures", "50"]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240 + EXAMPLES * 3)

    phases = cases_by_phase(tmp_path / "events.ndjson")
    summary = run.stdout[run.stdout.rfind("SUMMARY") :]
    report(f"schemathesis (seed {SEED}, {EXAMPLES} examples per operation): cases per phase {phases}, "
           f"in all {sum(phases.values())}; exit {run.returncode}")  # fmt: skip
    failures = run.stdout[run.stdout.find("FAILURES") : run.stdout.find("WARNINGS")]
    assert run.returncode == 0, failures[:8000] + summary + run.stderr[-2000:]
    assert {"coverage", "fuzzing", "stateful"} <= {phase for phase, count in phases.items() if count}, summary


def submit_with_keys(web: str, token: str, *keys: bytes) -> tuple[int, dict[str, Any]]:
    """POST /runs/ over HTTP with the Idempotency-Key header sent once per key, as raw bytes."""
    host, port = web.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    body = b'{"task": "noop"}'
    connection.putrequest("POST", "/api/v1/runs/")
    for name, value in (
        ("Authorization", f"Token {token}".encode()),
        ("Content-Type", b"application/json"),
        ("Content-Length", str(len(body)).encode()),
        *(("Idempotency-Key", k) for k in keys),
    ):
        connection.putheader(name, value)  # fmt: skip
    connection.endheaders(body)
    response = connection.getresponse()
    answer = json.loads(response.read())
    connection.close()
    return response.status, answer


def test_idempotency_keys_over_http_are_utf8_and_one(web) -> None:
    token = owner_token()
    Task.objects.create(name="noop", handler="builtin.noop")
    key = "clé-✓".encode()

    assert submit_with_keys(web, token, key)[0] == 201
    status, again = submit_with_keys(web, token, key)
    assert (status, again["idempotency_key"]) == (200, "clé-✓")
    status, twice = submit_with_keys(web, token, b"one", b"two")
    assert status == 400 and "one Idempotency-Key" in str(twice)
    assert submit_with_keys(web, token, b"\xff\xfe")[0] == 400
    assert Run.objects.count() == 1
