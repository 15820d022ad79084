"""An index on django-celery-beat's PeriodicTask.task, for PlatformScheduler.enabled_models_qs().

Every schedule has a mirror PeriodicTask (definitions.mirror), and beat reads its enabled
entries except the mirrors at start, on every change of a PeriodicTask and every 5
minutes. Without an index on `task` that read scans every mirror: 2.4 s at 1,000,000
schedules, twice at start (bench/scheduler.py); with it, a range read of the few entries
that are not mirrors. django-celery-beat's model does not declare it, so it is added here,
to its table, and the model state is left alone (makemigrations sees nothing to do).
"""

from django.db import migrations, models

INDEX = models.Index(fields=["task"], name="periodictask_task_platform")


def add_index(apps, schema_editor):
    schema_editor.add_index(apps.get_model("django_celery_beat", "PeriodicTask"), INDEX)


def remove_index(apps, schema_editor):
    schema_editor.remove_index(apps.get_model("django_celery_beat", "PeriodicTask"), INDEX)


class Migration(migrations.Migration):
    dependencies = [
        ("tasks_app", "0021_run_list_indexes"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    # Not atomic: MariaDB cannot run DDL in a transaction it could roll back.
    operations = [migrations.RunPython(add_index, remove_index, atomic=False)]
