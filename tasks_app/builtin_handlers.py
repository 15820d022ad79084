"""The handlers every installation has."""

from __future__ import annotations

import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from django.conf import settings

from tasks_app.handlers import RunContext, handler

HTTP_BODY_LIMIT = 64 * 1024


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
    return {"slept": seconds}


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A redirect could lead outside the allowed hosts: report it instead of following.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


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
    """Makes one HTTP request to a host in BUILTIN_HTTP_ALLOWED_HOSTS; fails on an unexpected status."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in {"http", "https"}:
        raise ValueError(f"url must be http or https, got {parsed.scheme!r}")
    host = (parsed.hostname or "").lower()
    if host not in {h.lower() for h in settings.BUILTIN_HTTP_ALLOWED_HOSTS}:
        raise PermissionError(f"host {host!r} is not in BUILTIN_HTTP_ALLOWED_HOSTS")
    data = body.encode() if isinstance(body, str) else None
    request = urllib.request.Request(url, data=data, headers=headers or {}, method=method.upper())
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=float(timeout)) as response:
            status, reply_headers, content = response.status, response.headers, response.read(HTTP_BODY_LIMIT)
    except urllib.error.HTTPError as exc:
        status, reply_headers, content = exc.code, exc.headers, exc.read(HTTP_BODY_LIMIT)
    expected = expect_status if expect_status is not None else list(range(200, 300))
    expected = [expected] if isinstance(expected, int) else expected
    ctx.logger.info("%s %s -> %s", method.upper(), url, status)
    if status not in expected:
        raise RuntimeError(f"{method.upper()} {url} answered {status}, expected {expect_status or '2xx'}")
    return {
        "status": status,
        "headers": dict(reply_headers.items()),
        "body": content.decode("utf-8", errors="replace"),
    }


@handler("builtin.flaky")
def flaky(ctx: RunContext, fail_times: int = 1, **kwargs: Any) -> dict[str, Any]:
    """Raises on the first `fail_times` attempts, then succeeds: for trying retries and backoff."""
    if ctx.attempt <= int(fail_times):
        raise RuntimeError(f"flaky: attempt {ctx.attempt} of the first {fail_times} fails")
    return {"attempt": ctx.attempt}
