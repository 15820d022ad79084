"""Run.dispatches is called message_number in the code; the column keeps its name, so
processes of the previous release go on working while this one is deployed."""

from __future__ import annotations

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("tasks_app", "0015_workflow_run_events")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.RenameField(model_name="run", old_name="dispatches", new_name="message_number"),
                migrations.AlterField(
                    model_name="run",
                    name="message_number",
                    field=models.PositiveIntegerField(db_column="dispatches", default=0),
                ),
            ],
            database_operations=[],
        )
    ]
