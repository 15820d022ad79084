from __future__ import annotations

import datetime as dt
from typing import Any

import django_filters
from django.core.exceptions import ValidationError
from django_filters.fields import IsoDateTimeField

from tasks_app.choices import AlertState, RunState, WorkflowState
from tasks_app.models import Alert, Run, WorkflowRun
from tasks_app.querysets import RunQuerySet


class UtcDateTimeField(IsoDateTimeField):
    """An ISO 8601 instant, in UTC: 9999-12-31T23:00:00-14:00 parses, then overflowed in
    the database adapter's own conversion (a 500)."""

    def to_python(self, value: Any) -> dt.datetime | None:
        instant = super().to_python(value)
        if instant is None:
            return None
        try:
            return instant.astimezone(dt.UTC)
        except OverflowError:
            raise ValidationError("Out of the range of dates.", code="overflow") from None


class UtcDateTimeFilter(django_filters.IsoDateTimeFilter):
    field_class = UtcDateTimeField


class RunFilter(django_filters.FilterSet):
    """The runs list's filters; the index each one's newest-first page uses is named beside it
    (tasks_app/models/runs.py; checked by tests/test_query_plans.py)."""

    task = django_filters.CharFilter(field_name="task__name")  # run_task
    # No DISTINCT: a filter on the run's own column repeats no row (a SELECT DISTINCT over
    # every column sorted a temporary table of the state's runs: seconds at a million).
    state = django_filters.MultipleChoiceFilter(choices=RunState.choices, distinct=False)  # run_state
    created_after = UtcDateTimeFilter(method="filter_created_after")  # PRIMARY, bounded by run_created_at
    created_before = UtcDateTimeFilter(method="filter_created_before")  # PRIMARY, bounded by run_created_at
    schedule = django_filters.NumberFilter(field_name="schedule_id")  # run_schedule (PRIMARY if dense)
    workflow_run = django_filters.NumberFilter(field_name="workflow_run_id")  # run_workflow_step

    class Meta:
        model = Run
        fields = ["task", "state", "created_after", "created_before", "schedule", "workflow_run"]

    def filter_created_after(self, queryset: RunQuerySet, name: str, value: dt.datetime) -> RunQuerySet:
        return queryset.created_since(value)

    def filter_created_before(self, queryset: RunQuerySet, name: str, value: dt.datetime) -> RunQuerySet:
        return queryset.created_before(value)


class WorkflowRunFilter(django_filters.FilterSet):
    workflow = django_filters.CharFilter(field_name="workflow__name")
    state = django_filters.MultipleChoiceFilter(choices=WorkflowState.choices)

    class Meta:
        model = WorkflowRun
        fields = ["workflow", "state"]


class AlertFilter(django_filters.FilterSet):
    state = django_filters.MultipleChoiceFilter(choices=AlertState.choices)
    rule = django_filters.NumberFilter(field_name="rule_id")
    task = django_filters.CharFilter(field_name="task__name")

    class Meta:
        model = Alert
        fields = ["state", "rule", "task"]
