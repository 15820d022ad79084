from __future__ import annotations

from django.db import transaction
from rest_framework import generics, serializers

from bench.bare import tasks
from bench.bare.models import Row


class RowSerializer(serializers.ModelSerializer):
    class Meta:
        model = Row
        fields = ["id", "payload", "created_at"]


class RowCreate(generics.CreateAPIView):
    """A bare DRF create endpoint: same authentication and permissions, one INSERT."""

    queryset = Row.objects.all()
    serializer_class = RowSerializer


class RowCreateAndSend(RowCreate):
    """The naive submit: the same create, then `.delay()` of a Celery task after the commit."""

    def perform_create(self, serializer: RowSerializer) -> None:
        row = serializer.save()
        transaction.on_commit(lambda: tasks.noop.delay(row.pk))
