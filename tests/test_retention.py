from __future__ import annotations

import datetime as dt

from tasks_app.lifecycle import RunState
from tasks_app.models import Run, RunEvent, RunLog
from tasks_app.retention import prune

S = RunState
NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


def test_prune_deletes_old_finished_runs_with_their_history_in_batches(make_task, make_run, settings) -> None:
    settings.RUN_RETENTION_DAYS = 30
    task = make_task()
    old = [make_run(task, S.COMPLETED, finished_at=NOW - dt.timedelta(days=40)) for _ in range(5)]
    for run in old:
        RunEvent.objects.create(run=run, to_state=S.COMPLETED)
        RunLog.objects.create(run=run, level="INFO", message="x")
    recent = make_run(task, S.FAILED, finished_at=NOW - dt.timedelta(days=2))
    active = make_run(task, S.RUNNING, created_at=NOW - dt.timedelta(days=90))

    assert prune(now=NOW, batch=2) == 5

    assert set(Run.objects.values_list("pk", flat=True)) == {recent.pk, active.pk}
    assert not RunEvent.objects.filter(run_id__in=[r.pk for r in old]).exists()
    assert not RunLog.objects.exists()


def test_pruning_is_a_built_in_beat_entry(settings) -> None:
    entry = settings.CELERY_BEAT_SCHEDULE["prune old runs"]
    assert entry["task"] == "tasks_app.prune"
    from scheduler_site.celery import app

    assert "tasks_app.prune" in app.tasks
