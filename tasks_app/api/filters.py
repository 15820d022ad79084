from __future__ import annotations

from typing import Any

import django_filters

from tasks_app.lifecycle import RunState
from tasks_app.models import Run


class RunFilter(django_filters.FilterSet):
    task = django_filters.CharFilter(field_name="task__name")
    state = django_filters.MultipleChoiceFilter(choices=RunState.choices)
    created_after = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="lt")
    schedule = django_filters.NumberFilter(field_name="schedule_id")
    # Workflows come with their own models; until then no run has one, so filtering
    # on it finds nothing (rather than ignoring the filter).
    workflow_run = django_filters.NumberFilter(method="nothing_yet")

    class Meta:
        model = Run
        fields = ["task", "state", "created_after", "created_before", "schedule", "workflow_run"]

    def nothing_yet(self, queryset: Any, name: str, value: Any) -> Any:
        return queryset.none()
