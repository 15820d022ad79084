"""Minimal Django settings for the django-celery-results baseline."""

from __future__ import annotations

import os

import dj_database_url

SECRET_KEY = "benchmark-only"
USE_TZ = True
INSTALLED_APPS = ["django_celery_results"]
DATABASES = {"default": dj_database_url.parse(os.environ["BENCH_DATABASE_URL"])}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
