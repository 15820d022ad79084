"""The DAG engine: starting a workflow run, advancing it as steps finish, cancel, retry.

Each step is a Run (trigger=workflow, step=key) that waits in `created` until its
trigger rule is met, then is sent like any run, or becomes `skipped` when the rule can
no longer be met (which propagates downstream). `advance()` runs after every step's
terminal move; it locks the workflow run's row, so two completions arriving at once
are handled one after the other: no step is sent twice, none is forgotten.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from django.db import transaction
from django.utils import timezone

from tasks_app import dispatch
from tasks_app.lifecycle import TERMINAL_STATES, Actor, InvalidTransition, RunState, Trigger

S = RunState
logger = logging.getLogger(__name__)
RUN, SKIP, WAIT = "run", "skip", "wait"


class WorkflowConflict(Exception):
    """A control that the workflow run's state does not allow (a 409)."""

    def __init__(self, message: str, state: str) -> None:
        self.state = state
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


def start(workflow: Any, *, by: str = "", schedule: Any = None, scheduled_for: dt.datetime | None = None,
          now: dt.datetime | None = None) -> Any:  # fmt: skip
    """Create a workflow run and a created run per step, then send the steps that can go."""
    from tasks_app.models import WorkflowRun

    now = now or timezone.now()
    with transaction.atomic():
        workflow_run = WorkflowRun.objects.create(
            workflow=workflow, steps=workflow.steps, schedule=schedule, scheduled_for=scheduled_for,
            created_by=by, created_at=now, started_at=now,
        )  # fmt: skip
        _create_step_runs(workflow_run, workflow.steps, by=by, now=now)
        transaction.on_commit(lambda: advance(workflow_run.pk))
    return workflow_run


def _create_step_runs(workflow_run: Any, steps: list[dict[str, Any]], *, by: str, now: dt.datetime) -> None:
    from tasks_app.models import Run, Task
    from tasks_app.models.runs import move_fields
    from tasks_app.models.workflows import InvalidWorkflow

    tasks = Task.objects.in_bulk({step["task"] for step in steps}, field_name="name")
    missing = sorted({step["task"] for step in steps} - set(tasks))
    if missing:
        raise InvalidWorkflow(f"The workflow names tasks that no longer exist: {', '.join(missing)}.")
    Run.objects.bulk_create(
        Run(
            task=tasks[step["task"]],
            trigger=Trigger.WORKFLOW,
            args=list(tasks[step["task"]].args),
            kwargs={**tasks[step["task"]].kwargs, **step["kwargs"]},
            priority=tasks[step["task"]].priority,
            workflow_run=workflow_run,
            step=step["key"],
            created_at=now,
            **move_fields(S.CREATED, at=now, reason=f"step {step['key']}", actor=Actor.USER, actor_name=by),
        )
        for step in steps
    )


def latest_runs(workflow_run_id: int) -> dict[str, Any]:
    """Each step's current run (a retry adds a newer one)."""
    from tasks_app.models import Run

    return {run.step: run for run in Run.objects.filter(workflow_run_id=workflow_run_id).order_by("id")}


def advance(workflow_run_id: int) -> None:
    """Send the steps whose rule is met, skip those whose rule can no longer be, and
    close the workflow run once every step has finished."""
    from tasks_app.models import Run, WorkflowRun, WorkflowState

    with transaction.atomic():
        workflow_run = WorkflowRun.objects.select_for_update().filter(pk=workflow_run_id).first()
        if workflow_run is None or workflow_run.state != WorkflowState.RUNNING:
            return
        # States only: a 200-step workflow is advanced after each of its 200 steps.
        state, ids = {}, {}
        for pk, key, current_state in (
            Run.objects.filter(workflow_run_id=workflow_run_id)
            .order_by("id")
            .values_list("id", "step", "state")
        ):
            state[key], ids[key] = current_state, pk
        decided: dict[str, tuple[str, str]] = {}
        changed = True
        while changed:  # a skip can decide its downstream steps
            changed = False
            for step in workflow_run.steps:
                key = step["key"]
                if state[key] != S.CREATED:
                    continue
                decision = verdict(step["trigger_rule"], [state[up] for up in step["depends_on"]])
                if decision == RUN:
                    decided[key], state[key] = (S.PENDING, "upstream steps done"), S.PENDING
                elif decision == SKIP:
                    upstream = ", ".join(f"{up} {state[up]}" for up in step["depends_on"])
                    decided[key] = (S.SKIPPED, f"{step['trigger_rule']} not met: {upstream}")
                    state[key], changed = S.SKIPPED, True
        runs = Run.objects.select_related("task").in_bulk([ids[key] for key in decided])
        to_send = []
        for key, (target, reason) in decided.items():
            run = runs[ids[key]]
            run.advancing = True  # this call handles what its move leads to
            try:
                run.move(target, only_from=frozenset({S.CREATED}), new_message=target == S.PENDING,
                         reason=reason, actor=Actor.SYSTEM)  # fmt: skip
            except InvalidTransition as exc:  # moved meanwhile (a cancel): its own advance follows
                logger.info("workflow run %s: %s", workflow_run_id, exc)
                continue
            if target == S.PENDING:
                to_send.append(run)
        if all(current in TERMINAL_STATES for current in state.values()):
            failed = any(current in (S.FAILED, S.CANCELLED) for current in state.values())
            workflow_run.state = WorkflowState.FAILED if failed else WorkflowState.COMPLETED
            workflow_run.finished_at = timezone.now()
            workflow_run.save(update_fields=["state", "finished_at"])
        transaction.on_commit(lambda: dispatch.publish(to_send))


def cancel(workflow_run: Any, *, by: str = "") -> None:
    """Cancel every unfinished step: running ones are stopped, created ones never start."""
    from tasks_app.models import WorkflowRun, WorkflowState

    with transaction.atomic():
        locked = WorkflowRun.objects.select_for_update().get(pk=workflow_run.pk)
        if locked.state != WorkflowState.RUNNING:
            raise WorkflowConflict(
                f"Workflow run {locked.pk} is {locked.state}: nothing to cancel.", locked.state
            )
        locked.state, locked.finished_at = WorkflowState.CANCELLED, timezone.now()
        locked.save(update_fields=["state", "finished_at"])
        for run in latest_runs(locked.pk).values():
            if run.state not in TERMINAL_STATES:
                run.advancing = True
                try:
                    run.cancel(by=by)
                except InvalidTransition:
                    pass  # it finished meanwhile
    workflow_run.refresh_from_db()


def retry(workflow_run: Any, *, by: str = "") -> None:
    """Run the failed, cancelled and skipped steps again, with everything downstream of
    them; completed steps keep their results."""
    from tasks_app.models import WorkflowRun, WorkflowState

    with transaction.atomic():
        locked = WorkflowRun.objects.select_for_update().get(pk=workflow_run.pk)
        if locked.state not in (WorkflowState.FAILED, WorkflowState.CANCELLED):
            raise WorkflowConflict(
                f"Workflow run {locked.pk} is {locked.state}: only a failed or cancelled one can be retried.",
                locked.state,
            )
        again = steps_to_retry(locked)
        now = timezone.now()
        _create_step_runs(locked, [s for s in locked.steps if s["key"] in again], by=by, now=now)
        locked.state, locked.finished_at = WorkflowState.RUNNING, None
        locked.save(update_fields=["state", "finished_at"])
        transaction.on_commit(lambda: advance(locked.pk))
    workflow_run.refresh_from_db()


def steps_to_retry(workflow_run: Any) -> set[str]:
    """The keys of the steps a retry runs again: the failed, cancelled and skipped ones,
    with everything downstream of them."""
    states = {run.step: run.state for run in latest_runs(workflow_run.pk).values()}
    again = {key for key, state in states.items() if state in (S.FAILED, S.CANCELLED, S.SKIPPED)}
    downstream = {step["key"]: [s["key"] for s in workflow_run.steps if step["key"] in s["depends_on"]]
                  for step in workflow_run.steps}  # fmt: skip
    pending = list(again)
    while pending:
        for child in downstream[pending.pop()]:
            if child not in again:
                again.add(child)
                pending.append(child)
    return again


def upstream_results(run: Any) -> dict[str, Any]:
    """The results of a step's upstream steps, by key (their latest runs')."""
    from tasks_app.models import Run, WorkflowRun

    steps = WorkflowRun.objects.values_list("steps", flat=True).get(pk=run.workflow_run_id)
    depends_on = next((s["depends_on"] for s in steps if s["key"] == run.step), [])
    rows = (
        Run.objects.filter(workflow_run_id=run.workflow_run_id, step__in=depends_on)
        .order_by("id")
        .values_list("step", "result")
    )
    return dict(rows)  # later rows (retries) override earlier ones
