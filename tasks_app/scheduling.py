"""Beat integration: the platform's scheduler (Celery beat's default here) and the
schedule-firing engine it runs.

PlatformScheduler is django-celery-beat's DatabaseScheduler (PeriodicTask rows stay a
source of periodic entries, visible in its admin) plus, on every tick:
- `fire_due()`: firing the platform's schedules that are due, claimed in the database so
  any number of beats can run at once, with misfire handling and catch-up;
- `send_due_runs()`: sending runs that have become due (a `run_at` reached, a retry's
  backoff over, a message the broker refused or lost);
- the sweeps of recovery.py and the lock extension of concurrency.py, every few seconds.

Each platform Schedule is mirrored as a PeriodicTask (definitions.mirror) so
django-celery-beat's admin and tools see it; the mirror is never sent by beat itself.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import defaultdict
from typing import Any

from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, close_old_connections, transaction
from django.db.models import F
from django.utils import timezone
from django_celery_beat.schedulers import DatabaseScheduler

from tasks_app import (
    alerts,
    broker,
    concurrency,
    lifecycle,
    metrics,
    notifications,
    recovery,
    rollups,
    submission,
    timing,
    workflows,
)
from tasks_app.choices import MisfirePolicy, RunState, RunTrigger
from tasks_app.definitions import MIRROR_TASK
from tasks_app.models import Run, Schedule, Task, WorkflowRun
from tasks_app.models.schedules import RECOMPUTE
from tasks_app.submission import RunRequest

logger = logging.getLogger(__name__)
S = RunState

BATCH = 500


class PlatformScheduler(DatabaseScheduler):
    _locks_extended_at = 0.0
    _swept_at = 0.0
    _alerts_swept_at = 0.0
    _rolled_up_at = 0.0
    _marked_alive_at = 0.0
    _database_failed_at = float("-inf")

    def setup_schedule(self) -> None:
        super().setup_schedule()
        # Beat delivers the alerts' notifications, in a thread: a slow receiver delays no fire.
        notifications.start_sender()

    def tick(self, *args: Any, **kwargs: Any) -> float:
        interval = super().tick(*args, **kwargs)
        busy = self.platform_tick()
        if busy:
            return 0  # more are waiting: go again at once
        return min(interval, settings.RUN_DISPATCH_INTERVAL)

    def enabled_models_qs(self) -> Any:
        # Mirrors of platform schedules are fired by platform_tick(), never sent as tasks.
        # Index periodictask_task_platform (migration 0022) makes this a read of the few
        # entries that are not mirrors, not a scan of every schedule's mirror.
        return super().enabled_models_qs().exclude(task=MIRROR_TASK)

    def platform_tick(self) -> bool:
        """Fire due schedules and send due runs; True when a batch was full."""
        close_old_connections()
        busy = False
        for name, step in (("fire due schedules", fire_due), ("send due runs", send_due_runs)):
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
            # After recovery: a lost worker's runs have failed, and its heartbeats are judged.
            self._every("_alerts_swept_at", settings.ALERT_SWEEP_INTERVAL, alerts.sweep)
        self._every("_locks_extended_at", settings.CONCURRENCY_LOCK_TTL / 3, concurrency.extend_active)
        self._every("_rolled_up_at", settings.ROLLUP_INTERVAL, rollups.refresh)  # the dashboard's counts
        self._every("_marked_alive_at", metrics.BEAT_MARK_INTERVAL, metrics.mark_beat_alive)  # beats alive
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


def send_due_runs(now: dt.datetime | None = None, limit: int = BATCH) -> int:
    """Send the runs whose time has come; returns how many.

    Created and retrying runs move to pending; a pending run with a due_at is one
    whose message the broker refused (broker.publish) or lost (recovery) and is sent
    again under its next message number. Rows are claimed with SELECT ... FOR UPDATE
    SKIP LOCKED, so several beat processes can run this at once without sending a run
    twice. A created run of a gated task goes through concurrency.gate() instead.
    """
    now = now or timezone.now()
    with transaction.atomic():
        due = list(
            Run.objects.select_for_update(skip_locked=True)
            .due(now)
            .order_by("due_at")
            .values_list("pk", "state")[:limit]
        )
        if not due:
            return 0
        gated_ids = set(
            Run.objects.filter(pk__in=[pk for pk, state in due if state == S.CREATED])
            .gated()
            .values_list("pk", flat=True)
        )
        if gated_ids:
            Run.objects.filter(pk__in=gated_ids).update(due_at=None)
            gated = list(Run.objects.select_related("task").filter(pk__in=gated_ids))
            transaction.on_commit(lambda: concurrency.gate(gated))
            due = [(pk, state) for pk, state in due if pk not in gated_ids]
        runs = lifecycle.send_due(due, at=now) if due else []
        transaction.on_commit(lambda: broker.publish(runs))
    return len(runs) + len(gated_ids)


def _set_aside(schedule: Schedule, exc: Exception) -> None:
    """Stop firing `schedule` until an edit mends it, saying why (saved by the caller)."""
    why = str(exc) if isinstance(exc, timing.InvalidSchedule) else f"{type(exc).__name__}: {exc}"
    logger.error("schedule %s set aside, it fires no more until edited: %s", schedule.pk, why)
    schedule.next_fire_at = None
    schedule.invalid_reason = why[:500]


def fire_due(now: dt.datetime | None = None, limit: int = BATCH) -> int:
    """Fire every enabled schedule whose next instant has come; returns runs created.

    Due schedules are claimed with SELECT ... FOR UPDATE SKIP LOCKED, so any number
    of beat processes can run this at once: each schedule is fired by one of them,
    and the run table's unique (schedule, scheduled_for) makes a second run for the
    same instant impossible anyway. Instants missed by more than
    SCHEDULE_MISFIRE_GRACE follow the schedule's misfire policy.
    """
    now = now or timezone.now()
    grace = dt.timedelta(seconds=settings.SCHEDULE_MISFIRE_GRACE)
    cap = settings.SCHEDULE_CATCH_UP_MAX
    with transaction.atomic():
        due = list(
            Schedule.objects.select_for_update(skip_locked=True).due(now).order_by("next_fire_at")[:limit]
        )
        # Tasks are read apart, unlocked: a join would lock them and skip their schedules.
        tasks = Task.objects.in_bulk({s.task_id for s in due if s.task_id})
        requests: list[RunRequest] = []
        workflows_due = []
        missed: list[tuple[Schedule, list[dt.datetime]]] = []
        before = {schedule.pk: (schedule.last_fired_at, schedule.missed_fires) for schedule in due}
        for schedule in due:
            schedule.task = tasks.get(schedule.task_id)
            fired_before = before[schedule.pk]
            try:
                fires = []
                if schedule.next_fire_at > RECOMPUTE:  # else its timing was edited: no fire
                    fires = _fires_of(schedule, now, grace, cap, missed)
                if schedule.workflow_id:
                    mine = [(schedule, instant) for instant, _reason in fires]
                else:
                    mine = [_request(schedule, instant, reason) for instant, reason in fires]
                schedule.next_fire_at = schedule.next_after(now)
            except Exception as exc:
                # A row written past validation (plain SQL, a bulk update): it is set
                # aside with the reason, every other schedule goes on. It fired nothing.
                schedule.last_fired_at, schedule.missed_fires = fired_before
                _set_aside(schedule, exc)
                continue
            schedule.invalid_reason = ""
            (workflows_due if schedule.workflow_id else requests).extend(mine)
        _save_fired(due, before)
        if missed:  # in this transaction: the late alerts' notifications commit with the fires
            alerts.schedules_missed(missed, now=now)
            metrics.count_misfires(missed)  # counted once the fires commit
        fired = {(r.schedule.pk, r.scheduled_for) for r in requests}
        if fired:
            done = set(
                Run.objects.filter(
                    schedule__in={pk for pk, _at in fired}, scheduled_for__in={at for _pk, at in fired}
                ).values_list("schedule_id", "scheduled_for")
            )
            requests = [r for r in requests if (r.schedule.pk, r.scheduled_for) not in done]
            submission.submit_many(requests, by="scheduler", now=now)
        if workflows_due:
            started = set(
                WorkflowRun.objects.filter(schedule__in={s.pk for s, _at in workflows_due})
                .filter(scheduled_for__in={at for _s, at in workflows_due})
                .values_list("schedule_id", "scheduled_for")
            )
            workflows_due = [(s, at) for s, at in workflows_due if (s.pk, at) not in started]
        for schedule, instant in workflows_due:
            try:
                with transaction.atomic():
                    workflows.start(
                        schedule.workflow,
                        by="scheduler",
                        schedule=schedule,
                        scheduled_for=instant,
                        now=now,
                    )
            except DatabaseError:
                raise  # the database's trouble, not the row's: the whole tick tries again
            except Exception as exc:  # the workflow cannot start (its tasks are gone, ...)
                _set_aside(schedule, exc)
                Schedule.objects.filter(pk=schedule.pk).update(
                    next_fire_at=None, invalid_reason=schedule.invalid_reason
                )
    return len(requests) + len(workflows_due)


def _save_fired(due: list[Schedule], before: dict[int, tuple[Any, int]]) -> None:
    """Write what firing changed in `due` (their last (last_fired_at, missed_fires) in
    `before`): one UPDATE per set of new values, which a burst's schedules share.
    Django's bulk_update() writes a CASE of every row per column, which both Python and
    MariaDB pay for per row: a batch of 500 took 0.7 s with it, 0.01 s here when the
    schedules share their values, and with 500 different ones half its CPU (2026-12-04)."""
    changes: dict[tuple, list[int]] = defaultdict(list)
    for schedule in due:
        last_fired_at, missed_fires = before[schedule.pk]
        fired_at = schedule.last_fired_at if schedule.last_fired_at != last_fired_at else None
        key = (schedule.next_fire_at, fired_at, schedule.missed_fires - missed_fires, schedule.invalid_reason)
        changes[key].append(schedule.pk)
    for (next_fire_at, fired_at, missed, invalid_reason), pks in changes.items():
        values: dict[str, Any] = {"next_fire_at": next_fire_at, "invalid_reason": invalid_reason}
        if fired_at is not None:
            values["last_fired_at"] = fired_at
        if missed:
            values["missed_fires"] = F("missed_fires") + missed
        Schedule.objects.filter(pk__in=pks).update(**values)


def _fires_of(
    schedule: Schedule, now: dt.datetime, grace: dt.timedelta, cap: int, missed_out: list | None = None
) -> list:
    """The instants to fire now, each with its reason; misfires follow the schedule's policy
    (and are added to `missed_out`, with their schedule)."""
    instants = [schedule.next_fire_at]
    instants += [
        i
        for i in schedule.timer().between(schedule.next_fire_at, now, cap + 1)
        if not schedule.end_at or i <= schedule.end_at
    ]
    fires = {i: "scheduled" for i in instants if now - i <= grace}  # on time
    missed = [i for i in instants if now - i > grace]
    if missed:
        schedule.missed_fires += len(missed)
        if missed_out is not None:
            missed_out.append((schedule, missed))
        logger.warning(
            "schedule %s missed %s%d instant(s) from %s: %s",
            schedule.pk,
            "at least " if len(instants) > cap else "",
            len(missed),
            missed[0].isoformat(),
            schedule.misfire_policy,
        )
        if schedule.misfire_policy == MisfirePolicy.RUN_ONCE:
            fires[missed[-1]] = f"misfire run_once: one run for {len(missed)} missed instant(s)"
        elif schedule.misfire_policy == MisfirePolicy.CATCH_UP:
            fires.update({i: "misfire catch_up: a missed instant" for i in missed[:cap]})
    if not fires or (schedule.task is not None and not schedule.task.enabled):
        return []
    schedule.last_fired_at = now
    return sorted(fires.items())


def _request(schedule: Schedule, instant: dt.datetime, reason: str) -> RunRequest:
    base = schedule.fire_kwargs()
    return RunRequest(
        task=schedule.task,
        args=base["args"],
        kwargs=base["kwargs"],
        trigger=RunTrigger.SCHEDULE,
        schedule=schedule,
        scheduled_for=instant,
        reason=reason,
    )
