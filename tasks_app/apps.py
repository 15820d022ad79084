from __future__ import annotations

from django.apps import AppConfig
from django.utils.module_loading import autodiscover_modules


class TasksAppConfig(AppConfig):
    name = "tasks_app"
    verbose_name = "Tasks and runs"

    def ready(self) -> None:
        # Register the built-in handlers, then every installed app's `handlers` module.
        from tasks_app import builtin_handlers, recovery, retention  # noqa: F401 - registration, signals

        autodiscover_modules("handlers")
