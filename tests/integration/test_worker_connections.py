"""A real worker keeps each pool process's database connection across runs (Celery's Django
fixup would open one per task: CELERY_DB_REUSE_MAX in settings.py)."""

from __future__ import annotations

import pytest

from tasks_app import submission
from tasks_app.lifecycle import TERMINAL_STATES, RunState
from tasks_app.models import Run, Task
from tasks_app.submission import RunRequest
from tests.conftest import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
RUNS = 50
CONCURRENCY = 2  # the platform fixture's worker (-c 2)


def test_pool_processes_reuse_their_database_connection_across_runs(platform) -> None:
    task = Task.objects.create(name="connection", handler="tests.connection")
    ids = [
        run.pk for run in submission.submit_many([RunRequest(task=task) for _ in range(RUNS)], by="tester")
    ]
    finished = Run.objects.filter(pk__in=ids, state__in=TERMINAL_STATES)
    wait_until(lambda: finished.count() == RUNS, timeout=60, what=f"{RUNS} runs to finish")

    outcomes = list(Run.objects.filter(pk__in=ids).values_list("state", "result"))
    assert {state for state, _ in outcomes} == {RunState.COMPLETED}
    pids = {result["pid"] for _, result in outcomes}
    connection_ids = {result["connection_id"] for _, result in outcomes}
    assert len(pids) <= CONCURRENCY
    # One connection per pool process; one more for a connection found older than
    # CONN_MAX_AGE (the session's worker may be older than that) and replaced.
    assert len(connection_ids) <= CONCURRENCY + 1, (
        f"{len(connection_ids)} connections over {RUNS} runs in {len(pids)} processes"
    )
