from __future__ import annotations

import importlib
from typing import Any

from django.apps import AppConfig
from django.db import connections
from django.db.models.signals import post_migrate
from django.utils.module_loading import autodiscover_modules

# Migrations that create triggers (their TRIGGERS maps vendor -> statements).
TRIGGER_MIGRATIONS = (
    "0002_run_event_trigger",
    "0004_schedule_timing_trigger",
    "0012_schedule_mended_trigger",
)


def restore_sqlite_triggers(using: str = "default", **kwargs: Any) -> None:
    """SQLite drops a table's triggers when Django rebuilds the table for a later
    migration; put back any that went missing (MariaDB/MySQL keep them)."""
    connection = connections[using]
    if connection.vendor != "sqlite":
        return
    with connection.cursor() as cursor:
        for name in TRIGGER_MIGRATIONS:
            migration = importlib.import_module(f"tasks_app.migrations.{name}")
            for statement in migration.TRIGGERS["sqlite"]:
                cursor.execute(statement.replace("CREATE TRIGGER ", "CREATE TRIGGER IF NOT EXISTS ", 1))


class TasksAppConfig(AppConfig):
    name = "tasks_app"
    verbose_name = "Tasks and runs"

    def ready(self) -> None:
        # Register the built-in handlers, then every installed app's `handlers` module.
        from tasks_app import builtin_handlers, recovery, retention  # noqa: F401 - registration, signals

        autodiscover_modules("handlers")
        post_migrate.connect(restore_sqlite_triggers, sender=self)
