from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command

ROOT = Path(__file__).resolve().parent.parent


def load_settings(**env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k not in {"DEBUG", "SECRET_KEY", "ALLOWED_HOSTS"}}
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-c", "from django.conf import settings; settings.INSTALLED_APPS"],
        cwd=ROOT,
        env={**environment, "DJANGO_SETTINGS_MODULE": "scheduler_site.settings"},
        capture_output=True,
        text=True,
        timeout=60,
    )


GOOD = {"SCHEDULER_ENV": "production", "SECRET_KEY": "s" * 40, "ALLOWED_HOSTS": "example.org"}


def test_production_settings_start_when_safe() -> None:
    assert load_settings(**GOOD).returncode == 0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"DEBUG": "1"}, "DEBUG must be off"),
        ({"SECRET_KEY": "insecure-development-key-do-not-use-in-production"}, "SECRET_KEY"),
        ({"SECRET_KEY": "short"}, "SECRET_KEY"),
        ({"ALLOWED_HOSTS": ""}, "ALLOWED_HOSTS"),
    ],
)
def test_production_settings_refuse_unsafe_values(override, message) -> None:
    result = load_settings(**{**GOOD, **override})
    assert result.returncode != 0
    assert message in result.stderr


def test_malformed_boolean_is_refused_by_name() -> None:
    result = load_settings(DEBUG="perhaps")
    assert result.returncode != 0
    assert "DEBUG must be one of" in result.stderr


def test_celery_accepts_json_only() -> None:
    from scheduler_site.celery import app

    assert app.conf.accept_content == ["json"]
    assert app.conf.task_serializer == "json"
    assert app.conf.task_acks_late and app.conf.task_reject_on_worker_lost
    assert app.conf.worker_prefetch_multiplier == 1


@pytest.mark.django_db
def test_migrations_are_up_to_date() -> None:
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)
