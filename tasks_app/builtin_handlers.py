"""The handlers every installation has."""

from __future__ import annotations

import time
import urllib.parse
from typing import Any

from django.conf import settings

from tasks_app import outbound
from tasks_app.handlers import RunContext, handler

HTTP_BODY_LIMIT = 64 * 1024
HTTP_TIMEOUT_MAX = 300


@handler("builtin.noop")
def noop(ctx: RunContext, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Does nothing; returns its kwargs and its upstream steps' results by key."""
    return {"kwargs": kwargs, "upstream": ctx.upstream}


@handler("builtin.sleep", pausable=True)
def sleep(ctx: RunContext, seconds: float = 1) -> dict[str, Any]:
    """Sleeps `seconds`, taking a checkpoint each second so it can be paused and resumed."""
    seconds = float(seconds)
    if seconds < 0:
        raise ValueError("seconds must not be negative")
    saved = ctx.saved_checkpoint or {}
    remaining = float(saved.get("remaining", seconds))
    if saved:
        ctx.logger.info("resuming with %.1fs of %.1fs left", remaining, seconds)
    while remaining > 0:
        step = min(1.0, remaining)
        time.sleep(step)
        remaining = round(remaining - step, 6)
        ctx.checkpoint({"remaining": remaining})
        ctx.progress((seconds - remaining) / seconds if seconds else 1.0, f"{remaining:.1f}s left")
        ctx.logger.info("slept %.1fs of %.1fs", seconds - remaining, seconds)
    return {"slept": seconds}


@handler("builtin.http")
def http(
    ctx: RunContext,
    url: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: str | None = None,
    timeout: float = 10,
    expect_status: int | list[int] | None = None,
) -> dict[str, Any]:
    """Makes one HTTP request to a host in BUILTIN_HTTP_ALLOWED_HOSTS; fails on an unexpected status.

    Only public addresses, ports 80 and 443, no Host override and no redirects followed,
    unless the allowlist names the address, network or port (tasks_app.outbound)."""
    timeout = float(timeout)
    if not 0 < timeout <= HTTP_TIMEOUT_MAX:
        raise ValueError(f"timeout must be more than 0 and at most {HTTP_TIMEOUT_MAX} seconds")
    data = body.encode() if isinstance(body, str) else None
    status, reply_headers, content = outbound.request(
        method, url, allowed=settings.BUILTIN_HTTP_ALLOWED_HOSTS, headers=headers, body=data,
        timeout=timeout, limit=HTTP_BODY_LIMIT,
    )  # fmt: skip
    expected = expect_status if expect_status is not None else list(range(200, 300))
    expected = [expected] if isinstance(expected, int) else expected
    where = _without_query(url)  # a query may carry a token: not into logs every user reads
    ctx.logger.info("%s %s -> %s", method.upper(), where, status)
    if status not in expected:
        raise RuntimeError(f"{method.upper()} {where} answered {status}, expected {expect_status or '2xx'}")
    return {"status": status, "headers": reply_headers, "body": content.decode("utf-8", errors="replace")}


def _without_query(url: str) -> str:
    parts = urllib.parse.urlsplit(url)  # no user:password: outbound refused those
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


@handler("builtin.flaky")
def flaky(ctx: RunContext, fail_times: int = 1, **kwargs: Any) -> dict[str, Any]:
    """Raises on the first `fail_times` attempts, then succeeds: for trying retries and backoff."""
    if ctx.attempt <= int(fail_times):
        raise RuntimeError(f"flaky: attempt {ctx.attempt} of the first {fail_times} fails")
    return {"attempt": ctx.attempt}
