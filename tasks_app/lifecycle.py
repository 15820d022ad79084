"""The one place that changes the state of a run or a workflow run.

- The legal moves: `TRANSITIONS` for runs, `WORKFLOW_TRANSITIONS` for workflow runs,
  between the states of choices.py. Nothing else writes a `state` column (a test checks).
- Each move is a compare-and-set UPDATE on the state the caller last saw; a refused move
  raises `InvalidTransition` and changes nothing. Runs are also born here, in `created` or
  `pending` (`insert_runs`), and sent in bulk (`send_due`).
- Each move is recorded as an event row by a database trigger, in the same statement, from
  the `state_*` columns the move sets (db_triggers.py): no path can change a state without
  its event, a bulk UPDATE included.
- What follows a move (a lock released, a workflow advanced, a message revoked, later
  alerts and metrics) is a subscriber: `subscribe()` in an AppConfig.ready(), called with
  the moves after their transaction commits. This module imports none of them.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from tasks_app.choices import (
    ACTIVE_STATES,
    TERMINAL_STATES,
    WORKFLOW_TERMINAL_STATES,
    Actor,
    RunState,
    RunTrigger,
    WorkflowState,
)
from tasks_app.models import Run, WorkflowRun

__all__ = [
    "ACTIVE_STATES",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "WORKFLOW_TRANSITIONS",
    "Actor",
    "InvalidTransition",
    "Move",
    "RunState",
    "RunTrigger",
    "WorkflowState",
    "insert_runs",
    "is_legal",
    "move",
    "move_workflow_run",
    "send_due",
    "sources_of",
    "start_workflow_run",
    "subscribe",
]

logger = logging.getLogger(__name__)
S, W = RunState, WorkflowState

TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    S.CREATED: frozenset({S.PENDING, S.PAUSED, S.CANCELLED, S.SKIPPED}),
    S.PENDING: frozenset({S.RUNNING, S.PAUSED, S.CANCELLED, S.FAILED}),
    # running -> paused only where the handler takes checkpoints (controls.pause checks).
    S.RUNNING: frozenset({S.COMPLETED, S.FAILED, S.RETRYING, S.CANCELLED, S.PAUSED}),
    S.RETRYING: frozenset({S.PENDING, S.PAUSED, S.CANCELLED}),
    S.PAUSED: frozenset({S.PENDING, S.CANCELLED}),
    S.FAILED: frozenset({S.PENDING}),
    S.CANCELLED: frozenset({S.PENDING}),
    S.COMPLETED: frozenset(),
    # Only a workflow retry, for a step downstream of a retried one (workflows.retry).
    S.SKIPPED: frozenset({S.CREATED}),
}

WORKFLOW_TRANSITIONS: dict[WorkflowState, frozenset[WorkflowState]] = {
    W.RUNNING: frozenset({W.COMPLETED, W.FAILED, W.CANCELLED}),
    W.FAILED: frozenset({W.RUNNING}),  # a retry
    W.CANCELLED: frozenset({W.RUNNING}),  # a retry
    W.COMPLETED: frozenset(),
}


def sources_of(target: Any, table: dict | None = None) -> frozenset:
    """The states from which `target` can be reached (in the run table, or `table`)."""
    table = TRANSITIONS if table is None else table
    return frozenset(state for state, targets in table.items() if target in targets)


def is_legal(source: RunState | str, target: RunState | str) -> bool:
    return RunState(target) in TRANSITIONS[RunState(source)]


class InvalidTransition(Exception):
    """A move the state table does not allow from the current state (a 409)."""

    def __init__(self, run_id: int, current: str, target: str, detail: str = "", kind: str = "run") -> None:
        self.run_id = run_id
        self.current = current
        self.target = target
        message = f"{kind} {run_id} is {current}: it cannot move to {target}"
        super().__init__(f"{message} ({detail})" if detail else message)


# --- the hook ------------------------------------------------------------------------


@dataclass(frozen=True)
class Move:
    """A run or workflow run that moved; `source` is "" for one born in its state. `since` is
    when it had entered `source`, where the mover knew (metrics measure queue waits and
    attempts by it); None otherwise."""

    subject: Run | WorkflowRun
    source: str
    target: str
    since: dt.datetime | None = None

    @property
    def is_run(self) -> bool:
        return isinstance(self.subject, Run)

    @property
    def finished(self) -> bool:
        terminal = TERMINAL_STATES if self.is_run else WORKFLOW_TERMINAL_STATES
        return self.target in terminal


Subscriber = Callable[[list[Move]], None]
_subscribers: list[Subscriber] = []


def subscribe(subscriber: Subscriber) -> None:
    """Call `subscriber(moves)` after every committed move (registered once, at start-up)."""
    if subscriber not in _subscribers:
        _subscribers.append(subscriber)


def _announce(moves: list[Move]) -> None:
    if moves:
        transaction.on_commit(lambda: _deliver(moves))


def _deliver(moves: list[Move]) -> None:
    for subscriber in list(_subscribers):
        try:
            subscriber(moves)
        except Exception:
            # The moves stand; what failed to follow them is caught up by beat's sweeps
            # (stalled workflow runs, orphaned locks). One subscriber never stops another.
            logger.exception(
                "%s failed after %d move(s)", getattr(subscriber, "__qualname__", subscriber), len(moves)
            )


# --- runs ----------------------------------------------------------------------------


def move_fields(
    target: RunState | WorkflowState,
    *,
    at: dt.datetime,
    reason: str,
    actor: str,
    actor_name: str = "",
    terminal: frozenset = TERMINAL_STATES,
) -> dict:
    """The columns every move to `target` sets (of a run; of a workflow run with its
    `terminal` states); the event trigger reads the state_* ones."""
    return {
        "state": target,
        "finished_at": at if target in terminal else None,
        "state_changed_at": at,
        "state_reason": reason[:500],
        "state_actor": actor,
        "state_actor_name": actor_name[:150],
    }


def _conditional_update(conditions: dict[str, Any], values: dict[str, Any], increment: str = "") -> int:
    """UPDATE one run SET `values` (and `increment` + 1) WHERE `conditions`; the row count.

    Every move of one run runs this, and a worker makes two per run: SQL written straight from the
    fields' own conversions skips compiling a QuerySet.update() each time, while values go
    through the same Field.get_db_prep_save(). bench/orm.py, a claim's fields on MariaDB
    (2026-12-02): 1,203 us a call here against 1,814 us for the QuerySet.update(), 1.5x.
    """
    meta, quote = Run._meta, connection.ops.quote_name
    assignments, params = [], []
    for name, value in values.items():
        field = meta.get_field(name)
        assignments.append(f"{quote(field.column)} = %s")
        params.append(field.get_db_prep_save(value, connection))
    if increment:
        column = quote(meta.get_field(increment).column)
        assignments.append(f"{column} = {column} + 1")
    tests = []
    for name, value in conditions.items():
        field = meta.get_field(name)
        tests.append(f"{quote(field.column)} = %s")
        params.append(field.get_db_prep_value(value, connection))
    sql = f"UPDATE {quote(meta.db_table)} SET {', '.join(assignments)} WHERE {' AND '.join(tests)}"
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


def move(
    run: Run,
    target: RunState,
    *,
    reason: str = "",
    actor: str = Actor.SYSTEM,
    actor_name: str = "",
    only_from: frozenset[RunState] | None = None,
    where: dict[str, Any] | None = None,
    new_message: bool = False,
    at: dt.datetime | None = None,
    **changes: Any,
) -> RunState:
    """Move `run` to `target` if the state table allows it from its current state.

    Compare-and-set on the state this instance last saw (one UPDATE; the trigger records
    the event); if another process moved the run meanwhile, re-read and try again from
    there. `where` adds conditions that must hold too (the claim's message number);
    `new_message` gives the run its next message number; `at` is the time of the move
    (now). Returns the state moved from; raises InvalidTransition.
    """
    allowed = sources_of(target) if only_from is None else sources_of(target) & only_from
    fields = {
        **changes,
        **move_fields(target, at=at or timezone.now(), reason=reason, actor=actor, actor_name=actor_name),
    }
    seen_first = current = run.state
    entered_at = run.state_changed_at
    for _attempt in range(5):
        if current not in allowed:
            raise InvalidTransition(run.pk, current, target)
        conditions = {"id": run.pk, "state": current, **(where or {})}
        if not new_message:
            if _conditional_update(conditions, fields):
                break
        else:
            with transaction.atomic():
                if _conditional_update(conditions, fields, increment="message_number"):
                    # Read back while the UPDATE still holds the row lock: the row as this
                    # message number finds it, which its message carries (run_loader.carried);
                    # not refresh_from_db(), which would drop the task the publisher reads.
                    row = Run.objects.get(pk=run.pk)
                    for field in Run._meta.concrete_fields:
                        setattr(run, field.attname, getattr(row, field.attname))
                    break
        seen = current
        current = Run.objects.filter(pk=run.pk).values_list("state", flat=True).first()
        if current is None:
            raise Run.DoesNotExist(f"run {run.pk} no longer exists")
        if current == seen:  # the state held, so an extra condition did not
            raise InvalidTransition(run.pk, current, target, "superseded")
    else:
        raise InvalidTransition(run.pk, current, target, "the run keeps changing")
    since = entered_at if current == seen_first else None  # unknown if another move came between
    if not new_message:  # else the row was read back
        for field, value in fields.items():
            setattr(run, field, value)
    _announce([Move(run, current, target, since)])
    return RunState(current)


def insert_runs(
    born: list[tuple[Run, RunState, str]], *, at: dt.datetime, actor: str, actor_name: str = ""
) -> list[Run]:
    """Insert runs born in a state: each (unsaved run, created or pending, the reason of
    its first event). One born pending has its first message number; the insert trigger
    records its move from created to pending too."""
    runs = []
    for run, state, reason in born:
        if state not in (S.CREATED, S.PENDING):
            raise ValueError(f"a run is born created or pending, not {state}")
        for field, value in move_fields(
            state, at=at, reason=reason, actor=actor, actor_name=actor_name
        ).items():
            setattr(run, field, value)
        run.message_number = 1 if state == S.PENDING else 0
        runs.append(run)
    if len(runs) == 1:
        runs[0].save(force_insert=True)  # one statement: no transaction to open
    else:
        with transaction.atomic(savepoint=False) if len(runs) > INSERT_BATCH else nullcontext():
            for first in range(0, len(runs), INSERT_BATCH):
                _insert(runs[first : first + INSERT_BATCH])
    _announce([Move(run, "", run.state) for run in runs])
    return runs


INSERT_BATCH = 500  # rows per INSERT: SQLite takes at most 32,766 parameters a statement


def _insert(runs: list[Run]) -> None:
    """INSERT `runs` in one statement, their ids set from its RETURNING.

    A bulk submit and a burst of fires run this: as for _conditional_update, SQL written from the
    fields' own conversions (Field.get_db_prep_save) skips compiling a bulk_create() of every
    value. bench/orm.py (2026-12-04), 500 runs an INSERT: 137 us a run here against 203 us for
    bulk_create(), 1.48x.
    """
    if not runs:
        return
    if not connection.features.can_return_rows_from_bulk_insert:  # SQLite before 3.35
        Run.objects.bulk_create(runs)
        return
    fields = [field for field in Run._meta.concrete_fields if not field.primary_key]
    quote = connection.ops.quote_name
    row = f"({', '.join(['%s'] * len(fields))})"
    sql = (
        f"INSERT INTO {quote(Run._meta.db_table)} ({', '.join(quote(f.column) for f in fields)}) "
        f"VALUES {', '.join([row] * len(runs))} RETURNING {quote(Run._meta.pk.column)}"
    )
    params = [
        field.get_db_prep_save(getattr(run, field.attname), connection) for run in runs for field in fields
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        ids = [pk for (pk,) in cursor.fetchall()]
    if len(ids) != len(runs):
        raise RuntimeError(f"INSERT of {len(runs)} runs returned {len(ids)} ids")
    for run, pk in zip(runs, ids, strict=True):
        run.pk = pk
        run._state.adding = False
        run._state.db = connection.alias


def send_due(due: list[tuple[int, str]], *, at: dt.datetime) -> list[Run]:
    """Send the runs of `due` ((id, state) pairs the caller holds locked): created and
    retrying ones move to pending, and each, a pending one being sent again included,
    gets its next message number. Returns them, with their tasks, to publish."""
    moved = move_fields(S.PENDING, at=at, reason="due: sent to the broker", actor=Actor.SYSTEM)
    for source in {state for _pk, state in due}:
        Run.objects.filter(pk__in=[pk for pk, state in due if state == source], state=source).update(
            message_number=F("message_number") + 1, due_at=None, **({} if source == S.PENDING else moved)
        )
    runs = list(Run.objects.select_related("task").filter(pk__in=[pk for pk, _state in due]))
    sources = dict(due)
    _announce([Move(run, sources[run.pk], S.PENDING) for run in runs if sources[run.pk] != S.PENDING])
    return runs


# --- workflow runs -------------------------------------------------------------------


def _workflow_move_fields(target: WorkflowState, **fields: Any) -> dict[str, Any]:
    return move_fields(target, terminal=WORKFLOW_TERMINAL_STATES, **fields)


def start_workflow_run(*, at: dt.datetime, actor: str, actor_name: str = "", **fields: Any) -> WorkflowRun:
    """Insert a workflow run, born running (the insert trigger records its first event)."""
    workflow_run = WorkflowRun.objects.create(
        started_at=at,
        **fields,
        **_workflow_move_fields(W.RUNNING, at=at, reason="started", actor=actor, actor_name=actor_name),
    )
    _announce([Move(workflow_run, "", W.RUNNING)])
    return workflow_run


def move_workflow_run(
    workflow_run: WorkflowRun,
    target: WorkflowState,
    *,
    reason: str,
    actor: str = Actor.SYSTEM,
    actor_name: str = "",
    at: dt.datetime | None = None,
) -> WorkflowState:
    """Move a workflow run, compare-and-set on the state the instance holds (the caller
    holds its row lock). Returns the state moved from; raises InvalidTransition."""
    current = workflow_run.state
    if current not in sources_of(target, WORKFLOW_TRANSITIONS):
        raise InvalidTransition(workflow_run.pk, current, target, kind="workflow run")
    fields = _workflow_move_fields(
        target, at=at or timezone.now(), reason=reason, actor=actor, actor_name=actor_name
    )
    if not WorkflowRun.objects.filter(pk=workflow_run.pk, state=current).update(**fields):
        stored = WorkflowRun.objects.filter(pk=workflow_run.pk).values_list("state", flat=True).first()
        raise InvalidTransition(
            workflow_run.pk, stored or "gone", target, "moved meanwhile", kind="workflow run"
        )
    for field, value in fields.items():
        setattr(workflow_run, field, value)
    _announce([Move(workflow_run, current, target)])
    return WorkflowState(current)
