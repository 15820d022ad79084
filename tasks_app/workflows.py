"""The DAG engine: starting a workflow run, advancing it as steps finish, cancel, retry.

Each step is a Run (trigger=workflow, step=key) that waits in `created` until its
trigger rule is met, then is sent like any run, or becomes `skipped` when the rule can
no longer be met (which propagates downstream). `advance()` runs after every step's
terminal move (`advance_finished_steps` subscribes to lifecycle's moves); it locks the
workflow run's row, so two completions arriving at once are handled one after the
other: no step is sent twice, none is forgotten.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from django.db import transaction
from django.utils import timezone

from tasks_app import broker, controls, lifecycle
from tasks_app.choices import TERMINAL_STATES, Actor, RunState, RunTrigger, WorkflowState
from tasks_app.lifecycle import InvalidTransition, Move
from tasks_app.models import Run, Task, Workflow, WorkflowRun
from tasks_app.models.workflows import InvalidWorkflow

S, W = RunState, WorkflowState
logger = logging.getLogger(__name__)
RUN, SKIP, WAIT = "run", "skip", "wait"


class WorkflowConflict(Exception):
    """A control that the workflow run's state does not allow (a 409)."""

    def __init__(self, message: str, current: str) -> None:
        self.current = current
        super().__init__(message)


def verdict(rule: str, upstream: list[str]) -> str:
    """Whether a step whose upstream steps are in `upstream` states runs, is skipped or waits."""
    if not upstream:
        return RUN
    done = [state for state in upstream if state in TERMINAL_STATES]
    completed = [state for state in upstream if state == S.COMPLETED]
    if rule == "all_done":
        return RUN if len(done) == len(upstream) else WAIT
    if rule == "one_success":
        if completed:
            return RUN
        return SKIP if len(done) == len(upstream) else WAIT
    # all_success
    if len(completed) == len(upstream):
        return RUN
    return SKIP if len(done) > len(completed) else WAIT


def start(workflow: Workflow, *, by: str = "", schedule: Any = None, scheduled_for: dt.datetime | None = None,
          now: dt.datetime | None = None) -> WorkflowRun:  # fmt: skip
    """Create a workflow run and a created run per step, then send the steps that can go."""
    now = now or timezone.now()
    with transaction.atomic():
        workflow_run = lifecycle.start_workflow_run(
            workflow=workflow, steps=workflow.steps, schedule=schedule, scheduled_for=scheduled_for,
            created_by=by, created_at=now, at=now, actor=Actor.SCHEDULE if schedule else Actor.USER,
            actor_name=by,
        )  # fmt: skip
        _create_step_runs(workflow_run, workflow.steps, by=by, now=now)
        transaction.on_commit(lambda: advance(workflow_run.pk))
    return workflow_run


def _create_step_runs(
    workflow_run: WorkflowRun, steps: list[dict[str, Any]], *, by: str, now: dt.datetime
) -> None:
    tasks = Task.objects.in_bulk({step["task"] for step in steps}, field_name="name")
    missing = sorted({step["task"] for step in steps} - set(tasks))
    if missing:
        raise InvalidWorkflow(f"The workflow names tasks that no longer exist: {', '.join(missing)}.")
    born = [
        (
            Run(
                task=tasks[step["task"]],
                trigger=RunTrigger.WORKFLOW,
                args=list(tasks[step["task"]].args),
                kwargs={**tasks[step["task"]].kwargs, **step["kwargs"]},
                priority=tasks[step["task"]].priority,
                workflow_run=workflow_run,
                step=step["key"],
                created_at=now,
            ),
            S.CREATED,
            f"step {step['key']}",
        )
        for step in steps
    ]
    lifecycle.insert_runs(born, at=now, actor=Actor.USER, actor_name=by)


def latest_runs(workflow_run_id: int) -> dict[str, Run]:
    """Each step's run (the latest of its key: a workflow run retried before retries reused
    the same runs has several)."""
    return {run.step: run for run in Run.objects.filter(workflow_run_id=workflow_run_id).order_by("id")}


def advance(workflow_run_id: int) -> None:
    """Send the steps whose rule is met, skip those whose rule can no longer be, and
    close the workflow run once every step has finished."""
    with transaction.atomic():
        workflow_run = WorkflowRun.objects.select_for_update().filter(pk=workflow_run_id).first()
        if workflow_run is None or workflow_run.state != W.RUNNING:
            return
        _advance(workflow_run)


def _advance(workflow_run: WorkflowRun, *, actor: str = Actor.SYSTEM, actor_name: str = "") -> None:
    """advance() of a running workflow run whose row the caller holds locked."""
    # States only: a 200-step workflow is advanced after each of its 200 steps.
    state, ids = {}, {}
    for pk, key, current in (
        Run.objects.filter(workflow_run_id=workflow_run.pk).order_by("id").values_list("id", "step", "state")
    ):
        state[key], ids[key] = current, pk
    # A failed or cancelled step that a retry runs again waits for its upstream steps as a
    # created one does; its downstream steps see it as not done yet.
    awaiting = {key for key in workflow_run.awaiting_retry if state.get(key) in (S.FAILED, S.CANCELLED)}
    seen = {key: S.CREATED if key in awaiting else current for key, current in state.items()}
    decided: dict[str, tuple[str, str]] = {}
    changed = True
    while changed:  # a skip can decide its downstream steps
        changed = False
        for step in workflow_run.steps:
            key = step["key"]
            if seen[key] != S.CREATED:
                continue
            decision = verdict(step["trigger_rule"], [seen[up] for up in step["depends_on"]])
            if decision == RUN:
                reason = "retried with its workflow run" if key in awaiting else "upstream steps done"
                decided[key], seen[key] = (S.PENDING, reason), S.PENDING
            elif decision == SKIP:
                upstream = ", ".join(f"{up} {seen[up]}" for up in step["depends_on"])
                # A step awaiting its retry keeps its last outcome: failed -> skipped is no move.
                target = state[key] if key in awaiting else S.SKIPPED
                decided[key] = (target, f"{step['trigger_rule']} not met: {upstream}")
                seen[key], changed = target, True
    runs = Run.objects.select_related("task").in_bulk([ids[key] for key in decided])
    to_send = []
    for key, (target, reason) in decided.items():
        run = runs[ids[key]]
        if target == run.state:  # an awaited retry that will not run after all
            continue
        again = key in awaiting  # a new attempt of the same run, with a fresh retry budget
        try:
            lifecycle.move(
                run,
                target,
                only_from=frozenset({S.FAILED, S.CANCELLED} if again else {S.CREATED}),
                new_message=target == S.PENDING,
                reason=reason,
                actor=actor,
                actor_name=actor_name,
                **({**controls.RETRY_RESETS, "due_at": None} if again else {}),
            )
        except InvalidTransition as exc:  # moved meanwhile (a cancel): its own advance follows
            logger.info("workflow run %s: %s", workflow_run.pk, exc)
            continue
        if target == S.PENDING:
            to_send.append(run)
    still_awaiting = sorted(awaiting - set(decided))
    if still_awaiting != sorted(workflow_run.awaiting_retry):
        WorkflowRun.objects.filter(pk=workflow_run.pk).update(awaiting_retry=still_awaiting)
        workflow_run.awaiting_retry = still_awaiting
    if all(current in TERMINAL_STATES for current in seen.values()):
        failed = sorted(key for key, current in seen.items() if current in (S.FAILED, S.CANCELLED))
        if failed:
            reason = f"every step finished; {', '.join(failed)} did not complete"
            lifecycle.move_workflow_run(workflow_run, W.FAILED, reason=reason[:500])
        else:
            lifecycle.move_workflow_run(
                workflow_run, W.COMPLETED, reason="every step completed or was skipped"
            )
    transaction.on_commit(lambda: broker.publish(to_send))


def advance_finished_steps(moves: list[Move]) -> None:
    """Subscriber of lifecycle: advance the workflow runs whose steps finished.

    A step skipped is left out: only an advance skips a step, and that advance has
    decided what the skip leads to (its downstream steps, the workflow run's end).
    """
    finished = {
        m.subject.workflow_run_id
        for m in moves
        if m.is_run and m.finished and m.target != S.SKIPPED and m.subject.workflow_run_id
    }
    for workflow_run_id in sorted(finished):
        advance(workflow_run_id)


def cancel(workflow_run: WorkflowRun, *, by: str = "") -> None:
    """Cancel every unfinished step: running ones are stopped, created ones never start."""
    with transaction.atomic():
        locked = WorkflowRun.objects.select_for_update().get(pk=workflow_run.pk)
        if locked.state != W.RUNNING:
            raise WorkflowConflict(
                f"Workflow run {locked.pk} is {locked.state}: nothing to cancel.", locked.state
            )
        lifecycle.move_workflow_run(locked, W.CANCELLED, reason="cancelled", actor=Actor.USER, actor_name=by)
        for run in latest_runs(locked.pk).values():
            if run.state not in TERMINAL_STATES:
                try:
                    controls.cancel(run, by=by)
                except InvalidTransition:
                    pass  # it finished meanwhile
    workflow_run.refresh_from_db()


def retry(workflow_run: WorkflowRun, *, by: str = "") -> None:
    """A new attempt of each failed or cancelled step, once its upstream steps allow it, and
    the skipped steps back to created; completed steps keep their results."""
    _retry(workflow_run, by=by)


def retry_from(workflow_run: WorkflowRun, key: str, *, by: str = "") -> None:
    """retry() of one failed or cancelled step and of the steps downstream of it: the others
    keep their outcome (a failed one elsewhere fails the workflow run again once the retried
    steps finish). Refused, as retry() is, unless the workflow run is failed or cancelled, and
    when the step's upstream steps, which are not run again, would have it skipped."""
    _retry(workflow_run, by=by, from_step=key)


def _retry(workflow_run: WorkflowRun, *, by: str, from_step: str | None = None) -> None:
    with transaction.atomic():
        locked = WorkflowRun.objects.select_for_update().get(pk=workflow_run.pk)
        if locked.state not in (W.FAILED, W.CANCELLED):
            raise WorkflowConflict(
                f"Workflow run {locked.pk} is {locked.state}: only a failed or cancelled one can be retried.",
                locked.state,
            )
        runs = latest_runs(locked.pk)
        if from_step is not None:
            _check_retry_from(locked, runs, from_step)
        again = _to_retry(locked, runs, from_step)
        for key in sorted(again):
            if runs[key].state == S.SKIPPED:
                lifecycle.move(runs[key], S.CREATED, reason="retried with its workflow run", actor=Actor.USER,
                               actor_name=by)  # fmt: skip
        awaiting = sorted(key for key in again if runs[key].state in (S.FAILED, S.CANCELLED))
        WorkflowRun.objects.filter(pk=locked.pk).update(awaiting_retry=awaiting)
        locked.awaiting_retry = awaiting
        origin = f" from {from_step}" if from_step is not None else ""
        lifecycle.move_workflow_run(
            locked,
            W.RUNNING,
            reason=f"retried{origin}: {', '.join(sorted(again))}"[:500],
            actor=Actor.USER,
            actor_name=by,
        )
        _advance(locked, actor=Actor.USER, actor_name=by)
    workflow_run.refresh_from_db()


def _check_retry_from(workflow_run: WorkflowRun, runs: dict[str, Run], key: str) -> None:
    step = next((s for s in workflow_run.steps if s["key"] == key), None)
    if step is None or key not in runs:
        raise InvalidWorkflow(f"Workflow run {workflow_run.pk} has no step {key!r}.", field="step")
    state = runs[key].state
    if state not in (S.FAILED, S.CANCELLED):
        raise WorkflowConflict(
            f"Step {key} of workflow run {workflow_run.pk} is {state}: only a failed or cancelled step "
            "can be retried from.",
            state,
        )
    # Its upstream steps are not run again (none is downstream of it): if what they ended as
    # fails its trigger rule, the retry would run nothing.
    upstream = [runs[up].state for up in step["depends_on"]]
    if verdict(step["trigger_rule"], upstream) == SKIP:
        said = ", ".join(f"{up} {runs[up].state}" for up in step["depends_on"])
        raise WorkflowConflict(
            f"Step {key} of workflow run {workflow_run.pk} would be skipped again ({step['trigger_rule']} "
            f"not met: {said}): retry from an upstream step, or the whole workflow run.",
            workflow_run.state,
        )


def steps_to_retry(workflow_run: WorkflowRun, from_step: str | None = None) -> set[str]:
    """The keys of the steps a retry runs again: the failed, cancelled and skipped ones, and
    with `from_step` only that step and those of them downstream of it. (A skipped step always
    has one of them upstream; completed steps are never run again.)"""
    return _to_retry(workflow_run, latest_runs(workflow_run.pk), from_step)


def _to_retry(workflow_run: WorkflowRun, runs: dict[str, Run], from_step: str | None) -> set[str]:
    again = {key for key, run in runs.items() if run.state in (S.FAILED, S.CANCELLED, S.SKIPPED)}
    if from_step is None:
        return again
    return again & downstream(workflow_run.steps, from_step)


def downstream(steps: list[dict[str, Any]], key: str) -> set[str]:
    """`key` and every step that depends on it, directly or not."""
    below: dict[str, list[str]] = {}
    for step in steps:
        for up in step["depends_on"]:
            below.setdefault(up, []).append(step["key"])
    found, todo = {key}, [key]
    while todo:
        for child in below.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def upstream_results(run: Run) -> dict[str, Any]:
    """The results of a step's upstream steps, by key (their latest runs')."""
    steps = WorkflowRun.objects.values_list("steps", flat=True).get(pk=run.workflow_run_id)
    depends_on = next((s["depends_on"] for s in steps if s["key"] == run.step), [])
    rows = (
        Run.objects.filter(workflow_run_id=run.workflow_run_id, step__in=depends_on)
        .order_by("id")
        .values_list("step", "result")
    )
    return dict(rows)  # later rows (retries) override earlier ones
