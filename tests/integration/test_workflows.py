"""Workflows on a real worker (and a real beat for the scheduled one)."""

from __future__ import annotations

import pytest

from tasks_app import workflows
from tasks_app.lifecycle import ACTIVE_STATES, RunState
from tasks_app.models import Run, Schedule, Task, Workflow, WorkflowRun
from tasks_app.models.workflows import check_steps
from tests.conftest import wait_until

S = RunState
pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def diamond(b_task: str, rule: str = "all_success") -> Workflow:
    steps = [
        {"key": "A", "task": "noop"},
        {"key": "B", "task": b_task, "depends_on": ["A"]},
        {"key": "C", "task": "noop", "depends_on": ["A"]},
        {"key": "D", "task": "noop", "depends_on": ["B", "C"], "trigger_rule": rule},
    ]
    return Workflow.objects.create(name=f"diamond-{rule}", steps=check_steps(steps, {"noop", b_task}))


def finished(workflow_run: WorkflowRun, timeout: float = 30) -> WorkflowRun:
    def done() -> WorkflowRun | None:
        workflow_run.refresh_from_db()
        return workflow_run if workflow_run.state != "running" else None

    return wait_until(done, timeout=timeout, what=f"workflow run {workflow_run.pk} to finish")


def states(workflow_run: WorkflowRun) -> dict[str, str]:
    return {key: run.state for key, run in workflows.latest_runs(workflow_run.pk).items()}


@pytest.fixture
def tasks(platform) -> None:
    Task.objects.create(name="noop", handler="builtin.noop")
    # Fails its first attempt only: a workflow retry is its second attempt, so it completes.
    Task.objects.create(name="shaky", handler="builtin.flaky", kwargs={"fail_times": 1})
    Task.objects.create(name="slow", handler="builtin.sleep", kwargs={"seconds": 60})


def test_failing_step_skips_downstream_and_retry_runs_only_it_and_its_downstream_again(tasks) -> None:
    workflow_run = finished(workflows.start(diamond("shaky"), by="tester"))
    assert workflow_run.state == "failed"
    assert states(workflow_run) == {"A": S.COMPLETED, "B": S.FAILED, "C": S.COMPLETED, "D": S.SKIPPED}
    before = workflows.latest_runs(workflow_run.pk)

    workflows.retry(workflow_run, by="tester")  # attempt 2 of B's run: past fail_times 1
    workflow_run = finished(workflow_run)

    after = workflows.latest_runs(workflow_run.pk)
    assert workflow_run.state == "completed"
    assert {key: run.pk for key, run in after.items()} == {key: run.pk for key, run in before.items()}
    assert {key for key in "ABCD" if after[key].started_at != before[key].started_at} == {"B", "D"}
    assert (after["B"].attempt, after["A"].attempt) == (2, 1)  # a new attempt of B; A untouched
    assert set(after["D"].result["upstream"]) == {"B", "C"}


def test_all_done_runs_downstream_of_a_failed_step(tasks) -> None:
    workflow_run = finished(workflows.start(diamond("shaky", rule="all_done"), by="tester"))
    assert states(workflow_run) == {"A": S.COMPLETED, "B": S.FAILED, "C": S.COMPLETED, "D": S.COMPLETED}
    assert workflow_run.state == "failed"  # B failed, though D ran


def test_cancel_in_the_middle_leaves_nothing_running_and_nothing_new(tasks) -> None:
    workflow_run = workflows.start(diamond("slow"), by="tester")
    wait_until(lambda: states(workflow_run)["B"] == S.RUNNING, timeout=30, what="B to run")

    workflows.cancel(workflow_run, by="tester")

    assert workflow_run.state == "cancelled"
    assert states(workflow_run)["B"] == S.CANCELLED and states(workflow_run)["D"] == S.CANCELLED
    # The sleeping B was stopped: the worker takes a new workflow's step at once.
    single = check_steps([{"key": "X", "task": "noop"}], {"noop"})
    other = workflows.start(Workflow.objects.create(name="one", steps=single))
    assert finished(other, timeout=20).state == "completed"
    assert not Run.objects.filter(workflow_run=workflow_run, state__in=ACTIVE_STATES).exists()
    assert workflows.latest_runs(workflow_run.pk)["D"].started_at is None


def test_a_schedule_fires_the_workflow_once_per_instant(tasks) -> None:
    workflow = diamond("noop")
    schedule = Schedule.objects.create(workflow=workflow, interval_seconds=2)
    wait_until(
        lambda: WorkflowRun.objects.filter(schedule=schedule).count() >= 2, timeout=30, what="two fires"
    )
    Schedule.objects.filter(pk=schedule.pk).update(enabled=False)

    fired = list(WorkflowRun.objects.filter(schedule=schedule).order_by("scheduled_for"))
    assert len({run.scheduled_for for run in fired}) == len(fired)
    for workflow_run in fired:
        assert finished(workflow_run).state == "completed"
        assert Run.objects.filter(workflow_run=workflow_run).count() == 4
