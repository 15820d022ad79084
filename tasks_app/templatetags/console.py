"""Filters the console's templates share: `{% load console %}`."""

from __future__ import annotations

from django import template

from tasks_app.admin.common import seconds_text

register = template.Library()


@register.filter
def seconds(value: float | None) -> str:
    """12.5 -> "12.5 s"; None -> "-"."""
    return seconds_text(value)


@register.filter
def percent(value: float | None) -> str:
    """0.9731 -> "97.3 %"; None (nothing to judge) -> "-"."""
    return "-" if value is None else f"{value * 100:.1f} %"
