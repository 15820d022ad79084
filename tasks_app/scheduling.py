"""Beat integration: the platform's scheduler, Celery beat's default here.

It is django-celery-beat's DatabaseScheduler (PeriodicTask rows stay a source of
periodic entries, visible in its admin) plus, on every tick:
- firing the platform's schedules that are due (ScheduleQuerySet.fire_due), claimed in
  the database so any number of beats can run at once;
- sending runs that have become due: a `run_at` reached, a retry's backoff over.

Each platform Schedule is mirrored as a PeriodicTask (with its crontab, interval or
clocked schedule) so django-celery-beat's admin and tools see it; the mirror is never
sent by beat itself, the platform fires it.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from django.conf import settings
from django.db import InterfaceError, OperationalError, close_old_connections, transaction
from django_celery_beat.models import (
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
)
from django_celery_beat.schedulers import DatabaseScheduler

from tasks_app import concurrency, recovery, timing

logger = logging.getLogger(__name__)

BATCH = 500
MIRROR_TASK = "tasks_app.schedule"  # a name only: the platform fires these, never beat


class PlatformScheduler(DatabaseScheduler):
    _locks_extended_at = 0.0
    _swept_at = 0.0
    _database_failed_at = float("-inf")

    def tick(self, *args: Any, **kwargs: Any) -> float:
        interval = super().tick(*args, **kwargs)
        busy = self.platform_tick()
        if busy:
            return 0  # more are waiting: go again at once
        return min(interval, settings.RUN_DISPATCH_INTERVAL)

    def enabled_models_qs(self) -> Any:
        # Mirrors of platform schedules are fired by platform_tick(), never sent as tasks.
        return super().enabled_models_qs().exclude(task=MIRROR_TASK)

    def platform_tick(self) -> bool:
        """Fire due schedules and send due runs; True when a batch was full."""
        from tasks_app.models import Run, Schedule

        close_old_connections()
        busy = False
        for name, step in (
            ("fire due schedules", Schedule.objects.fire_due),
            ("send due runs", Run.objects.dispatch_due),
        ):
            try:
                done = step(limit=BATCH)
            except (OperationalError, InterfaceError) as exc:
                # A database outage must not stop beat: try again next tick.
                self._database_failed_at = time.monotonic()
                logger.error("could not %s: database unreachable: %s", name, exc)
                continue
            except Exception:
                logger.exception("could not %s", name)
                continue
            if done:
                logger.info("%s: %d", name, done)
            busy = busy or done >= BATCH
        # Workers could not heartbeat while the database was down: give them their full
        # allowance of missed heartbeats after it is back before judging any of them lost.
        allowance = settings.WORKER_HEARTBEAT_INTERVAL * settings.WORKER_MISSED_HEARTBEATS
        if time.monotonic() - self._database_failed_at > allowance:
            self._every("_swept_at", settings.WORKER_HEARTBEAT_INTERVAL, recovery.recover_lost_runs,
                        recovery.resend_lost_messages, recovery.advance_stalled_workflows)  # fmt: skip
        self._every("_locks_extended_at", settings.CONCURRENCY_LOCK_TTL / 3, concurrency.extend_active)
        return busy

    def _every(self, clock: str, seconds: float, *jobs: Any) -> None:
        """Run `jobs` if `seconds` have passed since the last time (kept in attribute `clock`)."""
        if time.monotonic() - getattr(self, clock) < seconds:
            return
        setattr(self, clock, time.monotonic())
        for job in jobs:
            try:
                job()
            except (OperationalError, InterfaceError) as exc:
                self._database_failed_at = time.monotonic()
                logger.error("%s failed: database unreachable: %s", job.__name__, exc)
            except Exception:
                logger.exception("%s failed", job.__name__)


def mirror(schedule: Any) -> None:
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
        "description": (
            f"Platform schedule {schedule.pk} of {schedule.target_text}: {schedule.description()}. "
            "Fired by tasks_app.scheduling.PlatformScheduler, not by this entry."
        ),
    }
    with transaction.atomic():
        if schedule.periodic_task_id:
            PeriodicTask.objects.filter(pk=schedule.periodic_task_id).update(**values)
        else:
            task = PeriodicTask.objects.create(name=f"platform schedule {schedule.pk}", **values)
            type(schedule).objects.filter(pk=schedule.pk).update(periodic_task=task)
            schedule.periodic_task = task


def _known_zone(name: str) -> bool:
    try:
        timing.zone(name)
    except timing.InvalidSchedule:
        return False
    return True


def set_enabled(schedule: Any, enabled: bool) -> bool:
    """Pause or resume a schedule; False when it already was. The timing trigger
    (migration 0004) makes the next tick recompute its next fire from then on."""
    with transaction.atomic():
        if not type(schedule).objects.filter(pk=schedule.pk, enabled=not enabled).update(enabled=enabled):
            return False
        schedule.enabled = enabled
        mirror(schedule)
    return True


def fire_now(schedule: Any, *, by: str) -> Any:
    """One fire now, whatever the timing: a run with trigger=manual, or a workflow run."""
    from tasks_app import workflows
    from tasks_app.lifecycle import Trigger
    from tasks_app.models import Run
    from tasks_app.querysets import RunRequest

    if schedule.workflow_id:
        return workflows.start(schedule.workflow, by=by)
    request = RunRequest(
        task=schedule.task, trigger=Trigger.MANUAL, schedule=schedule, **schedule.fire_kwargs()
    )
    return Run.objects.submit(request, by=by)[0]
