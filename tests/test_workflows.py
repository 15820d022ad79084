"""Workflow definitions, trigger rules and the DAG engine, steps executed in-process."""

from __future__ import annotations

import datetime as dt

import pytest

from tasks_app import execution, scheduling, workflows
from tasks_app.execution import execute
from tasks_app.lifecycle import RunState
from tasks_app.models import Run, Schedule, Workflow, WorkflowRun
from tasks_app.models.workflows import InvalidWorkflow, check_steps
from tasks_app.recovery import advance_stalled_workflows
from tasks_app.workflows import RUN, SKIP, WAIT, verdict
from tests.conftest import queued_ids

S = RunState
TASKS = {"ok", "boom"}


def step(key, depends_on=(), task="ok", rule="all_success", **kwargs):
    return {"key": key, "task": task, "depends_on": list(depends_on), "trigger_rule": rule, "kwargs": kwargs}


# --- definitions --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([], "non-empty list"),
        ([step("a", task="missing")], "no task named 'missing'"),
        ([step("a"), step("a")], "Duplicate step key 'a'"),
        ([step("a", ["zz"])], "unknown step(s) 'zz'"),
        ([step("a", ["c"]), step("b", ["a"]), step("c", ["b"])], "cycle"),
        ([step("a", rule="sometimes")], "trigger_rule"),
        ([{"task": "ok"}], "needs a key"),
    ],
)
def test_invalid_definitions_are_refused(steps, message) -> None:
    with pytest.raises(InvalidWorkflow, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_steps(steps, TASKS)


def test_a_cycle_is_named_by_its_keys() -> None:
    with pytest.raises(InvalidWorkflow) as refused:
        check_steps([step("a", ["c"]), step("b", ["a"]), step("c", ["b"]), step("d")], TASKS)
    assert {"a", "b", "c"} <= set(str(refused.value).split(": ")[1].rstrip(".").split(" -> "))
    assert "d" not in str(refused.value)


def test_valid_definition_is_normalised() -> None:
    steps = check_steps(
        [{"key": "a", "task": "ok"}, {"key": "b", "task": "ok", "depends_on": ["a", "a"]}], TASKS
    )
    assert steps[1] == {
        "key": "b",
        "task": "ok",
        "kwargs": {},
        "depends_on": ["a"],
        "trigger_rule": "all_success",
    }


# --- trigger rules: the truth table --------------------------------------------------

C, F, K, X, P = S.COMPLETED, S.FAILED, S.SKIPPED, S.CANCELLED, S.RUNNING


@pytest.mark.parametrize(
    ("rule", "upstream", "expected"),
    [
        ("all_success", [], RUN),
        ("all_success", [C, C], RUN),
        ("all_success", [C, P], WAIT),
        ("all_success", [C, F], SKIP),
        ("all_success", [F, P], SKIP),
        ("all_success", [K], SKIP),
        ("all_success", [X, C], SKIP),
        ("all_done", [C, F], RUN),
        ("all_done", [K, X], RUN),
        ("all_done", [C, P], WAIT),
        ("one_success", [C, P], RUN),
        ("one_success", [F, P], WAIT),
        ("one_success", [F, K], SKIP),
        ("one_success", [F, C], RUN),
    ],
)
def test_trigger_rule_truth_table(rule, upstream, expected) -> None:
    assert verdict(rule, upstream) == expected


# --- the engine ------------------------------------------------------------------------


@pytest.fixture
def run_step(django_capture_on_commit_callbacks):
    def run_(workflow_run: WorkflowRun, key: str) -> Run:
        run = workflows.latest_runs(workflow_run.pk)[key]
        assert run.state == S.PENDING, f"{key} is {run.state}"
        with django_capture_on_commit_callbacks(execute=True):
            execute(run.pk, run.message_number, hostname="w1")
        run.refresh_from_db()
        return run

    return run_


@pytest.fixture
def diamond(make_task):
    def make(rule="all_success", b_task="ok") -> Workflow:
        make_task(name="ok", handler="builtin.noop")
        make_task(name="boom", handler="tests.explode")
        steps = [
            step("A", x=1),
            step("B", ["A"], task=b_task),
            step("C", ["A"]),
            step("D", ["B", "C"], rule=rule),
        ]
        return Workflow.objects.create(name="diamond", steps=check_steps(steps, TASKS))

    return make


def start(workflow, django_capture_on_commit_callbacks) -> WorkflowRun:
    with django_capture_on_commit_callbacks(execute=True):
        return workflows.start(workflow, by="tester")


def states(workflow_run) -> dict[str, str]:
    return {key: run.state for key, run in workflows.latest_runs(workflow_run.pk).items()}


def test_diamond_fans_out_and_in_and_passes_results(
    diamond, run_step, broker, django_capture_on_commit_callbacks
) -> None:
    workflow_run = start(diamond(), django_capture_on_commit_callbacks)
    assert states(workflow_run) == {"A": S.PENDING, "B": S.CREATED, "C": S.CREATED, "D": S.CREATED}

    run_step(workflow_run, "A")
    assert states(workflow_run) == {"A": S.COMPLETED, "B": S.PENDING, "C": S.PENDING, "D": S.CREATED}
    run_step(workflow_run, "B")
    assert states(workflow_run)["D"] == S.CREATED  # fan-in waits for C
    run_step(workflow_run, "C")
    d = run_step(workflow_run, "D")

    assert d.result["upstream"] == {
        "B": {"kwargs": {}, "upstream": {"A": {"kwargs": {"x": 1}, "upstream": {}}}},
        "C": {"kwargs": {}, "upstream": {"A": {"kwargs": {"x": 1}, "upstream": {}}}},
    }
    workflow_run.refresh_from_db()
    assert workflow_run.state == "completed" and workflow_run.finished_at is not None
    assert d.trigger == "workflow" and d.step == "D"


def test_failed_step_skips_downstream_under_all_success(
    diamond, run_step, broker, django_capture_on_commit_callbacks
) -> None:
    workflow_run = start(diamond(b_task="boom"), django_capture_on_commit_callbacks)
    run_step(workflow_run, "A")
    run_step(workflow_run, "B")
    run_step(workflow_run, "C")

    assert states(workflow_run) == {"A": S.COMPLETED, "B": S.FAILED, "C": S.COMPLETED, "D": S.SKIPPED}
    d = workflows.latest_runs(workflow_run.pk)["D"]
    assert d.events.last().reason == "all_success not met: B failed, C pending"  # decided at once
    workflow_run.refresh_from_db()
    assert workflow_run.state == "failed"


def test_all_done_runs_downstream_of_a_failure(
    diamond, run_step, broker, django_capture_on_commit_callbacks
) -> None:
    workflow_run = start(diamond(rule="all_done", b_task="boom"), django_capture_on_commit_callbacks)
    for key in "ABC":
        run_step(workflow_run, key)
    run_step(workflow_run, "D")
    assert states(workflow_run)["D"] == S.COMPLETED


def test_retry_is_a_new_attempt_of_the_failed_step_and_its_skipped_downstream_back_to_created(
    diamond, run_step, broker, django_capture_on_commit_callbacks
) -> None:
    from tasks_app.models import Task

    workflow_run = start(diamond(b_task="boom"), django_capture_on_commit_callbacks)
    for key in "ABC":
        run_step(workflow_run, key)
    before = workflows.latest_runs(workflow_run.pk)
    Task.objects.filter(name="boom").update(handler="builtin.noop")  # the cause is fixed

    with django_capture_on_commit_callbacks(execute=True):
        workflows.retry(workflow_run, by="tester")

    after = workflows.latest_runs(workflow_run.pk)
    assert {key: run.pk for key, run in after.items()} == {key: run.pk for key, run in before.items()}
    assert states(workflow_run) == {"A": S.COMPLETED, "B": S.PENDING, "C": S.COMPLETED, "D": S.CREATED}
    assert after["A"].result == before["A"].result  # completed steps untouched
    assert (after["B"].message_number, after["B"].retries) == (2, 0)  # a new attempt, its own message
    d_moves = list(after["D"].events.values_list("from_state", "to_state", "actor_name"))
    assert d_moves[-1] == (S.SKIPPED, S.CREATED, "tester")
    run_step(workflow_run, "B")
    run_step(workflow_run, "D")

    workflow_run.refresh_from_db()
    assert workflow_run.state == "completed"
    assert Run.objects.filter(workflow_run=workflow_run).count() == 4
    assert after["B"].events.filter(to_state=S.RUNNING).count() == 2  # attempts 1 and 2


def test_a_retried_step_below_another_waits_for_it(
    make_task, run_step, broker, django_capture_on_commit_callbacks
):
    from tasks_app.models import Task

    make_task(name="boom", handler="tests.explode")
    steps = [step("A", task="boom"), step("B", ["A"], task="boom", rule="all_done")]
    workflow = Workflow.objects.create(name="chain", steps=check_steps(steps, {"boom"}))
    workflow_run = start(workflow, django_capture_on_commit_callbacks)
    run_step(workflow_run, "A")
    run_step(workflow_run, "B")  # all_done: it ran after A failed, and failed too
    assert states(workflow_run) == {"A": S.FAILED, "B": S.FAILED}
    Task.objects.filter(name="boom").update(handler="builtin.noop")

    with django_capture_on_commit_callbacks(execute=True):
        workflows.retry(workflow_run, by="tester")
    assert states(workflow_run) == {"A": S.PENDING, "B": S.FAILED}  # B waits for A's new attempt
    run_step(workflow_run, "A")
    assert states(workflow_run) == {"A": S.COMPLETED, "B": S.PENDING}
    run_step(workflow_run, "B")

    workflow_run.refresh_from_db()
    assert (workflow_run.state, workflow_run.awaiting_retry) == ("completed", [])


def test_cancel_in_the_middle_leaves_nothing_running_and_nothing_new(
    diamond, run_step, broker, django_capture_on_commit_callbacks
) -> None:
    workflow_run = start(diamond(), django_capture_on_commit_callbacks)
    run_step(workflow_run, "A")

    with django_capture_on_commit_callbacks(execute=True):
        workflows.cancel(workflow_run, by="tester")

    assert states(workflow_run) == {"A": S.COMPLETED, "B": S.CANCELLED, "C": S.CANCELLED, "D": S.CANCELLED}
    assert workflow_run.state == "cancelled"
    b = workflows.latest_runs(workflow_run.pk)["B"]
    execute(b.pk, b.message_number, hostname="w1")  # its message arrives anyway
    assert states(workflow_run)["B"] == S.CANCELLED
    with pytest.raises(workflows.WorkflowConflict):
        workflows.cancel(workflow_run)


def test_two_completions_at_once_send_the_fan_in_step_once(
    diamond, run_step, broker, django_capture_on_commit_callbacks
) -> None:
    workflow_run = start(diamond(), django_capture_on_commit_callbacks)
    run_step(workflow_run, "A")
    with django_capture_on_commit_callbacks(execute=False):  # the advances below stand for theirs
        for key in "BC":
            run = workflows.latest_runs(workflow_run.pk)[key]
            execution.claim(run, run.message_number, "w1")
            execution.complete(run, {}, "w1")
    workflows.advance(workflow_run.pk)
    workflows.advance(workflow_run.pk)

    d = workflows.latest_runs(workflow_run.pk)["D"]
    assert (d.state, d.message_number) == (S.PENDING, 1)
    assert d.events.filter(to_state=S.PENDING).count() == 1


def test_result_over_the_limit_fails_the_step_clearly(
    make_task, run_step, broker, settings, django_capture_on_commit_callbacks
) -> None:
    settings.RUN_RESULT_MAX_BYTES = 50
    make_task(name="big", handler="tests.echo_big")
    workflow = Workflow.objects.create(
        name="w", steps=check_steps([step("A", task="big", size=100)], {"big"})
    )
    workflow_run = start(workflow, django_capture_on_commit_callbacks)
    a = run_step(workflow_run, "A")
    assert (a.state, a.error["type"]) == (S.FAILED, "ResultTooLarge")


def test_a_schedule_fires_a_workflow_once_per_instant(
    diamond, broker, django_capture_on_commit_callbacks
) -> None:
    workflow = diamond()
    t0 = dt.datetime(2026, 3, 2, 12, tzinfo=dt.UTC)
    schedule = Schedule.objects.create(workflow=workflow, interval_seconds=60, start_at=t0, next_fire_at=t0)
    with django_capture_on_commit_callbacks(execute=True):
        scheduling.fire_due(now=t0)
        Schedule.objects.filter(pk=schedule.pk).update(next_fire_at=t0)  # as a stale scheduler saw it
        scheduling.fire_due(now=t0)
    workflow_run = WorkflowRun.objects.get(schedule=schedule)
    assert workflow_run.scheduled_for == t0
    assert states(workflow_run)["A"] == S.PENDING


def test_a_workflow_run_whose_advance_was_lost_is_advanced_by_the_sweep(
    diamond, broker, django_capture_on_commit_callbacks
) -> None:
    workflow = diamond()
    stalled = start(workflow, django_capture_on_commit_callbacks)
    copy = Workflow.objects.create(name="busy", steps=workflow.steps)
    busy = start(copy, django_capture_on_commit_callbacks)
    a = workflows.latest_runs(stalled.pk)["A"]
    with django_capture_on_commit_callbacks(execute=False):  # its process dies before the advance
        execute(a.pk, a.message_number, hostname="w1")
    assert states(stalled) == {"A": S.COMPLETED, "B": S.CREATED, "C": S.CREATED, "D": S.CREATED}

    with django_capture_on_commit_callbacks(execute=True):
        assert advance_stalled_workflows() == 1  # not `busy`: its A is in flight

    assert states(stalled) == {"A": S.COMPLETED, "B": S.PENDING, "C": S.PENDING, "D": S.CREATED}
    assert states(busy)["A"] == S.PENDING
    sent = workflows.latest_runs(stalled.pk)
    assert {sent["B"].message_id, sent["C"].message_id} <= set(queued_ids(broker))


# --- retry from one step ------------------------------------------------------------


@pytest.fixture
def two_branches(make_task, run_step, broker, django_capture_on_commit_callbacks):
    """A, then B -> D and C -> E; B and C fail, so D and E are skipped: the workflow run failed."""
    make_task(name="ok", handler="builtin.noop")
    make_task(name="boom", handler="tests.explode")
    steps = [step("A"), step("B", ["A"], task="boom"), step("C", ["A"], task="boom"), step("D", ["B"]),
             step("E", ["C"])]  # fmt: skip
    workflow = Workflow.objects.create(name="branches", steps=check_steps(steps, TASKS))
    workflow_run = start(workflow, django_capture_on_commit_callbacks)
    for key in "ABC":
        run_step(workflow_run, key)
    workflow_run.refresh_from_db()
    assert workflow_run.state == "failed"
    assert states(workflow_run) == {"A": S.COMPLETED, "B": S.FAILED, "C": S.FAILED, "D": S.SKIPPED,
                                    "E": S.SKIPPED}  # fmt: skip
    return workflow_run


def test_retry_from_a_step_runs_it_and_its_downstream_steps_only(
    two_branches, run_step, django_capture_on_commit_callbacks
) -> None:
    from tasks_app.models import Task

    workflow_run = two_branches
    before = workflows.latest_runs(workflow_run.pk)
    assert workflows.steps_to_retry(workflow_run, from_step="B") == {"B", "D"}
    Task.objects.filter(name="boom").update(handler="builtin.noop")

    with django_capture_on_commit_callbacks(execute=True):
        workflows.retry_from(workflow_run, "B", by="tester")

    assert workflow_run.state == "running"
    assert states(workflow_run) == {"A": S.COMPLETED, "B": S.PENDING, "C": S.FAILED, "D": S.CREATED,
                                    "E": S.SKIPPED}  # fmt: skip
    after = workflows.latest_runs(workflow_run.pk)
    assert after["B"].pk == before["B"].pk and after["B"].message_number == 2  # a new attempt
    assert after["C"].events.count() == before["C"].events.count()  # untouched
    assert workflow_run.events.order_by("id").last().reason == "retried from B: B, D"
    run_step(workflow_run, "B")
    run_step(workflow_run, "D")

    workflow_run.refresh_from_db()
    assert workflow_run.state == "failed"  # C still did not complete
    assert workflow_run.events.order_by("id").last().reason == "every step finished; C did not complete"
    assert states(workflow_run)["D"] == S.COMPLETED


def test_retry_from_a_step_leaves_its_completed_downstream_steps_alone(
    make_task, run_step, broker, django_capture_on_commit_callbacks
) -> None:
    from tasks_app.models import Task

    make_task(name="boom", handler="tests.explode")
    make_task(name="ok", handler="builtin.noop")
    steps = [step("A", task="boom"), step("B", ["A"], rule="all_done")]
    workflow = Workflow.objects.create(name="chain", steps=check_steps(steps, TASKS))
    workflow_run = start(workflow, django_capture_on_commit_callbacks)
    run_step(workflow_run, "A")
    b = run_step(workflow_run, "B")  # all_done: it ran after A failed
    Task.objects.filter(name="boom").update(handler="builtin.noop")

    with django_capture_on_commit_callbacks(execute=True):
        workflows.retry_from(workflow_run, "A", by="tester")
    assert states(workflow_run) == {"A": S.PENDING, "B": S.COMPLETED}
    run_step(workflow_run, "A")

    workflow_run.refresh_from_db()
    assert workflow_run.state == "completed"
    assert workflows.latest_runs(workflow_run.pk)["B"].result == b.result


def test_retry_from_is_refused_as_retry_is_and_changes_nothing(
    two_branches, django_capture_on_commit_callbacks
) -> None:
    from tasks_app.models import RunEvent

    workflow_run = two_branches
    moves = RunEvent.objects.filter(run__workflow_run=workflow_run).count()

    with pytest.raises(workflows.WorkflowConflict, match=r"Step A of workflow run \d+ is completed"):
        workflows.retry_from(workflow_run, "A")
    with pytest.raises(InvalidWorkflow, match="has no step 'Z'"):
        workflows.retry_from(workflow_run, "Z")
    running = start(workflow_run.workflow, django_capture_on_commit_callbacks)
    with pytest.raises(workflows.WorkflowConflict, match="is running: only a failed or cancelled one"):
        workflows.retry_from(running, "B")

    workflow_run.refresh_from_db()
    assert (workflow_run.state, workflow_run.awaiting_retry) == ("failed", [])
    assert RunEvent.objects.filter(run__workflow_run=workflow_run).count() == moves


def test_retry_from_a_step_whose_upstream_would_skip_it_again_is_refused(
    diamond, django_capture_on_commit_callbacks
) -> None:
    workflow_run = start(diamond(), django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=True):
        workflows.cancel(workflow_run, by="tester")
    assert states(workflow_run)["B"] == S.CANCELLED

    with pytest.raises(workflows.WorkflowConflict) as refused:
        workflows.retry_from(workflow_run, "B")

    assert "would be skipped again (all_success not met: A cancelled)" in str(refused.value)
    workflow_run.refresh_from_db()
    assert (workflow_run.state, workflow_run.awaiting_retry) == ("cancelled", [])
    assert states(workflow_run)["B"] == S.CANCELLED
