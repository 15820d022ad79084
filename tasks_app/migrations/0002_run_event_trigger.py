"""Triggers that record a run's events in the statement that changes its state.

- After INSERT: the "submitted" event (to created) and, for a run inserted as due
  now, its move to pending ("sent to the broker", by the system).
- After UPDATE of the state: one event from the old state to the new one.

Both copy the state_* columns that Run.move(), RunQuerySet.submit_many() and
RunQuerySet.dispatch_due() set. A move is therefore one statement, and no code path
(a bulk update() included) can change a state without its event.
"""

from __future__ import annotations

from django.db import migrations

EVENT = "INSERT INTO tasks_app_runevent (run_id, from_state, to_state, at, reason, actor, actor_name)"
MOVED = "NEW.id, OLD.state, NEW.state, NEW.state_changed_at, NEW.state_reason, NEW.state_actor, NEW.state_actor_name"
SUBMITTED = "NEW.id, '', 'created', NEW.state_changed_at, NEW.state_reason, NEW.state_actor, NEW.state_actor_name"
SENT = "NEW.id, 'created', NEW.state, NEW.state_changed_at, 'sent to the broker', 'system', ''"

TRIGGERS = {
    "mysql": [
        "CREATE TRIGGER tasks_app_run_inserted AFTER INSERT ON tasks_app_run FOR EACH ROW BEGIN "
        f"{EVENT} VALUES ({SUBMITTED}); "
        f"IF NEW.state = 'pending' THEN {EVENT} VALUES ({SENT}); END IF; "
        "END",
        "CREATE TRIGGER tasks_app_run_moved AFTER UPDATE ON tasks_app_run FOR EACH ROW "
        f"{EVENT} SELECT {MOVED} FROM DUAL WHERE NEW.state <> OLD.state",
    ],
    "sqlite": [
        "CREATE TRIGGER tasks_app_run_inserted AFTER INSERT ON tasks_app_run FOR EACH ROW BEGIN "
        f"{EVENT} VALUES ({SUBMITTED}); "
        f"{EVENT} SELECT {SENT} WHERE NEW.state = 'pending'; "
        "END",
        "CREATE TRIGGER tasks_app_run_moved AFTER UPDATE OF state ON tasks_app_run FOR EACH ROW "
        f"WHEN NEW.state <> OLD.state BEGIN {EVENT} VALUES ({MOVED}); END",
    ],
}


def create_triggers(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor not in TRIGGERS:
        raise RuntimeError(f"no run event triggers for the {vendor} database (MariaDB/MySQL or SQLite)")
    for statement in TRIGGERS[vendor]:
        schema_editor.execute(statement)


def drop_triggers(apps, schema_editor):
    for name in ("tasks_app_run_inserted", "tasks_app_run_moved"):
        schema_editor.execute(f"DROP TRIGGER IF EXISTS {name}")


class Migration(migrations.Migration):
    atomic = False  # DDL: MySQL cannot roll it back anyway
    dependencies = [("tasks_app", "0001_initial")]

    operations = [migrations.RunPython(create_triggers, drop_triggers)]
