"""Liveness, readiness and metrics endpoints."""

from __future__ import annotations

from typing import Any

from django.db import connection
from django.db.models import Count
from django.http import HttpRequest, HttpResponse, JsonResponse
from drf_spectacular.utils import extend_schema
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from rest_framework.decorators import api_view, permission_classes, renderer_classes
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request

from tasks_app import redis_client
from tasks_app.api.permissions import requires
from tasks_app.models import Run


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def readyz(request: HttpRequest) -> JsonResponse:
    checks = {"database": _check_database(), "broker": _check_broker()}
    ready = all(value == "ok" for value in checks.values())
    return JsonResponse({"status": "ok" if ready else "unavailable", **checks}, status=200 if ready else 503)


def _check_database() -> str:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return "ok"
    except Exception as exc:
        return f"error: {type(exc).__name__}"


def _check_broker() -> str:
    try:
        redis_client.ping()
        return "ok"
    except Exception as exc:
        return f"error: {type(exc).__name__}"


class RunsCollector:
    """Run counts by task and state, read from the database at scrape time."""

    def collect(self) -> Any:
        runs = GaugeMetricFamily("scheduler_runs", "Runs by task and state", labels=["task", "state"])
        rows = Run.objects.values_list("task__name", "state").annotate(n=Count("id")).order_by()
        for task, state, count in rows:
            runs.add_metric([task, state], count)
        yield runs


class PrometheusRenderer(BaseRenderer):
    media_type = "text/plain"
    format = "prometheus"
    charset = "utf-8"

    def render(self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None) -> Any:
        return data if isinstance(data, (bytes, str)) else str(data)


@extend_schema(exclude=True)
@api_view(["GET"])
@permission_classes([requires("view_run")])
@renderer_classes([PrometheusRenderer])
def metrics(request: Request) -> HttpResponse:
    registry = CollectorRegistry()
    registry.register(RunsCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
