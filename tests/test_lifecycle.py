from __future__ import annotations

import datetime as dt
import itertools

import pytest
from django.db import transaction
from django.utils import timezone

from tasks_app import execution, lifecycle
from tasks_app.choices import MOVED_OUTSIDE_LIFECYCLE, WorkflowState
from tasks_app.lifecycle import (
    TERMINAL_STATES,
    TRANSITIONS,
    WORKFLOW_TRANSITIONS,
    InvalidTransition,
    RunState,
    is_legal,
    move_fields,
    sources_of,
)
from tasks_app.models import Run, RunEvent, Workflow, WorkflowRun, WorkflowRunEvent

S = RunState

# The contract's table (docs/states.md), written out again so a change to TRANSITIONS shows here.
CONTRACT = {
    (S.CREATED, S.PENDING), (S.CREATED, S.PAUSED), (S.CREATED, S.CANCELLED), (S.CREATED, S.SKIPPED),
    (S.PENDING, S.RUNNING), (S.PENDING, S.PAUSED), (S.PENDING, S.CANCELLED), (S.PENDING, S.FAILED),
    (S.RUNNING, S.COMPLETED), (S.RUNNING, S.FAILED), (S.RUNNING, S.RETRYING),
    (S.RUNNING, S.CANCELLED), (S.RUNNING, S.PAUSED),
    (S.RETRYING, S.PENDING), (S.RETRYING, S.PAUSED), (S.RETRYING, S.CANCELLED),
    (S.PAUSED, S.PENDING), (S.PAUSED, S.CANCELLED),
    (S.FAILED, S.PENDING), (S.CANCELLED, S.PENDING), (S.SKIPPED, S.CREATED),
}  # fmt: skip

ALL_PAIRS = list(itertools.product(RunState, RunState))


def test_transition_table_is_the_contracts() -> None:
    table = {(source, target) for source, targets in TRANSITIONS.items() for target in targets}
    assert table == CONTRACT


def test_sources_of_inverts_the_table() -> None:
    assert sources_of(S.PENDING) == {S.CREATED, S.RETRYING, S.PAUSED, S.FAILED, S.CANCELLED}
    assert sources_of(S.CREATED) == {S.SKIPPED}  # a workflow retry's, only


@pytest.mark.parametrize(("source", "target"), sorted(CONTRACT))
def test_legal_move_changes_state_and_records_event(make_run, task, source, target) -> None:
    run = make_run(task, source)

    moved_from = lifecycle.move(run, target, reason="because", actor="user", actor_name="alice")

    assert moved_from == source
    stored = Run.objects.get(pk=run.pk)
    assert stored.state == target
    assert (stored.finished_at is not None) == (target in TERMINAL_STATES)
    event = RunEvent.objects.get(run=run)
    assert (event.from_state, event.to_state, event.reason, event.actor, event.actor_name) == (
        source,
        target,
        "because",
        "user",
        "alice",
    )


@pytest.mark.parametrize(("source", "target"), [pair for pair in ALL_PAIRS if pair not in CONTRACT])
def test_illegal_move_is_refused_and_changes_nothing(make_run, task, source, target) -> None:
    run = make_run(task, source)
    before = Run.objects.filter(pk=run.pk).values().get()

    with pytest.raises(InvalidTransition) as refused:
        lifecycle.move(run, target)

    assert refused.value.current == source
    assert not is_legal(source, target)
    assert Run.objects.filter(pk=run.pk).values().get() == before
    assert not RunEvent.objects.filter(run=run).exists()


def test_move_follows_a_concurrent_change_of_state(make_run, task) -> None:
    run = make_run(task, S.PENDING)
    # Another process moved it on since this instance was read.
    Run.objects.filter(pk=run.pk).update(state=S.PAUSED)

    assert lifecycle.move(run, S.CANCELLED) == S.PAUSED
    assert RunEvent.objects.filter(run=run).last().from_state == S.PAUSED


def test_every_state_change_gets_its_event_even_from_a_bulk_update(make_run, task) -> None:
    runs = [make_run(task, S.CREATED) for _ in range(3)]
    at = timezone.now()

    Run.objects.filter(pk__in=[r.pk for r in runs]).update(
        **move_fields(S.CANCELLED, at=at, reason="bulk", actor="user", actor_name="ops")
    )

    events = RunEvent.objects.filter(run__in=runs)
    assert sorted(events.values_list("run_id", flat=True)) == sorted(r.pk for r in runs)
    assert {(e.from_state, e.to_state, e.at, e.reason, e.actor_name) for e in events} == {
        (S.CREATED, S.CANCELLED, at, "bulk", "ops")
    }


def test_an_update_that_keeps_the_state_records_no_event(make_run, task) -> None:
    run = make_run(task, S.RUNNING)
    Run.objects.filter(pk=run.pk).update(progress={"fraction": 0.5, "message": ""})
    assert not RunEvent.objects.filter(run=run).exists()


def test_move_refused_when_concurrent_change_made_it_illegal(make_run, task) -> None:
    run = make_run(task, S.PENDING)
    Run.objects.filter(pk=run.pk).update(state=S.SKIPPED, finished_at=run.created_at)

    with pytest.raises(InvalidTransition):
        lifecycle.move(run, S.CANCELLED)
    assert Run.objects.get(pk=run.pk).state == S.SKIPPED


def test_claim_with_a_stale_message_number_is_refused(make_run, task) -> None:
    run = make_run(task, S.PENDING, message_number=2)

    with pytest.raises(InvalidTransition):
        execution.claim(run, message_number=1, hostname="w1")
    assert Run.objects.get(pk=run.pk).state == S.PENDING

    execution.claim(run, message_number=2, hostname="w1")
    stored = Run.objects.get(pk=run.pk)
    assert (stored.state, stored.attempt, stored.worker) == (S.RUNNING, 1, "w1")


def test_a_message_cannot_claim_a_run_twice(make_run, task) -> None:
    run = make_run(task, S.PENDING)
    execution.claim(run, message_number=1, hostname="w1")

    duplicate = Run.objects.get(pk=run.pk)
    duplicate.state = S.PENDING  # as a second worker might have read it
    with pytest.raises(InvalidTransition):
        execution.claim(duplicate, message_number=1, hostname="w2")
    assert Run.objects.get(pk=run.pk).attempt == 1


def test_a_state_written_without_lifecycles_columns_is_recorded_as_such(make_run, task) -> None:
    run = make_run(task, S.PENDING, state_reason="submitted", state_actor="user", state_actor_name="alice")

    Run.objects.filter(pk=run.pk).update(state=S.CANCELLED, finished_at=timezone.now())  # plain SQL would

    event = RunEvent.objects.filter(run=run).last()
    assert (event.from_state, event.to_state, event.reason, event.actor, event.actor_name) == (
        S.PENDING,
        S.CANCELLED,
        MOVED_OUTSIDE_LIFECYCLE,
        "system",
        "",
    )  # not the previous move's "submitted" by alice


# --- workflow runs -----------------------------------------------------------------------

W = WorkflowState
WORKFLOW_CONTRACT = {
    (W.RUNNING, W.COMPLETED), (W.RUNNING, W.FAILED), (W.RUNNING, W.CANCELLED),
    (W.FAILED, W.RUNNING), (W.CANCELLED, W.RUNNING),
}  # fmt: skip


@pytest.fixture
def workflow_run(task) -> WorkflowRun:
    workflow = Workflow.objects.create(name="w", steps=[])
    return lifecycle.start_workflow_run(
        workflow=workflow, at=timezone.now(), actor="user", actor_name="alice"
    )


def place(workflow_run: WorkflowRun, state: WorkflowState) -> WorkflowRun:
    """The workflow run put in `state` directly: a fixture, not a move."""
    WorkflowRun.objects.filter(pk=workflow_run.pk).update(state=state)
    return WorkflowRun.objects.get(pk=workflow_run.pk)


def test_workflow_run_table_is_the_contracts() -> None:
    table = {(source, target) for source, targets in WORKFLOW_TRANSITIONS.items() for target in targets}
    assert table == WORKFLOW_CONTRACT


def test_a_started_workflow_run_has_its_first_event(workflow_run) -> None:
    event = WorkflowRunEvent.objects.get(workflow_run=workflow_run)
    assert (event.from_state, event.to_state, event.reason, event.actor, event.actor_name) == (
        "",
        W.RUNNING,
        "started",
        "user",
        "alice",
    )


@pytest.mark.parametrize(("source", "target"), sorted(WORKFLOW_CONTRACT))
def test_legal_workflow_run_move_records_its_event(workflow_run, source, target) -> None:
    workflow_run = place(workflow_run, source)

    moved_from = lifecycle.move_workflow_run(
        workflow_run, target, reason="because", actor="user", actor_name="bob"
    )

    assert moved_from == source
    stored = WorkflowRun.objects.get(pk=workflow_run.pk)
    assert stored.state == target
    assert (stored.finished_at is not None) == (target != W.RUNNING)
    event = WorkflowRunEvent.objects.filter(workflow_run=workflow_run).last()
    assert (event.from_state, event.to_state, event.reason, event.actor, event.actor_name) == (
        source,
        target,
        "because",
        "user",
        "bob",
    )


@pytest.mark.parametrize(
    ("source", "target"),
    [pair for pair in itertools.product(WorkflowState, WorkflowState) if pair not in WORKFLOW_CONTRACT],
)
def test_illegal_workflow_run_move_is_refused_and_changes_nothing(workflow_run, source, target) -> None:
    workflow_run = place(workflow_run, source)
    before = WorkflowRun.objects.filter(pk=workflow_run.pk).values().get()
    events = WorkflowRunEvent.objects.count()

    with pytest.raises(InvalidTransition):
        lifecycle.move_workflow_run(workflow_run, target, reason="no")

    assert WorkflowRun.objects.filter(pk=workflow_run.pk).values().get() == before
    assert WorkflowRunEvent.objects.count() == events


def test_a_workflow_run_moved_meanwhile_refuses_a_stale_move(workflow_run) -> None:
    stale = WorkflowRun.objects.get(pk=workflow_run.pk)
    lifecycle.move_workflow_run(workflow_run, W.CANCELLED, reason="cancelled")

    with pytest.raises(InvalidTransition):
        lifecycle.move_workflow_run(stale, W.COMPLETED, reason="late")
    assert WorkflowRun.objects.get(pk=workflow_run.pk).state == W.CANCELLED


# --- the hook ------------------------------------------------------------------------------


@pytest.fixture
def heard(monkeypatch) -> list[tuple[str, str, str]]:
    """What a subscriber of lifecycle's hook hears: (kind, source, target) per move."""
    moves: list[tuple[str, str, str]] = []

    def listen(batch: list[lifecycle.Move]) -> None:
        moves.extend(("run" if m.is_run else "workflow run", m.source, m.target) for m in batch)

    monkeypatch.setattr(lifecycle, "_subscribers", [*lifecycle._subscribers, listen])
    return moves


def test_subscribers_hear_a_move_after_its_commit_only(
    make_run, task, heard, django_capture_on_commit_callbacks
):
    run = make_run(task, S.CREATED)
    with django_capture_on_commit_callbacks(execute=True):
        lifecycle.move(run, S.CANCELLED, reason="cancelled")
        assert heard == []  # nothing before the commit
    assert heard == [("run", S.CREATED, S.CANCELLED)]


def test_subscribers_hear_nothing_of_a_move_rolled_back(
    make_run, task, heard, django_capture_on_commit_callbacks
):
    run = make_run(task, S.CREATED)
    with django_capture_on_commit_callbacks(execute=True):
        with pytest.raises(RuntimeError), transaction.atomic():
            lifecycle.move(run, S.CANCELLED, reason="cancelled")
            raise RuntimeError("the rest of the operation failed")
    assert heard == []
    assert Run.objects.get(pk=run.pk).state == S.CREATED


def test_births_are_heard_with_no_source(task, heard, django_capture_on_commit_callbacks) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        lifecycle.insert_runs(
            [(Run(task=task), S.CREATED, "held"), (Run(task=task), S.PENDING, "due")],
            at=timezone.now(),
            actor="user",
        )
        lifecycle.start_workflow_run(
            workflow=Workflow.objects.create(name="w"), at=timezone.now(), actor="user"
        )
    assert heard == [("run", "", S.CREATED), ("run", "", S.PENDING), ("workflow run", "", W.RUNNING)]


def test_a_move_says_since_when_the_run_was_in_the_state_it_left(
    make_run, task, monkeypatch, django_capture_on_commit_callbacks
) -> None:
    sent_at = timezone.now() - dt.timedelta(seconds=7)
    run = make_run(task, S.PENDING, state_changed_at=sent_at)
    stale = Run.objects.get(pk=run.pk)  # another process's copy, from before the claim
    batches: list[list[lifecycle.Move]] = []
    monkeypatch.setattr(lifecycle, "_subscribers", [batches.append])
    with django_capture_on_commit_callbacks(execute=True):
        lifecycle.move(run, S.RUNNING, reason="claimed")
        lifecycle.move(stale, S.CANCELLED, reason="cancelled")  # found it running: moved meanwhile

    [claimed], [cancelled] = batches
    assert claimed.since == sent_at  # what the queue wait is measured from
    assert (cancelled.source, cancelled.since) == (S.RUNNING, None)  # it never saw the claim's time


def test_a_failing_subscriber_stops_neither_the_move_nor_the_others(
    make_run, task, heard, monkeypatch, django_capture_on_commit_callbacks, caplog
) -> None:
    def broken(batch: list[lifecycle.Move]) -> None:
        raise ValueError("broken subscriber")

    monkeypatch.setattr(lifecycle, "_subscribers", [broken, *lifecycle._subscribers])
    run = make_run(task, S.CREATED)
    with django_capture_on_commit_callbacks(execute=True):
        lifecycle.move(run, S.CANCELLED, reason="cancelled")

    assert heard == [("run", S.CREATED, S.CANCELLED)]
    assert Run.objects.get(pk=run.pk).state == S.CANCELLED
    assert "broken subscriber" in caplog.text
