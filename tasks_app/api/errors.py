"""API errors: domain exceptions become 409s, an unreachable database or broker a 503."""

from __future__ import annotations

import logging
from typing import Any

import kombu.exceptions
import redis
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import InterfaceError, OperationalError
from django.db.models import ProtectedError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.defaults import page_not_found
from django.views.defaults import server_error as default_server_error
from rest_framework import status
from rest_framework.exceptions import APIException
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from tasks_app.definitions import InUse
from tasks_app.lifecycle import InvalidTransition
from tasks_app.models.workflows import InvalidWorkflow
from tasks_app.submission import IdempotencyConflict, TaskDisabled
from tasks_app.timing import InvalidSchedule
from tasks_app.workflows import WorkflowConflict

logger = logging.getLogger(__name__)


class Conflict(APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "The request conflicts with the current state."
    default_code = "conflict"


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, InvalidTransition):
        return Response({"detail": str(exc), "state": exc.current}, status=status.HTTP_409_CONFLICT)
    if isinstance(exc, WorkflowConflict):
        return Response({"detail": str(exc), "state": exc.current}, status=status.HTTP_409_CONFLICT)
    if isinstance(exc, InvalidWorkflow):
        return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
    if isinstance(exc, InvalidSchedule):  # a stored row's timing or inputs (validation gives 400s)
        return Response({"detail": f"The schedule cannot fire: {exc}"}, status=status.HTTP_409_CONFLICT)
    if isinstance(exc, (TaskDisabled, InUse)):
        return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
    if isinstance(exc, IdempotencyConflict):
        return Response({"detail": str(exc), "run": exc.run.pk}, status=status.HTTP_409_CONFLICT)
    if isinstance(exc, ProtectedError):  # a schedule still fires the task or workflow
        used_by = ", ".join(str(obj) for obj in list(exc.protected_objects)[:20])
        return Response(
            {"detail": f"Still used by {used_by}; change or delete them first."},
            status=status.HTTP_409_CONFLICT,
        )
    if isinstance(exc, RequestDataTooBig):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return Response(
            {"detail": f"The request body is over {limit} bytes."},
            status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    if isinstance(exc, (OperationalError, InterfaceError)):
        return _unavailable("database")
    # Redis holds the throttling counters and the concurrency locks besides the queues.
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError, kombu.exceptions.OperationalError)):
        return _unavailable("broker")
    if isinstance(exc, redis.RedisError):  # an error Redis answered: nothing the client sent
        logger.error("Redis refused a command: %s", exc)
        return _unavailable("broker")
    return drf_exception_handler(exc, context)


def _unavailable(what: str) -> Response:
    return Response(
        {"detail": f"The {what} is unreachable; try again shortly."},
        status=status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": "5"},
    )


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """Django's 404 for a URL no route matches: JSON under /api/, as every other API answer."""
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": "Not found."}, status=status.HTTP_404_NOT_FOUND)
    return page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    """Django's 500, JSON under /api/; never a traceback (DEBUG is off where it matters)."""
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": "Internal error."}, status=status.HTTP_500_INTERNAL_SERVER_ERROR)
    return default_server_error(request)
