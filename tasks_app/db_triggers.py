"""The database triggers, as SQL generated from the Python constants they stand for.

- Events: whenever a statement inserts a run or a workflow run, or changes its state, a
  trigger copies the `state_*` columns lifecycle.py set into an event row, in the same
  statement. A move is one statement, and no path (a bulk update() or plain SQL included)
  changes a state without its event. A state written without those columns (plain SQL
  setting `state` alone) is recorded with MOVED_OUTSIDE_LIFECYCLE, by the system, now:
  never with the previous move's reason.
- Schedules: a change of a schedule's timing, or of what it fires once it was set aside,
  sets its next_fire_at to RECOMPUTE, so beat's next tick recomputes it.

Why triggers rather than an INSERT beside each UPDATE (healthchecks' create_flip): the
worker's claim and finish stay one autocommit statement each, with no transaction to open
(bench/e2e.py), and the guarantee covers writes that bypass the code. Both vendors get
the same behaviour from the same constants; the migration that installs them (0015) and
the repair after SQLite's table rebuilds (apps.py) call `statements()`. A change here
needs a new migration that installs them again, as 0015 does.
"""

from __future__ import annotations

from tasks_app.choices import MOVED_OUTSIDE_LIFECYCLE, SENT_AT_SUBMISSION, Actor, RunState
from tasks_app.models.schedules import RECOMPUTE

EVENT_COLUMNS = "from_state, to_state, at, reason, actor, actor_name"
STATE_COLUMNS = ("state_changed_at", "state_reason", "state_actor", "state_actor_name")
LATEST_MOVE = ", ".join(f"NEW.{column}" for column in STATE_COLUMNS)
# Which columns, when they change, make the scheduler recompute a schedule.
TIMING_COLUMNS = ("cron", "interval_seconds", "run_at", "timezone", "start_at", "end_at", "enabled")
FIRES_COLUMNS = ("task_id", "workflow_id", "args", "kwargs")

NOW = {"mysql": "UTC_TIMESTAMP(6)", "sqlite": "strftime('%Y-%m-%d %H:%M:%f', 'now')"}


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _same(vendor: str, columns: tuple[str, ...]) -> str:
    """SQL true when none of `columns` changed (NULL-safe)."""
    if vendor == "mysql":
        return " AND ".join(f"NEW.{c} <=> OLD.{c}" for c in columns)
    return " AND ".join(f"NEW.{c} IS OLD.{c}" for c in columns)


def _moved_values(vendor: str) -> str:
    """The event of an UPDATE that changed the state: lifecycle's columns, or, if it set
    none of them, MOVED_OUTSIDE_LIFECYCLE by the system now."""
    unset = _same(vendor, STATE_COLUMNS)
    return (
        f"NEW.id, OLD.state, NEW.state, "
        f"CASE WHEN {unset} THEN {NOW[vendor]} ELSE NEW.state_changed_at END, "
        f"CASE WHEN {unset} THEN {_quote(MOVED_OUTSIDE_LIFECYCLE)} ELSE NEW.state_reason END, "
        f"CASE WHEN {unset} THEN {_quote(Actor.SYSTEM)} ELSE NEW.state_actor END, "
        f"CASE WHEN {unset} THEN '' ELSE NEW.state_actor_name END"
    )


def _event_triggers(
    vendor: str, table: str, event_table: str, owner_column: str, born: list[str]
) -> list[str]:
    """An insert trigger writing the events `born` (VALUES lists), and an update trigger
    writing one event per change of state."""
    insert = f"INSERT INTO {event_table} ({owner_column}, {EVENT_COLUMNS})"
    moved = _moved_values(vendor)
    if vendor == "mysql":
        on_insert = " ".join(f"{insert} {values};" for values in born)
        return [
            f"CREATE TRIGGER {table}_inserted AFTER INSERT ON {table} FOR EACH ROW BEGIN {on_insert} END",
            f"CREATE TRIGGER {table}_moved AFTER UPDATE ON {table} FOR EACH ROW "
            f"{insert} SELECT {moved} FROM DUAL WHERE NEW.state <> OLD.state",
        ]
    on_insert = " ".join(f"{insert} {values};" for values in born)
    return [
        f"CREATE TRIGGER {table}_inserted AFTER INSERT ON {table} FOR EACH ROW BEGIN {on_insert} END",
        f"CREATE TRIGGER {table}_moved AFTER UPDATE OF state ON {table} FOR EACH ROW "
        f"WHEN NEW.state <> OLD.state BEGIN {insert} SELECT {moved}; END",
    ]


def run_event_triggers(vendor: str) -> list[str]:
    first = "SELECT NEW.id, '', {created}, " + LATEST_MOVE
    # A run inserted due now was born pending: its move from created is recorded too.
    sent = (
        "SELECT NEW.id, {created}, NEW.state, NEW.state_changed_at, {reason}, {system}, '' "
        + ("FROM DUAL " if vendor == "mysql" else "")
        + "WHERE NEW.state = {pending}"
    )
    names = {
        "created": _quote(RunState.CREATED),
        "pending": _quote(RunState.PENDING),
        "reason": _quote(SENT_AT_SUBMISSION),
        "system": _quote(Actor.SYSTEM),
    }
    born = [first.format(**names), sent.format(**names)]
    return _event_triggers(vendor, "tasks_app_run", "tasks_app_runevent", "run_id", born)


def workflow_run_event_triggers(vendor: str) -> list[str]:
    born = ["SELECT NEW.id, '', NEW.state, " + LATEST_MOVE]
    return _event_triggers(
        vendor, "tasks_app_workflowrun", "tasks_app_workflowrunevent", "workflow_run_id", born
    )


def schedule_triggers(vendor: str) -> list[str]:
    recompute = _quote(RECOMPUTE.strftime("%Y-%m-%d %H:%M:%S"))
    retimed = f"NOT ({_same(vendor, TIMING_COLUMNS)})"
    mended = f"OLD.invalid_reason <> '' AND NOT ({_same(vendor, FIRES_COLUMNS)})"
    if vendor == "mysql":
        return [
            "CREATE TRIGGER tasks_app_schedule_inserted BEFORE INSERT ON tasks_app_schedule FOR EACH ROW "
            f"IF NEW.next_fire_at IS NULL THEN SET NEW.next_fire_at = {recompute}; END IF",
            "CREATE TRIGGER tasks_app_schedule_retimed BEFORE UPDATE ON tasks_app_schedule FOR EACH ROW "
            f"IF {retimed} THEN SET NEW.next_fire_at = {recompute}; END IF",
            "CREATE TRIGGER tasks_app_schedule_mended BEFORE UPDATE ON tasks_app_schedule FOR EACH ROW "
            f"IF {mended} THEN SET NEW.next_fire_at = {recompute}; END IF",
        ]
    set_recompute = f"UPDATE tasks_app_schedule SET next_fire_at = {recompute} WHERE id = NEW.id;"
    return [
        "CREATE TRIGGER tasks_app_schedule_inserted AFTER INSERT ON tasks_app_schedule FOR EACH ROW "
        f"WHEN NEW.next_fire_at IS NULL BEGIN {set_recompute} END",
        "CREATE TRIGGER tasks_app_schedule_retimed AFTER UPDATE ON tasks_app_schedule FOR EACH ROW "
        f"WHEN {retimed} BEGIN {set_recompute} END",
        "CREATE TRIGGER tasks_app_schedule_mended AFTER UPDATE ON tasks_app_schedule FOR EACH ROW "
        f"WHEN {mended} BEGIN {set_recompute} END",
    ]


def statements(vendor: str) -> list[str]:
    """Every trigger of the platform, for `vendor` (mysql or sqlite)."""
    if vendor not in NOW:
        raise RuntimeError(f"no triggers for the {vendor} database (MariaDB/MySQL or SQLite)")
    return run_event_triggers(vendor) + workflow_run_event_triggers(vendor) + schedule_triggers(vendor)


def names(vendor: str = "mysql") -> list[str]:
    return [statement.split()[2] for statement in statements(vendor)]
