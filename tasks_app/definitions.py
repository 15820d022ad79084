"""Rules for editing what the platform runs (tasks, schedules, workflows), shared by the
API and the admin: a task or workflow with unfinished runs is not deleted, and a schedule
is mirrored to django-celery-beat on every save and delete.
"""

from __future__ import annotations

import json
from typing import Any

from django.db import transaction
from django.db.models import QuerySet
from django_celery_beat.models import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask

from tasks_app import submission, timing, workflows
from tasks_app.choices import RunTrigger, WorkflowState
from tasks_app.models import Run, Schedule, Task, Workflow, WorkflowRun
from tasks_app.models.schedules import RECOMPUTE
from tasks_app.models.workflows import check_steps
from tasks_app.submission import RunRequest

MIRROR_TASK = "tasks_app.schedule"  # a name only: the platform fires these, never beat


class InUse(Exception):
    """A delete refused: what it would delete is still running or still used (a 409)."""


# --- tasks ---------------------------------------------------------------------------


def delete_problem(task: Task) -> str:
    """Why `task` may not be deleted now, or ""."""
    active = task.runs.active().count()
    if active:
        return f"Task {task.name!r} has {active} unfinished run(s); cancel them first."
    used_by = task.used_by()
    if used_by:
        return f"Task {task.name!r} is used by {', '.join(used_by)}; change or delete them first."
    return ""


def delete_task(task: Task) -> None:
    """Delete a task with no unfinished run that no schedule or workflow uses; raises InUse."""
    with transaction.atomic():
        problem = delete_problem(task)
        if problem:
            raise InUse(problem)
        task.delete()


# --- workflows -----------------------------------------------------------------------


def validate_steps(steps: Any) -> list[dict[str, Any]]:
    """check_steps() against the tasks that exist now."""
    steps_given = steps if isinstance(steps, list) else []
    named = {s.get("task") for s in steps_given if isinstance(s, dict) and isinstance(s.get("task"), str)}
    existing = Task.objects.filter(name__in=named).values_list("name", flat=True) if named else []
    return check_steps(steps, set(existing))


def workflow_delete_problem(workflow: Workflow) -> str:
    if WorkflowRun.objects.filter(workflow=workflow, state=WorkflowState.RUNNING).exists():
        return f"Workflow {workflow.name!r} has running workflow runs; cancel them first."
    return ""


def delete_workflow(workflow: Workflow) -> None:
    """Delete a workflow none of whose runs is running; raises InUse."""
    with transaction.atomic():
        problem = workflow_delete_problem(workflow)
        if problem:
            raise InUse(problem)
        workflow.delete()


def workflow_edited(workflow: Workflow) -> int:
    """After an edit of a workflow's steps: have beat's next tick look again at the schedules
    of it that it set aside (the edit may have mended them). Returns how many."""
    return Schedule.objects.filter(workflow=workflow).set_aside().update(next_fire_at=RECOMPUTE)


# --- schedules -----------------------------------------------------------------------


def delete_schedule(schedule: Schedule) -> None:
    """Delete a schedule and its mirror."""
    with transaction.atomic():
        if schedule.periodic_task_id:
            PeriodicTask.objects.filter(pk=schedule.periodic_task_id).delete()
        schedule.delete()


def delete_schedules(schedules: QuerySet[Schedule]) -> int:
    """Delete schedules and their mirrors (the admin's bulk delete); returns how many."""
    with transaction.atomic():
        mirrors = [pk for pk in schedules.values_list("periodic_task_id", flat=True) if pk]
        deleted = schedules.delete()[1].get(Schedule._meta.label, 0)
        PeriodicTask.objects.filter(pk__in=mirrors).delete()
    return deleted


def set_enabled(schedule: Schedule, enabled: bool) -> bool:
    """Pause or resume a schedule; False when it already was. The timing trigger
    (db_triggers.py) makes the next tick recompute its next fire from then on."""
    with transaction.atomic():
        if not Schedule.objects.filter(pk=schedule.pk, enabled=not enabled).update(enabled=enabled):
            return False
        schedule.enabled = enabled
        mirror(schedule)
    return True


def fire_now(schedule: Schedule, *, by: str) -> Run | WorkflowRun:
    """One fire now, whatever the timing: a run with trigger=manual, or a workflow run."""
    if schedule.workflow_id:
        return workflows.start(schedule.workflow, by=by)
    request = RunRequest(
        task=schedule.task, trigger=RunTrigger.MANUAL, schedule=schedule, **schedule.fire_kwargs()
    )
    return submission.submit(request, by=by)[0]


def mirror(schedule: Schedule) -> None:
    """Create or update the PeriodicTask that shows `schedule` to django-celery-beat."""
    kinds: dict[str, Any] = {"crontab": None, "interval": None, "clocked": None}
    if schedule.cron:
        try:
            fields = timing.normalise_cron(schedule.cron).split(" ")[-5:]  # no seconds field there
        except timing.InvalidSchedule:  # written past validation: shown as it is
            fields = [*schedule.cron.split()[-5:], "*", "*", "*", "*", "*"][:5]
        kinds["crontab"], _ = CrontabSchedule.objects.get_or_create(
            minute=fields[0],
            hour=fields[1],
            day_of_month=fields[2],
            month_of_year=fields[3],
            day_of_week=fields[4],
            timezone=schedule.timezone if _known_zone(schedule.timezone) else "UTC",
        )
    elif schedule.interval_seconds:
        kinds["interval"], _ = IntervalSchedule.objects.get_or_create(
            every=schedule.interval_seconds, period=IntervalSchedule.SECONDS
        )
    else:
        kinds["clocked"], _ = ClockedSchedule.objects.get_or_create(clocked_time=schedule.run_at)
    values = {
        **kinds,
        "task": MIRROR_TASK,
        "kwargs": json.dumps({"schedule": schedule.pk}),
        "enabled": schedule.enabled,
        "one_off": bool(schedule.run_at),
        "start_time": schedule.start_at,
        "expires": schedule.end_at,
        "description": _mirror_description(schedule),
    }
    with transaction.atomic():
        if schedule.periodic_task_id:
            PeriodicTask.objects.filter(pk=schedule.periodic_task_id).update(**values)
        else:
            task = PeriodicTask.objects.create(name=f"platform schedule {schedule.pk}", **values)
            Schedule.objects.filter(pk=schedule.pk).update(periodic_task=task)
            schedule.periodic_task = task


def _mirror_description(schedule: Schedule) -> str:
    """What the mirror stands for, whole: its crontab has no seconds field, and an edit of
    the mirror would change nothing that fires."""
    timing_text = schedule.kind_text
    if schedule.cron:
        timing_text += f": {schedule.description()}"
    return (
        f"Mirror of schedule {schedule.pk}: {timing_text}. The platform fires it, not this entry: "
        f"edit, pause or delete schedule {schedule.pk} there."
    )


def _known_zone(name: str) -> bool:
    try:
        timing.zone(name)
    except timing.InvalidSchedule:
        return False
    return True
