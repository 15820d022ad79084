from __future__ import annotations

from django.db import models


class Row(models.Model):
    """What the bare endpoint of bench/api.py creates: one row per request."""

    payload = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"row {self.pk}"
