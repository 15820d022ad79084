from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.db import connections
from django.db.migrations.recorder import MigrationRecorder
from django.db.models.signals import m2m_changed, post_delete, post_migrate, post_save
from django.utils.module_loading import autodiscover_modules

# The migration that installs db_triggers' statements.
INSTALLS_TRIGGERS = "0015_workflow_run_events"


def restore_sqlite_triggers(using: str = "default", **kwargs: Any) -> None:
    """SQLite drops a table's triggers when Django rebuilds the table for a later
    migration; put back any that went missing (MariaDB/MySQL keep them)."""
    from tasks_app import db_triggers  # app loading: it reads models' constants

    connection = connections[using]
    if connection.vendor != "sqlite":
        return
    # Only once the triggers' tables and columns all exist (migrating back, or part way).
    if ("tasks_app", INSTALLS_TRIGGERS) not in MigrationRecorder(connection).applied_migrations():
        return
    with connection.cursor() as cursor:
        for statement in db_triggers.statements("sqlite"):
            cursor.execute(statement.replace("CREATE TRIGGER ", "CREATE TRIGGER IF NOT EXISTS ", 1))


class TasksAppConfig(AppConfig):
    name = "tasks_app"
    verbose_name = "Tasks and runs"

    def ready(self) -> None:
        # The wiring, here because models must be loaded first (app loading): what follows
        # a move subscribes to lifecycle's hook; each handler gets its Celery task; the
        # worker registry's and retention's signals and tasks are connected by import.
        from tasks_app import (  # noqa: F401 - workers and retention connect by import
            alerts,
            broker,
            builtin_handlers,
            concurrency,
            execution,
            handlers,
            lifecycle,
            metrics,
            retention,
            workers,
            workflows,
        )
        from tasks_app.models import AlertRule

        lifecycle.subscribe(concurrency.release_finished)
        lifecycle.subscribe(workflows.advance_finished_steps)
        lifecycle.subscribe(broker.revoke_cancelled)
        lifecycle.subscribe(alerts.on_moves)
        lifecycle.subscribe(metrics.count_moves)
        # Each process keeps the enabled rules a second; a change of one, in any process, is
        # seen by the next evaluation of a run's end (alerts.rules_by_condition).
        for signal in (post_save, post_delete, m2m_changed):
            signal.connect(alerts.forget_rules, sender=AlertRule, dispatch_uid=f"forget_rules_{signal}")
        m2m_changed.connect(
            alerts.forget_rules, sender=AlertRule.channels.through, dispatch_uid="forget_rules_m2m"
        )
        handlers.on_register(execution.celery_task_for)
        autodiscover_modules("handlers")
        post_migrate.connect(restore_sqlite_triggers, sender=self)
