from __future__ import annotations

import ast
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


GOOD = {
    "SCHEDULER_ENV": "production",
    "SECRET_KEY": "k3y-Of-fifty-chars-or-more-with-many-different-ones-9",
    "ALLOWED_HOSTS": "example.org",
}


def setting_values(*names: str, **env: str) -> dict[str, object]:
    """The named settings as a process with `env` sees them."""
    environment = {k: v for k, v in os.environ.items() if k not in {"DEBUG", "SECRET_KEY", "ALLOWED_HOSTS"}}
    script = f"from django.conf import settings; print(repr({{n: getattr(settings, n) for n in {names!r}}}))"
    shown = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**environment, **env, "DJANGO_SETTINGS_MODULE": "scheduler_site.settings"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr[-2000:]
    return ast.literal_eval(shown.stdout.strip().splitlines()[-1])


def test_production_settings_start_when_safe() -> None:
    assert load_settings(**GOOD).returncode == 0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"DEBUG": "1"}, "DEBUG must be off"),
        ({"SECRET_KEY": "insecure-development-key-do-not-use-in-production"}, "SECRET_KEY"),
        ({"SECRET_KEY": "short"}, "SECRET_KEY"),
        ({"SECRET_KEY": "s" * 40}, "SECRET_KEY"),  # under Django's 50 characters
        ({"SECRET_KEY": "abab" * 20}, "SECRET_KEY"),  # low entropy: under 5 different characters
        ({"SECRET_KEY": "django-insecure-" + "x1y2z3" * 10}, "SECRET_KEY"),
        ({"ALLOWED_HOSTS": ""}, "ALLOWED_HOSTS"),
        ({"ALLOWED_HOSTS": "*"}, "ALLOWED_HOSTS"),
        ({"ALLOWED_HOSTS": "example.org,*"}, "ALLOWED_HOSTS"),
        ({"SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto"}, "SECURE_PROXY_SSL_HEADER"),
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


def test_embedded_sqlite_default_keeps_its_triggers_after_every_migration(tmp_path) -> None:
    """The run command's SQLite: table rebuilds by later migrations must not lose the triggers."""
    import sqlite3

    db = tmp_path / "db.sqlite3"
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{db}",
        "DJANGO_SETTINGS_MODULE": "scheduler_site.settings",
        "REDIS_URL": "redis://127.0.0.1:1/0",  # nothing here needs the broker
    }
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "-v", "0"], cwd=ROOT, env=env, check=True, timeout=120)

    triggers = sqlite3.connect(db).execute("SELECT name FROM sqlite_master WHERE type='trigger'")
    assert {row[0] for row in triggers} == {
        "tasks_app_run_inserted",
        "tasks_app_run_moved",
        "tasks_app_workflowrun_inserted",
        "tasks_app_workflowrun_moved",
        "tasks_app_schedule_inserted",
        "tasks_app_schedule_retimed",
        "tasks_app_schedule_mended",
    }
    script = (
        "from tasks_app.models import Run, Schedule, Task; from tasks_app.submission import RunRequest;"
        "from tasks_app import execution, submission;"
        "t = Task.objects.create(name='t', handler='builtin.noop');"
        "r = submission.submit_many([RunRequest(task=t)])[0];"
        "execution.claim(r, 1, 'w'); execution.complete(r, {}, 'w');"
        "s = Schedule.objects.create(task=t, interval_seconds=5); s.refresh_from_db();"
        "print(list(r.events.values_list('to_state', flat=True)), s.next_fire_at.year)"
    )
    shown = subprocess.run(
        [*manage, "shell", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert "['created', 'pending', 'running', 'completed'] 1970" in shown.stdout, shown.stderr[-2000:]


HTTPS = ("SECURE_SSL_REDIRECT", "SECURE_HSTS_SECONDS", "SECURE_HSTS_INCLUDE_SUBDOMAINS",
         "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE", "SECURE_PROXY_SSL_HEADER")  # fmt: skip


def test_production_turns_https_on_and_each_part_can_be_turned_off() -> None:
    on = setting_values(*HTTPS, **GOOD)
    assert on == {
        "SECURE_SSL_REDIRECT": True, "SECURE_HSTS_SECONDS": 31536000, "SECURE_HSTS_INCLUDE_SUBDOMAINS": True,
        "SESSION_COOKIE_SECURE": True, "CSRF_COOKIE_SECURE": True, "SECURE_PROXY_SSL_HEADER": None,
    }  # fmt: skip
    off = setting_values(
        *HTTPS, **GOOD, SECURE_SSL_REDIRECT="false", SECURE_HSTS_SECONDS="0", SESSION_COOKIE_SECURE="0",
        CSRF_COOKIE_SECURE="no", SECURE_PROXY_SSL_HEADER="X-Forwarded-Proto=https",
    )  # fmt: skip
    assert off["SECURE_SSL_REDIRECT"] is False and off["SECURE_HSTS_SECONDS"] == 0
    assert off["SESSION_COOKIE_SECURE"] is False and off["CSRF_COOKIE_SECURE"] is False
    assert off["SECURE_PROXY_SSL_HEADER"] == ("HTTP_X_FORWARDED_PROTO", "https")


def test_development_keeps_plain_http() -> None:
    values = setting_values(*HTTPS, SCHEDULER_ENV="development")
    assert values["SECURE_SSL_REDIRECT"] is False and values["SESSION_COOKIE_SECURE"] is False


def test_check_deploy_passes_with_production_settings() -> None:
    environment = {k: v for k, v in os.environ.items() if k not in {"DEBUG", "SECRET_KEY", "ALLOWED_HOSTS"}}
    checked = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env={**environment, **GOOD},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "no issues" in checked.stdout


@pytest.mark.parametrize("url", ["kafka://127.0.0.1:9092", "127.0.0.1:6379", "sqs://"])
def test_a_broker_url_of_neither_redis_nor_rabbitmq_refuses_to_start(url) -> None:
    done = load_settings(BROKER_URL=url)
    assert done.returncode != 0
    assert "BROKER_URL must name Redis (redis://) or RabbitMQ (amqp://)" in done.stderr


def test_the_broker_is_redis_unless_broker_url_names_rabbitmq() -> None:
    show = (
        "from django.conf import settings as s; print(s.CELERY_BROKER_URL, s.BROKER_IS_REDIS, "
        "getattr(s, 'CELERY_TASK_QUEUE_MAX_PRIORITY', None), "
        "'global_keyprefix' in s.CELERY_BROKER_TRANSPORT_OPTIONS)"
    )
    env = {k: v for k, v in os.environ.items() if k != "BROKER_URL"}
    env |= {"DJANGO_SETTINGS_MODULE": "scheduler_site.settings", "REDIS_URL": "redis://127.0.0.1:6379/4"}

    def shown(**extra: str) -> list[str]:
        command = [sys.executable, "-c", show]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60, env=env | extra)
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    assert shown() == ["redis://127.0.0.1:6379/4", "True", "None", "True"]
    amqp = "amqp://u:p@rabbit:5672/v"
    assert shown(BROKER_URL=amqp) == [amqp, "False", "9", "False"]


def test_the_wsgi_module_freezes_what_loading_left() -> None:
    # Out of the collector's sight, a full collection no longer pauses a request for 60-120 ms.
    done = subprocess.run(
        [sys.executable, "-c", "import gc, scheduler_site.wsgi; print(gc.get_freeze_count())"],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "scheduler_site.settings"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) > 50_000  # Django, DRF and the views, not just a few objects
