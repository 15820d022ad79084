from __future__ import annotations

import graphlib
from typing import Any

from django.db import models
from django.utils import timezone

from tasks_app.choices import Actor, TriggerRule, WorkflowState
from tasks_app.models.events import Event


class InvalidWorkflow(ValueError):
    """A definition that cannot run; `field` and the message say why."""

    def __init__(self, message: str, field: str = "steps") -> None:
        self.field = field
        super().__init__(message)


# A step's key is its run's `step` column; each step is a run, advanced one by one.
STEP_KEY_MAX = 200
STEPS_MAX = 1000


def check_steps(steps: Any, task_names: set[str]) -> list[dict[str, Any]]:
    """Normalise a workflow's steps, or raise InvalidWorkflow naming the problem."""
    if not isinstance(steps, list) or not steps:
        raise InvalidWorkflow("Give a non-empty list of steps.")
    if len(steps) > STEPS_MAX:
        raise InvalidWorkflow(f"At most {STEPS_MAX} steps; got {len(steps)}.")
    normalised, keys = [], set()
    for index, step in enumerate(steps):
        if not isinstance(step, dict):
            raise InvalidWorkflow(f"Step {index} must be an object.")
        key, task = step.get("key"), step.get("task")
        if not isinstance(key, str) or not key:
            raise InvalidWorkflow(f"Step {index} needs a key (a string).")
        if len(key) > STEP_KEY_MAX or not key.isprintable():
            raise InvalidWorkflow(f"Step {index}: a key is at most {STEP_KEY_MAX} printable characters.")
        if key in keys:
            raise InvalidWorkflow(f"Duplicate step key {key!r}.")
        keys.add(key)
        if not isinstance(task, str):
            raise InvalidWorkflow(f"Step {key!r}: task must be a task's name (a string).")
        if task not in task_names:
            raise InvalidWorkflow(f"Step {key!r}: no task named {task!r}.")
        depends_on = step.get("depends_on") or []
        kwargs = step.get("kwargs") or {}
        rule = step.get("trigger_rule") or TriggerRule.ALL_SUCCESS
        if not isinstance(depends_on, list) or not all(isinstance(d, str) for d in depends_on):
            raise InvalidWorkflow(f"Step {key!r}: depends_on must be a list of step keys.")
        if not isinstance(kwargs, dict):
            raise InvalidWorkflow(f"Step {key!r}: kwargs must be an object.")
        if not isinstance(rule, str) or rule not in TriggerRule.values:
            raise InvalidWorkflow(
                f"Step {key!r}: trigger_rule must be one of {', '.join(TriggerRule.values)}."
            )
        normalised.append(
            {"key": key, "task": task, "kwargs": kwargs, "depends_on": list(dict.fromkeys(depends_on)),
             "trigger_rule": rule}
        )  # fmt: skip
    for step in normalised:
        unknown = [d for d in step["depends_on"] if d not in keys]
        if unknown:
            raise InvalidWorkflow(
                f"Step {step['key']!r} depends on unknown step(s) {', '.join(map(repr, unknown))}."
            )
    try:
        graphlib.TopologicalSorter({s["key"]: s["depends_on"] for s in normalised}).prepare()
    except graphlib.CycleError as exc:
        cycle = exc.args[1]
        raise InvalidWorkflow(f"The steps form a cycle: {' -> '.join(cycle)}.") from None
    return normalised


class Workflow(models.Model):
    """A DAG of steps, each a task with its own kwargs, upstream steps and trigger rule."""

    # What the API and the admin let a user set.
    EDITABLE_FIELDS = ["name", "description", "steps"]

    name = models.CharField(max_length=200, unique=True)
    description = models.TextField(blank=True)
    steps = models.JSONField(default=list)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def runs_per_start(self) -> int:
        """The runs one start makes: one per step (steps written past validation count 1)."""
        return len(self.steps) if isinstance(self.steps, list) and self.steps else 1


class WorkflowRun(models.Model):
    """One execution of a workflow: a run per step (the latest per key counts)."""

    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="runs")
    state = models.CharField(max_length=10, choices=WorkflowState.choices, default=WorkflowState.RUNNING)
    # The steps as they were when it started: later edits of the workflow don't change it.
    steps = models.JSONField(default=list)
    schedule = models.ForeignKey(
        "tasks_app.Schedule", on_delete=models.SET_NULL, null=True, blank=True, related_name="workflow_runs"
    )
    scheduled_for = models.DateTimeField(null=True, blank=True)
    created_by = models.CharField(max_length=150, blank=True)
    # The failed or cancelled steps a retry runs again once their upstream steps allow it
    # (workflows.retry and advance); empty otherwise.
    awaiting_retry = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # The latest move, copied into a WorkflowRunEvent by a database trigger (db_triggers.py),
    # as for runs.
    state_changed_at = models.DateTimeField(default=timezone.now)
    state_reason = models.CharField(max_length=500, blank=True)
    state_actor = models.CharField(max_length=10, choices=Actor.choices, default=Actor.SYSTEM)
    state_actor_name = models.CharField(max_length=150, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["schedule", "scheduled_for"], name="workflow_run_one_per_schedule_instant"
            ),
        ]

    def __str__(self) -> str:
        return f"workflow run {self.pk} of {self.workflow.name} ({self.state})"


class WorkflowRunEvent(Event):
    """One state change of a workflow run: its own history (its steps' are their runs')."""

    workflow_run = models.ForeignKey(WorkflowRun, on_delete=models.CASCADE, related_name="events")
    from_state = models.CharField(max_length=10, choices=WorkflowState.choices, blank=True)
    to_state = models.CharField(max_length=10, choices=WorkflowState.choices)
