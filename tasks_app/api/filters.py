from __future__ import annotations

import django_filters

from tasks_app.lifecycle import RunState
from tasks_app.models import Run, WorkflowRun, WorkflowState


class RunFilter(django_filters.FilterSet):
    task = django_filters.CharFilter(field_name="task__name")
    state = django_filters.MultipleChoiceFilter(choices=RunState.choices)
    created_after = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="lt")
    schedule = django_filters.NumberFilter(field_name="schedule_id")
    workflow_run = django_filters.NumberFilter(field_name="workflow_run_id")

    class Meta:
        model = Run
        fields = ["task", "state", "created_after", "created_before", "schedule", "workflow_run"]


class WorkflowRunFilter(django_filters.FilterSet):
    workflow = django_filters.CharFilter(field_name="workflow__name")
    state = django_filters.MultipleChoiceFilter(choices=WorkflowState.choices)

    class Meta:
        model = WorkflowRun
        fields = ["workflow", "state"]
