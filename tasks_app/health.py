"""Liveness, readiness and metrics endpoints."""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from drf_spectacular.utils import extend_schema
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from rest_framework.authentication import (
    BaseAuthentication,
    SessionAuthentication,
    TokenAuthentication,
    get_authorization_header,
)
from rest_framework.decorators import (
    api_view,
    authentication_classes,
    permission_classes,
    renderer_classes,
)
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.permissions import BasePermission
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request

from tasks_app import broker, redis_client
from tasks_app import metrics as platform_metrics
from tasks_app.api.permissions import requires


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def readyz(request: HttpRequest) -> JsonResponse:
    checks = {"database": _check_database(), "broker": _check(redis_client.ping)}
    if not settings.BROKER_IS_REDIS:  # Redis keeps the locks; RabbitMQ carries the messages
        checks |= {"broker": _check(broker.ping), "redis": checks["broker"]}
    ready = all(value == "ok" for value in checks.values())
    return JsonResponse({"status": "ok" if ready else "unavailable", **checks}, status=200 if ready else 503)


def _check_database() -> str:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return "ok"
    except Exception as exc:
        return f"error: {type(exc).__name__}"


def _check(ping: Callable[[], None]) -> str:
    try:
        ping()
        return "ok"
    except Exception as exc:
        return f"error: {type(exc).__name__}"


class ScrapeKey:
    """The `request.auth` of a scrape authenticated by METRICS_TOKEN: it reads /metrics only."""


class ScrapeKeyAuthentication(BaseAuthentication):
    """`Authorization: Bearer <METRICS_TOKEN>`, for a Prometheus that holds no user's token. A
    bearer that is not the key (or any bearer while no key is set) is refused, a 401."""

    def authenticate(self, request: Request) -> tuple[AnonymousUser, ScrapeKey] | None:
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() != b"bearer":
            return None
        key = settings.METRICS_TOKEN.encode()
        if len(parts) != 2 or not key or not hmac.compare_digest(parts[1], key):
            raise AuthenticationFailed("Invalid scrape key.")
        return AnonymousUser(), ScrapeKey()

    def authenticate_header(self, request: Request) -> str:
        return "Bearer"


class HasScrapeKey(BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        return isinstance(request.auth, ScrapeKey)


class Collector:
    """The platform's metrics (tasks_app.metrics), for one scrape."""

    def collect(self) -> Any:
        return platform_metrics.collect()


class PrometheusRenderer(BaseRenderer):
    media_type = "text/plain"
    format = "prometheus"
    charset = "utf-8"

    def render(self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None) -> Any:
        # Only a refusal comes here ({"detail": ...}), from a client that asked for text: JSON still.
        return data if isinstance(data, (bytes, str)) else json.dumps(data)


@extend_schema(exclude=True)
@api_view(["GET"])
# Token first: a request without credentials is a 401 that names it (as the API's).
@authentication_classes([TokenAuthentication, ScrapeKeyAuthentication, SessionAuthentication])
@permission_classes([HasScrapeKey | requires("view_run")])
@renderer_classes([JSONRenderer, PrometheusRenderer])  # JSON for a refusal, unless text is asked for
def metrics(request: Request) -> HttpResponse:
    registry = CollectorRegistry()
    registry.register(Collector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
