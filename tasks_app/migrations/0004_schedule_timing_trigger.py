"""Triggers that make the scheduler recompute a schedule whose timing changed.

Whatever writes the row (the API, the admin, a bulk update(), plain SQL), a change to
cron, interval_seconds, run_at, timezone, start_at, end_at or enabled, or an insert
without a next fire time, sets next_fire_at to 1970-01-01 (models.schedules.RECOMPUTE):
due at once, so the next tick of ScheduleQuerySet.fire_due() recomputes it from the new
timing, firing nothing for it. Edits take effect by the next tick, with no reload.
"""

from __future__ import annotations

from django.db import migrations

RECOMPUTE = "'1970-01-01 00:00:00'"
COLUMNS = ("cron", "interval_seconds", "run_at", "timezone", "start_at", "end_at", "enabled")

MYSQL_SAME = " AND ".join(f"NEW.{c} <=> OLD.{c}" for c in COLUMNS)
SQLITE_CHANGED = " OR ".join(f"NEW.{c} IS NOT OLD.{c}" for c in COLUMNS)

TRIGGERS = {
    "mysql": [
        "CREATE TRIGGER tasks_app_schedule_inserted BEFORE INSERT ON tasks_app_schedule FOR EACH ROW "
        f"IF NEW.next_fire_at IS NULL THEN SET NEW.next_fire_at = {RECOMPUTE}; END IF",
        "CREATE TRIGGER tasks_app_schedule_retimed BEFORE UPDATE ON tasks_app_schedule FOR EACH ROW "
        f"IF NOT ({MYSQL_SAME}) THEN SET NEW.next_fire_at = {RECOMPUTE}; END IF",
    ],
    "sqlite": [
        "CREATE TRIGGER tasks_app_schedule_inserted AFTER INSERT ON tasks_app_schedule FOR EACH ROW "
        f"WHEN NEW.next_fire_at IS NULL BEGIN UPDATE tasks_app_schedule SET next_fire_at = {RECOMPUTE} "
        "WHERE id = NEW.id; END",
        "CREATE TRIGGER tasks_app_schedule_retimed AFTER UPDATE ON tasks_app_schedule FOR EACH ROW "
        f"WHEN {SQLITE_CHANGED} BEGIN UPDATE tasks_app_schedule SET next_fire_at = {RECOMPUTE} "
        "WHERE id = NEW.id; END",
    ],
}


def create_triggers(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor not in TRIGGERS:
        raise RuntimeError(f"no schedule triggers for the {vendor} database (MariaDB/MySQL or SQLite)")
    for statement in TRIGGERS[vendor]:
        schema_editor.execute(statement)


def drop_triggers(apps, schema_editor):
    for name in ("tasks_app_schedule_inserted", "tasks_app_schedule_retimed"):
        schema_editor.execute(f"DROP TRIGGER IF EXISTS {name}")


class Migration(migrations.Migration):
    atomic = False  # DDL: MySQL cannot roll it back anyway
    dependencies = [("tasks_app", "0003_schedules")]

    operations = [migrations.RunPython(create_triggers, drop_triggers)]
