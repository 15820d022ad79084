from __future__ import annotations

from tasks_app.models.runs import Run, RunEvent, RunLog
from tasks_app.models.schedules import MisfirePolicy, Schedule
from tasks_app.models.tasks import ConcurrencyPolicy, Task
from tasks_app.models.tokens import ApiToken
from tasks_app.models.workers import Worker
from tasks_app.models.workflows import TriggerRule, Workflow, WorkflowRun, WorkflowState

__all__ = [
    "ApiToken",
    "ConcurrencyPolicy",
    "MisfirePolicy",
    "Run",
    "RunEvent",
    "RunLog",
    "Schedule",
    "Task",
    "TriggerRule",
    "Worker",
    "Workflow",
    "WorkflowRun",
    "WorkflowState",
]
