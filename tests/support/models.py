from __future__ import annotations

from django.db import models


class Execution(models.Model):
    """What `tests.record` did, one row under each run's id: `times` > 1 is a run executed twice."""

    run_id = models.BigIntegerField(unique=True)
    times = models.PositiveIntegerField(default=1)
    attempt = models.PositiveIntegerField()

    def __str__(self) -> str:
        return f"run {self.run_id} executed {self.times} time(s)"
