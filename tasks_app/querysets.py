"""Named filters of runs and schedules: what a query means, said once."""

from __future__ import annotations

import datetime as dt

from django.db import models

from tasks_app.choices import ACTIVE_STATES, ConcurrencyPolicy, RunState

S = RunState


class RunQuerySet(models.QuerySet):
    def active(self) -> RunQuerySet:
        return self.filter(state__in=ACTIVE_STATES)

    def due(self, now: dt.datetime) -> RunQuerySet:
        """Runs to send now: created ones whose run_at came, retrying ones whose backoff
        is over, pending ones whose message must be sent again (index run_state_due)."""
        return self.filter(state__in=[S.CREATED, S.RETRYING, S.PENDING], due_at__lte=now)

    def gated(self) -> RunQuerySet:
        """Runs of tasks with a concurrency policy, which go through concurrency.gate()."""
        return self.exclude(task__concurrency_policy=ConcurrencyPolicy.ALLOW)

    def waiting_for_slot(self) -> RunQuerySet:
        """Created runs with no time to wait for and no workflow: those a concurrency
        policy holds back (workflow steps never wait in a task's queue)."""
        return self.filter(state=S.CREATED, due_at__isnull=True, workflow_run__isnull=True)


class ScheduleQuerySet(models.QuerySet):
    def due(self, now: dt.datetime) -> ScheduleQuerySet:
        """Enabled schedules whose next instant has come (index schedule_due)."""
        return self.filter(enabled=True, next_fire_at__lte=now)

    def set_aside(self) -> ScheduleQuerySet:
        """Schedules the scheduler stopped firing until an edit mends them."""
        return self.exclude(invalid_reason="")
