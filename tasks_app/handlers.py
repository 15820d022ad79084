"""The handler registry, the decorator that fills it, and the context a handler gets.

Only functions registered here can ever run: a task names a handler, and a worker
looks the name up in this registry. Nothing sent over the API is evaluated as code.

    from tasks_app.handlers import handler

    @handler("reports.build")
    def build(ctx, *, day):
        ctx.logger.info("building %s", day)
        ctx.progress(0.5, "half way")
        return {"rows": 10}

Handlers live in a `handlers` module of any installed app (found at start-up).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from tasks_app.choices import RunState
from tasks_app.models import Run, RunLog

run_logger = logging.getLogger("tasks_app.runs")


@dataclass(frozen=True)
class Handler:
    name: str
    func: Callable[..., Any]
    description: str
    # Takes checkpoints, so a running run of it can be paused and resumed.
    pausable: bool = False


class UnknownHandler(LookupError):
    pass


class RunInterrupted(Exception):
    """Raised inside a handler when its run was paused or cancelled meanwhile."""

    def __init__(self, current: str) -> None:
        self.current = current
        super().__init__(f"the run is {current}")


_registry: dict[str, Handler] = {}
_listeners: list[Callable[[str], Any]] = []


def on_register(listener: Callable[[str], Any]) -> None:
    """Call `listener(name)` for every handler registered, before and after (execution
    makes each one's Celery task so)."""
    if listener not in _listeners:
        _listeners.append(listener)
        for name in list(_registry):
            listener(name)


def handler(name: str | None = None, *, pausable: bool = False) -> Callable[[Callable], Callable]:
    """Register `func` as a handler called `name` (default: module.qualname)."""

    def register(func: Callable[..., Any]) -> Callable[..., Any]:
        handler_name = name or f"{func.__module__}.{func.__qualname__}"
        existing = _registry.get(handler_name)
        if existing is not None and existing.func is not func:
            raise ValueError(f"a handler named {handler_name!r} is already registered")
        _registry[handler_name] = Handler(
            name=handler_name,
            func=func,
            description=inspect.getdoc(func) or "",
            pausable=pausable,
        )
        for listener in _listeners:
            listener(handler_name)
        return func

    return register


def find(name: str) -> Handler | None:
    return _registry.get(name)


def get(name: str) -> Handler:
    try:
        return _registry[name]
    except KeyError:
        raise UnknownHandler(f"no handler named {name!r} is registered") from None


def all_handlers() -> list[Handler]:
    return sorted(_registry.values(), key=lambda h: h.name)


class RunLogHandler(logging.Handler):
    """Keeps each line a handler logs as a RunLog row of its run."""

    def __init__(self, run_id: int) -> None:
        super().__init__()
        self.run_id = run_id

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            RunLog.objects.create(run_id=self.run_id, level=record.levelname, message=message)
        except Exception:
            self.handleError(record)


class RunContext:
    """What a handler gets as its first argument."""

    def __init__(self, run: Run, handler: Handler, upstream: dict[str, Any] | None = None) -> None:
        self._run = run
        self.run_id: int = run.pk
        self.attempt: int = run.attempt
        self.task_name: str = run.task.name
        self.handler = handler
        # The checkpoint an earlier attempt of this run left, or None.
        self.saved_checkpoint: Any = run.checkpoint
        # The fencing token of the task's concurrency lock (None for `allow` tasks):
        # pass it to what the handler writes, so a newer run's writes win.
        self.fence: int | None = run.fence
        # Upstream workflow steps' results by step key (empty outside workflows).
        self.upstream: dict[str, Any] = upstream or {}

    @cached_property
    def logger(self) -> logging.Logger:
        """A logger whose lines are kept with the run (and go to the worker's log too)."""
        logger = logging.Logger(f"tasks_app.runs.{self.run_id}", logging.DEBUG)
        logger.parent = run_logger
        logger.addHandler(RunLogHandler(self.run_id))
        return logger

    def progress(self, fraction: float, message: str = "") -> None:
        """Report progress (0 to 1); raises RunInterrupted if the run stopped running."""
        fraction = min(1.0, max(0.0, float(fraction)))
        progress = {"fraction": fraction, "message": str(message)[:500]}
        # Recorded only while this attempt still runs.
        if not self._this_attempt().filter(state=RunState.RUNNING).update(progress=progress):
            raise RunInterrupted(self._current_state())

    def checkpoint(self, state: Any) -> None:
        """Keep `state` (JSON) for a resumed attempt; raises RunInterrupted once paused or cancelled.

        A checkpoint is still kept when the run was paused meanwhile: that is what the
        resumed attempt continues from.
        """
        mine = self._this_attempt()
        self.saved_checkpoint = state
        if mine.filter(state=RunState.RUNNING).update(checkpoint=state):
            return
        if mine.filter(state=RunState.PAUSED).update(checkpoint=state):
            raise RunInterrupted(RunState.PAUSED)
        raise RunInterrupted(self._current_state())

    def _this_attempt(self) -> Any:
        return Run.objects.filter(pk=self.run_id, message_number=self._run.message_number)

    def _current_state(self) -> str:
        return Run.objects.values_list("state", flat=True).get(pk=self.run_id)
