"""Handlers registered only in the test process."""

from __future__ import annotations

from typing import Any

from billiard.exceptions import SoftTimeLimitExceeded

from tasks_app import controls
from tasks_app.handlers import RunContext, handler
from tasks_app.models import Run


@handler("tests.explode")
def explode(ctx: RunContext, message: str = "boom") -> None:
    raise ValueError(message)


@handler("tests.soft_timeout")
def soft_timeout(ctx: RunContext) -> None:
    raise SoftTimeLimitExceeded()


@handler("tests.echo_big")
def echo_big(ctx: RunContext, size: int) -> str:
    return "x" * size


@handler("tests.not_json")
def not_json(ctx: RunContext) -> Any:
    return {1, 2}


@handler("tests.chatty")
def chatty(ctx: RunContext) -> dict[str, Any]:
    ctx.logger.info("hello %s", "world")
    ctx.progress(0.5, "half way")
    ctx.logger.warning("careful")
    return {"progress while running": Run.objects.values_list("progress", flat=True).get(pk=ctx.run_id)}


@handler("tests.cancelled_meanwhile")
def cancelled_meanwhile(ctx: RunContext) -> str:
    controls.cancel(Run.objects.select_related("task").get(pk=ctx.run_id), by="someone")
    return "too late"


@handler("tests.checkpoint_after_cancel", pausable=True)
def checkpoint_after_cancel(ctx: RunContext) -> str:
    controls.cancel(Run.objects.select_related("task").get(pk=ctx.run_id), by="someone")
    ctx.checkpoint({"step": 1})
    return "unreachable"
