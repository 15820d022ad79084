from __future__ import annotations

from django.db import models
from django.utils import timezone

from tasks_app.choices import Actor


class Event(models.Model):
    """One move: from, to, when, why, by whom. Written by the database triggers of
    db_triggers.py from the columns lifecycle.py sets; a history, never edited."""

    at = models.DateTimeField(default=timezone.now)
    reason = models.CharField(max_length=500, blank=True)
    actor = models.CharField(max_length=10, choices=Actor.choices, default=Actor.SYSTEM)
    actor_name = models.CharField(max_length=150, blank=True)

    class Meta:
        abstract = True
        ordering = ["at", "id"]

    def __str__(self) -> str:
        return f"{self.from_state or '-'} -> {self.to_state}"
