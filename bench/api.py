"""POST /api/v1/runs/ under gunicorn, beside a bare DRF create endpoint, in the same run.

gunicorn with 2 sync workers serves the endpoints (bench/api_settings.py adds the bare ones:
same token authentication and permissions, one INSERT; and the naive submit, that INSERT then
a Celery task's `.delay()` after the commit). At 1 and at 20 concurrent
keep-alive clients, each endpoint is timed: latency p50/p99 and requests/s. Then bulk
submission: 1,000 runs in one POST /api/v1/runs/bulk/ against the same 1,000 submitted one
POST each (one client; runs per second of each, BULK_ROUNDS rounds, the median). No Celery
worker runs: submitted runs wait in Redis, which is emptied afterwards.
Figures go to bench/results/api.json.

    .venv/bin/python bench/api.py [--requests 2000]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import REDIS_URL, RESULTS, ROOT, ensure_database, platform_env, wait_until, write_results

# The throttle still counts every run (its cost is measured); its limit is out of the way.
ENV = platform_env("bench.api_settings", SUBMIT_THROTTLE_RATE="100000000/min")
WORKERS = os.environ.get("BENCH_GUNICORN_WORKERS", "2")
ENDPOINTS = {
    "platform": ("/api/v1/runs/", {"task": "bench-noop", "kwargs": {"n": 1}}),
    "bare": ("/bench/bare/", {"payload": {"task": "bench-noop", "kwargs": {"n": 1}}}),
    # The naive submit issue 14 compares with: the bare create, then .delay() after the commit.
    "bare_delay": ("/bench/bare-delay/", {"payload": {"task": "bench-noop", "kwargs": {"n": 1}}}),
}


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prepare() -> str:
    """Migrate the benchmark database; return an API token of a superuser."""
    ensure_database()
    python = sys.executable
    subprocess.run([python, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=ENV, check=True)
    script = (
        "from django.contrib.auth.models import User;"
        "from rest_framework.authtoken.models import Token;"
        "from tasks_app.models import Task;"
        "Task.objects.get_or_create(name='bench-noop', defaults={'handler': 'builtin.noop'});"
        "u = User.objects.filter(username='bench').first() or "
        "User.objects.create_superuser('bench', password='bench-only-password');"
        "print(Token.objects.get_or_create(user=u)[0].key)"
    )
    done = subprocess.run(
        [python, "manage.py", "shell", "-c", script],
        cwd=ROOT,
        env=ENV,
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip().splitlines()[-1]


def client_loop(port: int, token: str, path: str, body: bytes, count: int, out: list[float]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}
    for _ in range(count):
        start = time.perf_counter()
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        if response.status != 201:
            raise SystemExit(f"{path} answered {response.status}")
        out.append(time.perf_counter() - start)
    conn.close()


def measure(port: int, token: str, endpoint: str, clients: int, requests: int) -> dict[str, Any]:
    path, payload = ENDPOINTS[endpoint]
    body = json.dumps(payload).encode()
    warm: list[float] = []
    client_loop(port, token, path, body, 50, warm)
    per_client = max(1, requests // clients)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    threads = [
        threading.Thread(target=client_loop, args=(port, token, path, body, per_client, latencies[i]))
        for i in range(clients)
    ]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    flat = sorted(x for lat in latencies for x in lat)
    return {
        "clients": clients,
        "requests": len(flat),
        "requests_per_s": round(len(flat) / elapsed, 1),
        "p50_ms": round(statistics.median(flat) * 1000, 2),
        "p99_ms": round(flat[int(len(flat) * 0.99) - 1] * 1000, 2),
    }


BULK = 1000
BULK_ROUNDS = 3


def measure_bulk(port: int, token: str) -> dict[str, Any]:
    """Runs per second of 1,000 runs in one bulk request, and of 1,000 single submits."""
    path, payload = ENDPOINTS["platform"]
    single = json.dumps(payload).encode()
    bulk = json.dumps({"runs": [payload] * BULK}).encode()
    headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}
    bulk_rates, single_rates = [], []
    for _ in range(BULK_ROUNDS):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        start = time.perf_counter()
        conn.request("POST", "/api/v1/runs/bulk/", body=bulk, headers=headers)
        response = conn.getresponse()
        if response.status != 201 or len(json.loads(response.read())) != BULK:
            raise SystemExit(f"the bulk submit answered {response.status}")
        bulk_rates.append(BULK / (time.perf_counter() - start))
        conn.close()
        singles: list[float] = []
        start = time.perf_counter()
        client_loop(port, token, path, single, BULK, singles)
        single_rates.append(BULK / (time.perf_counter() - start))
    bulk_rate, single_rate = statistics.median(bulk_rates), statistics.median(single_rates)
    return {
        "bulk_runs_per_s": round(bulk_rate, 1),
        "single_runs_per_s": round(single_rate, 1),
        "ratio": round(bulk_rate / single_rate, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--out", default=str(RESULTS / "api.json"))
    args = parser.parse_args()

    import redis

    token = prepare()
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "bench.api_settings_wsgi:application", "--workers", WORKERS,
         "--bind", f"127.0.0.1:{port}", "--log-level", "warning"],
        cwd=ROOT,
        env=ENV,
        start_new_session=True,
    )  # fmt: skip
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in ENDPOINTS}
    try:
        wait_until(lambda: _answers(port), 60, "gunicorn to start")
        for clients in (1, 20):
            requests = args.requests // 4 if clients == 1 else args.requests
            for endpoint in ENDPOINTS:  # alternate, so drift hits both alike
                figures = measure(port, token, endpoint, clients, requests)
                results[endpoint].append(figures)
                print(f"{endpoint:8s} {figures}", flush=True)
        bulk = measure_bulk(port, token)
        print(f"bulk     {bulk}", flush=True)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        redis.Redis.from_url(REDIS_URL).flushdb()

    def at(endpoint: str, clients: int) -> dict[str, Any]:
        return next(r for r in results[endpoint] if r["clients"] == clients)

    summary = {
        "server": f"gunicorn, {WORKERS} sync workers; persistent database connections",
        "results": results,
        "one_client_p50_ms": {name: at(name, 1)["p50_ms"] for name in ENDPOINTS},
        "twenty_clients_ratio_of_requests_per_s": at("platform", 20)["requests_per_s"]
        / at("bare", 20)["requests_per_s"],
        "twenty_clients_ratio_vs_bare_delay": at("platform", 20)["requests_per_s"]
        / at("bare_delay", 20)["requests_per_s"],
        "twenty_clients_p99_ratio_vs_bare_delay": at("platform", 20)["p99_ms"]
        / at("bare_delay", 20)["p99_ms"],
        "one_client_p50_ratio_vs_bare_delay": at("platform", 1)["p50_ms"] / at("bare_delay", 1)["p50_ms"],
        "bulk_of_1000_vs_1000_singles": bulk,
    }
    write_results(args.out, summary, {k: v for k, v in summary.items() if k != "results"})


if __name__ == "__main__":
    main()
