"""The platform's settings plus the bare endpoint bench/api.py compares against."""

from __future__ import annotations

from scheduler_site.settings import *  # noqa: F403
from scheduler_site.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "bench.bare"]
ROOT_URLCONF = "bench.api_urls"
