"""A trigger that makes the scheduler look again at a schedule it set aside once an edit
touches what it fires (task, workflow, args, kwargs).

The scheduler sets a schedule aside (next_fire_at NULL, invalid_reason saying why) when
its next fire cannot be computed or it cannot fire; timing edits already make it
recompute (migration 0004). This covers the other edits that can mend it, by any path.
"""

from __future__ import annotations

from django.db import migrations

RECOMPUTE = "'1970-01-01 00:00:00'"
COLUMNS = ("task_id", "workflow_id", "args", "kwargs")

MYSQL_SAME = " AND ".join(f"NEW.{c} <=> OLD.{c}" for c in COLUMNS)
SQLITE_CHANGED = " OR ".join(f"NEW.{c} IS NOT OLD.{c}" for c in COLUMNS)

TRIGGERS = {
    "mysql": [
        "CREATE TRIGGER tasks_app_schedule_mended BEFORE UPDATE ON tasks_app_schedule FOR EACH ROW "
        f"IF OLD.invalid_reason <> '' AND NOT ({MYSQL_SAME}) THEN SET NEW.next_fire_at = {RECOMPUTE}; END IF",
    ],
    "sqlite": [
        "CREATE TRIGGER tasks_app_schedule_mended AFTER UPDATE ON tasks_app_schedule FOR EACH ROW "
        f"WHEN OLD.invalid_reason <> '' AND ({SQLITE_CHANGED}) BEGIN UPDATE tasks_app_schedule "
        f"SET next_fire_at = {RECOMPUTE} WHERE id = NEW.id; END",
    ],
}


def create_triggers(apps, schema_editor):
    for statement in TRIGGERS[schema_editor.connection.vendor]:
        schema_editor.execute(statement)


def drop_triggers(apps, schema_editor):
    schema_editor.execute("DROP TRIGGER IF EXISTS tasks_app_schedule_mended")


class Migration(migrations.Migration):
    atomic = False  # DDL: MySQL cannot roll it back anyway
    dependencies = [("tasks_app", "0011_schedule_invalid_reason")]

    operations = [migrations.RunPython(create_triggers, drop_triggers)]
