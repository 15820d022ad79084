from __future__ import annotations

from rest_framework import generics, serializers

from bench.bare.models import Row


class RowSerializer(serializers.ModelSerializer):
    class Meta:
        model = Row
        fields = ["id", "payload", "created_at"]


class RowCreate(generics.CreateAPIView):
    """A bare DRF create endpoint: same authentication and permissions, one INSERT."""

    queryset = Row.objects.all()
    serializer_class = RowSerializer
