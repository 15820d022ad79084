"""Edits that lose nothing: a PATCH writes only the fields it sent, and If-Match refuses one
made on a version the client no longer has.

Two parallel PATCHes of different fields of one schedule both answered 200 and one was lost:
DRF saves the whole row from the copy it read. Here the row is locked while the edit is
validated and saved, `save(update_fields=...)` writes the fields the request named (and
what validation derived from them), and each read carries an ETag: a digest of the fields
a client can edit, so any path that changes one of them (an admin edit, plain SQL) changes it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from django.db import models, transaction
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.exceptions import APIException
from rest_framework.generics import get_object_or_404
from rest_framework.request import Request
from rest_framework.response import Response

IF_MATCH = OpenApiParameter(
    "If-Match",
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    description="The ETag of the read this edit is based on: a 412 if the object changed since.",
)


class PreconditionFailed(APIException):
    status_code = status.HTTP_412_PRECONDITION_FAILED
    default_code = "precondition_failed"


def etag(instance: models.Model) -> str:
    editable = {
        name: getattr(instance, instance._meta.get_field(name).attname) for name in instance.EDITABLE_FIELDS
    }
    digest = hashlib.sha256(json.dumps(editable, sort_keys=True, default=str).encode()).hexdigest()
    return f'"{digest[:32]}"'


def check_if_match(request: Request, instance: models.Model) -> None:
    """Raise PreconditionFailed unless If-Match (when sent) names the instance's current ETag."""
    header = request.headers.get("If-Match")
    if header is None:
        return
    sent = {tag.strip().removeprefix("W/") for tag in header.split(",")}
    current = etag(instance)
    if "*" not in sent and current not in sent:
        raise PreconditionFailed(
            {"detail": f"{instance} changed since the read that If-Match names.", "etag": current}
        )


class FieldsSentOnly:
    # For a ModelSerializer: update() saves only what was validated, not the whole row.
    # (A comment, not a docstring: the schema would show it as every model's description.)

    def update(self, instance: models.Model, validated_data: dict[str, Any]) -> models.Model:
        for name, value in validated_data.items():
            setattr(instance, name, value)
        fields = [
            *validated_data,
            *(f.name for f in instance._meta.concrete_fields if getattr(f, "auto_now", False)),
        ]
        instance.save(update_fields=fields)
        return instance


class VersionedEdits:
    """For a ModelViewSet: ETag on reads, locked field-wise PATCH, If-Match on PATCH and DELETE."""

    def retrieve(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        instance = self.get_object()
        return Response(self.get_serializer(instance).data, headers={"ETag": etag(instance)})

    @extend_schema(parameters=[IF_MATCH])
    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        with transaction.atomic():
            instance = self._locked()
            check_if_match(request, instance)
            serializer = self.get_serializer(instance, data=request.data, partial=True)
            serializer.is_valid(raise_exception=True)
            self.perform_update(serializer)
        instance.refresh_from_db()
        return Response(self.get_serializer(instance).data, headers={"ETag": etag(instance)})

    @extend_schema(parameters=[IF_MATCH])
    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        with transaction.atomic():
            instance = self._locked()
            check_if_match(request, instance)
            self.perform_destroy(instance)
        return Response(status=status.HTTP_204_NO_CONTENT)

    def _locked(self) -> models.Model:
        """get_object(), its row locked until the transaction ends: edits of it queue up."""
        lookup = self.lookup_url_kwarg or self.lookup_field
        instance = get_object_or_404(
            self.get_queryset().select_related(None).select_for_update(),
            **{self.lookup_field: self.kwargs[lookup]},
        )
        self.check_object_permissions(self.request, instance)
        return instance
