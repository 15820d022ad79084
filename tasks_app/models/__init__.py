"""The data: fields, constraints, small pure properties. Models know nothing of brokers,
Redis, handlers or workflows; tasks_app.lifecycle moves their states."""

from __future__ import annotations

from tasks_app.choices import ConcurrencyPolicy, MisfirePolicy, TriggerRule, WorkflowState
from tasks_app.models.alerts import Alert, AlertEvent, AlertRule, Channel, Notification
from tasks_app.models.rollups import RollupProgress, RunRollup
from tasks_app.models.runs import Run, RunEvent, RunLog
from tasks_app.models.schedules import Schedule
from tasks_app.models.tasks import Task
from tasks_app.models.tokens import ApiToken
from tasks_app.models.workers import Worker
from tasks_app.models.workflows import Workflow, WorkflowRun, WorkflowRunEvent

__all__ = [
    "Alert",
    "AlertEvent",
    "AlertRule",
    "ApiToken",
    "Channel",
    "ConcurrencyPolicy",
    "MisfirePolicy",
    "Notification",
    "RollupProgress",
    "Run",
    "RunEvent",
    "RunLog",
    "RunRollup",
    "Schedule",
    "Task",
    "TriggerRule",
    "Worker",
    "Workflow",
    "WorkflowRun",
    "WorkflowRunEvent",
    "WorkflowState",
]
