"""Two workers and two beats under load for a minute: no run executed twice, none lost."""

from __future__ import annotations

import time

import pytest
import redis
from django.conf import settings

from tasks_app import submission
from tasks_app.lifecycle import TERMINAL_STATES, RunState
from tasks_app.models import Run, Schedule, Task
from tasks_app.submission import RunRequest
from tests.conftest import wait_until
from tests.integration.conftest import Process, process_env
from tests.support.handlers import EXECUTIONS

S = RunState
pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
LOAD_SECONDS = 60
PER_SECOND = 20


def test_two_workers_and_two_beats_under_load_lose_nothing_and_run_nothing_twice(
    platform, tmp_path, report
) -> None:
    broker = redis.Redis.from_url(settings.REDIS_URL)
    broker.delete(EXECUTIONS)
    env = process_env()
    extra = [
        Process("worker2", ["worker", "-l", "info", "-c", "2", "-n", "itest2@%h", "--without-gossip",
                            "--without-mingle"], env, tmp_path / "worker2.log"),
        Process("beat2", ["beat", "-l", "info", "-s", str(tmp_path / "beat2")], env, tmp_path / "beat2.log"),
    ]  # fmt: skip
    try:
        wait_until(lambda: "beat: Starting" in extra[1].output(), timeout=60, what="the second beat")
        task = Task.objects.create(name="count", handler="tests.count", max_retries=3, retry_backoff=0.1)
        schedules = [Schedule.objects.create(task=task, cron="* * * * * *") for _ in range(2)]
        submitted = 0
        deadline = time.monotonic() + LOAD_SECONDS
        while time.monotonic() < deadline:  # a steady stream of submissions
            submission.submit_many([RunRequest(task=task) for _ in range(PER_SECOND)], by="load")
            submitted += PER_SECOND
            time.sleep(1)  # pacing the load generator, not waiting for a result
        Schedule.objects.filter(pk__in=[s.pk for s in schedules]).update(enabled=False)
        wait_until(
            lambda: not Run.objects.exclude(state__in=TERMINAL_STATES).exists(),
            timeout=120,
            what="the backlog",
        )

        runs = Run.objects.filter(task=task)
        accepted = runs.count()
        fired = runs.filter(trigger="schedule").count()
        completed = runs.filter(state=S.COMPLETED).count()
        executions = {int(k): int(v) for k, v in broker.hgetall(EXECUTIONS).items()}
        duplicated = sum(1 for n in executions.values() if n > 1)
        lost = accepted - completed
        instants = list(runs.filter(trigger="schedule").values_list("schedule_id", "scheduled_for"))
        report(f"injected: {LOAD_SECONDS}s of load on 2 workers + 2 beats; counted: accepted {accepted} "
              f"({submitted} submitted, {fired} scheduled), completed {completed}, duplicated {duplicated}, "
              f"lost {lost}, duplicate schedule instants {len(instants) - len(set(instants))}")  # fmt: skip
        assert accepted == submitted + fired
        assert duplicated == 0
        assert lost == 0
        assert len(instants) == len(set(instants))
        assert set(executions) == set(runs.values_list("pk", flat=True))
    finally:
        for process in extra:
            process.stop()
