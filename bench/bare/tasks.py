"""The Celery task the naive endpoint sends: what anyone would write beside a create view."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="bench.bare.noop")
def noop(row_id: int) -> None:
    """Never run in bench/api.py (no worker): its messages wait in Redis and are emptied."""
