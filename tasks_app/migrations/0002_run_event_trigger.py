"""A trigger that records a RunEvent whenever an UPDATE changes a run's state.

The event is written inside the UPDATE's own statement, so a move is one round trip
and no code path (a bulk update() included) can change a state without its event.
Run.move() and RunQuerySet.dispatch_due() set the state_* columns the trigger copies.
"""

from __future__ import annotations

from django.db import migrations

COLUMNS = "run_id, from_state, to_state, at, reason, actor, actor_name"
VALUES = "NEW.id, OLD.state, NEW.state, NEW.state_changed_at, NEW.state_reason, NEW.state_actor, NEW.state_actor_name"

CREATE = {
    "mysql": (
        "CREATE TRIGGER tasks_app_run_event AFTER UPDATE ON tasks_app_run FOR EACH ROW "
        f"INSERT INTO tasks_app_runevent ({COLUMNS}) SELECT {VALUES} FROM DUAL WHERE NEW.state <> OLD.state"
    ),
    "sqlite": (
        "CREATE TRIGGER tasks_app_run_event AFTER UPDATE OF state ON tasks_app_run FOR EACH ROW "
        f"WHEN NEW.state <> OLD.state BEGIN INSERT INTO tasks_app_runevent ({COLUMNS}) VALUES ({VALUES}); END"
    ),
    "postgresql": None,  # not a supported database here
}


def create_trigger(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if CREATE.get(vendor) is None:
        raise RuntimeError(f"no run event trigger for the {vendor} database")
    schema_editor.execute(CREATE[vendor])


def drop_trigger(apps, schema_editor):
    schema_editor.execute("DROP TRIGGER IF EXISTS tasks_app_run_event")


class Migration(migrations.Migration):
    atomic = False  # DDL: MySQL cannot roll it back anyway
    dependencies = [("tasks_app", "0001_initial")]

    operations = [migrations.RunPython(create_trigger, drop_trigger)]
