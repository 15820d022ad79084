"""Named filters of runs and schedules: what a query means, said once."""

from __future__ import annotations

import datetime as dt

from django.db import models

from tasks_app.choices import ACTIVE_STATES, ConcurrencyPolicy, RunState

S = RunState

# How long after the `now` it carries as created_at a run is inserted, at most: submission,
# scheduling and workflows take `now` and insert in the same call (well under a second).
# Runs created further apart than this are numbered in the order they were created, which is
# what lets a date range be walked by id (RunQuerySet.created_since/created_before).
INSERT_SKEW = dt.timedelta(minutes=5)


class RunQuerySet(models.QuerySet):
    def active(self) -> RunQuerySet:
        return self.filter(state__in=ACTIVE_STATES)

    def due(self, now: dt.datetime) -> RunQuerySet:
        """Runs to send now: created ones whose run_at came, retrying ones whose backoff
        is over, pending ones whose message must be sent again (index run_state_due)."""
        return self.filter(state__in=[S.CREATED, S.RETRYING, S.PENDING], due_at__lte=now)

    def created_since(self, instant: dt.datetime) -> RunQuerySet:
        """Runs created at or after `instant`, with a bound on their ids that makes a
        newest-first page walk the primary key over the range only: the id of a run created
        INSERT_SKEW before `instant` (one seek of index run_created_at) is below every id in
        it. Without the bound MariaDB either skips every newer run, or sorts the range's."""
        runs = self.filter(created_at__gte=instant)
        below = self._id_at(created_at__lt=instant - INSERT_SKEW, order="-created_at")
        return runs if below is None else runs.filter(pk__gt=below)

    def created_before(self, instant: dt.datetime) -> RunQuerySet:
        """Runs created before `instant`, with the bound on their ids as created_since's: the
        id of a run created INSERT_SKEW after `instant` is above every id in it."""
        runs = self.filter(created_at__lt=instant)
        above = self._id_at(created_at__gte=instant + INSERT_SKEW, order="created_at")
        return runs if above is None else runs.filter(pk__lt=above)

    def _id_at(self, *, order: str, **condition: dt.datetime) -> int | None:
        # From all runs, not this queryset's: any run so placed bounds the range.
        return (
            self.model._default_manager.filter(**condition)
            .order_by(order)
            .values_list("pk", flat=True)
            .first()
        )

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
