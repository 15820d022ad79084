from __future__ import annotations

import itertools

import pytest
from django.utils import timezone

from tasks_app.lifecycle import (
    TERMINAL_STATES,
    TRANSITIONS,
    InvalidTransition,
    RunState,
    is_legal,
    sources_of,
)
from tasks_app.models import Run, RunEvent
from tasks_app.models.runs import move_fields

S = RunState

# The contract's table (API.md), written out again so a change to TRANSITIONS shows here.
CONTRACT = {
    (S.CREATED, S.PENDING), (S.CREATED, S.PAUSED), (S.CREATED, S.CANCELLED), (S.CREATED, S.SKIPPED),
    (S.PENDING, S.RUNNING), (S.PENDING, S.PAUSED), (S.PENDING, S.CANCELLED), (S.PENDING, S.FAILED),
    (S.RUNNING, S.COMPLETED), (S.RUNNING, S.FAILED), (S.RUNNING, S.RETRYING),
    (S.RUNNING, S.CANCELLED), (S.RUNNING, S.PAUSED),
    (S.RETRYING, S.PENDING), (S.RETRYING, S.PAUSED), (S.RETRYING, S.CANCELLED),
    (S.PAUSED, S.PENDING), (S.PAUSED, S.CANCELLED),
    (S.FAILED, S.PENDING), (S.CANCELLED, S.PENDING),
}  # fmt: skip

ALL_PAIRS = list(itertools.product(RunState, RunState))


def test_transition_table_is_the_contracts() -> None:
    table = {(source, target) for source, targets in TRANSITIONS.items() for target in targets}
    assert table == CONTRACT


def test_sources_of_inverts_the_table() -> None:
    assert sources_of(S.PENDING) == {S.CREATED, S.RETRYING, S.PAUSED, S.FAILED, S.CANCELLED}
    assert sources_of(S.CREATED) == set()


@pytest.mark.parametrize(("source", "target"), sorted(CONTRACT))
def test_legal_move_changes_state_and_records_event(make_run, task, source, target) -> None:
    run = make_run(task, source)

    moved_from = run.move(target, reason="because", actor="user", actor_name="alice")

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
        run.move(target)

    assert refused.value.current == source
    assert not is_legal(source, target)
    assert Run.objects.filter(pk=run.pk).values().get() == before
    assert not RunEvent.objects.filter(run=run).exists()


def test_move_follows_a_concurrent_change_of_state(make_run, task) -> None:
    run = make_run(task, S.PENDING)
    # Another process moved it on since this instance was read.
    Run.objects.filter(pk=run.pk).update(state=S.PAUSED)

    assert run.move(S.CANCELLED) == S.PAUSED
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
        run.move(S.CANCELLED)
    assert Run.objects.get(pk=run.pk).state == S.SKIPPED


def test_claim_with_a_stale_message_number_is_refused(make_run, task) -> None:
    run = make_run(task, S.PENDING, dispatches=2)

    with pytest.raises(InvalidTransition):
        run.claim(dispatch=1, hostname="w1")
    assert Run.objects.get(pk=run.pk).state == S.PENDING

    run.claim(dispatch=2, hostname="w1")
    stored = Run.objects.get(pk=run.pk)
    assert (stored.state, stored.attempt, stored.worker) == (S.RUNNING, 1, "w1")


def test_a_message_cannot_claim_a_run_twice(make_run, task) -> None:
    run = make_run(task, S.PENDING)
    run.claim(dispatch=1, hostname="w1")

    duplicate = Run.objects.get(pk=run.pk)
    duplicate.state = S.PENDING  # as a second worker might have read it
    with pytest.raises(InvalidTransition):
        duplicate.claim(dispatch=1, hostname="w2")
    assert Run.objects.get(pk=run.pk).attempt == 1
