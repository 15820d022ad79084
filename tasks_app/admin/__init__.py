"""The admin: a window on the same domain methods the API uses, one module per concern.

Importing the package registers every ModelAdmin (Django's admin autodiscovery imports it).
"""

from tasks_app.admin import alerts, beat, dashboard, runs, schedules, tasks, workers, workflows  # noqa: F401
