from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from django.conf import settings
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from tasks_app.lifecycle import TERMINAL_STATES, RunState
from tasks_app.models import Run, RunEvent, Task

# Handlers used only by the tests.
from tests import handlers as _test_handlers  # noqa: F401
from tests.receivers import Receiver


def pytest_configure(config: pytest.Config) -> None:
    engine = settings.DATABASES["default"]["ENGINE"]
    # The lifecycle and schedule tests also run on SQLite (scripts/test): the embedded default
    # must record the same events and recompute schedules the same way.
    on_sqlite = engine == "django.db.backends.sqlite3" and os.environ.get("TESTS_ON_SQLITE") == "1"
    if engine != "django.db.backends.mysql" and not on_sqlite:
        pytest.exit(
            f"the tests run against MariaDB, not {engine}: use scripts/test, or set "
            "DATABASE_URL=mysql://root@127.0.0.1:3306/test and REDIS_URL=redis://127.0.0.1:6379/15",
            returncode=2,
        )


@pytest.fixture(autouse=True)
def _fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _alert_rules_read_afresh() -> None:
    """Each test reads the alert rules it made: none kept from a test rolled back before it."""
    from tasks_app import alerts

    alerts.reset_rules()


@pytest.fixture(autouse=True)
def _metrics_afresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test inherits the counts another left unwritten, nor the pause of writes another's
    Redis outage began; and no thread writes them behind a test's back (it flushes itself, or
    a scrape does)."""
    from tasks_app import metrics

    metrics._pending = metrics._Batch()
    monkeypatch.setattr(metrics, "_paused_until", 0.0)
    monkeypatch.setattr(metrics, "BACKGROUND", False)


@pytest.fixture
def broker() -> redis.Redis:
    """The test Redis database, emptied before and after the test."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def broker_key(name: str) -> str:
    """The Redis key under which kombu keeps `name` (a queue, or its own "unacked")."""
    return settings.BROKER_KEY_PREFIX + name


def queued_messages(client: redis.Redis, queue: str = "default") -> list[dict[str, Any]]:
    """Messages waiting in `queue` (all its priority lists), oldest first."""
    messages = []
    keys = [broker_key(queue), *(broker_key(f"{queue}\x06\x16{p}") for p in range(1, 10))]
    for key in keys:
        if client.type(key) == b"list":
            messages.extend(json.loads(raw) for raw in reversed(client.lrange(key, 0, -1)))
    return messages


def queued_ids(client: redis.Redis, queue: str = "default") -> list[str]:
    return [message["headers"]["id"] for message in queued_messages(client, queue)]


@pytest.fixture
def admin_client(client: Client, db: Any) -> Client:
    """Signed in to the admin as a superuser ("boss")."""
    client.force_login(User.objects.create_superuser("boss", password="pw"))
    return client


@pytest.fixture
def staff_with(client: Client, db: Any) -> Callable[..., Client]:
    """Signs in to the admin a staff user with just the permissions named (a new one each call)."""
    counter = iter(range(1, 1000))

    def make(*codenames: str) -> Client:
        user = User.objects.create_user(f"staff-{next(counter)}", password="pw", is_staff=True)
        user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
        client.force_login(user)
        return client

    return make


@pytest.fixture
def make_task(db: Any) -> Callable[..., Task]:
    counter = iter(range(1, 10_000))

    def make(**fields: Any) -> Task:
        fields.setdefault("name", f"task-{next(counter)}")
        fields.setdefault("handler", "builtin.noop")
        return Task.objects.create(**fields)

    return make


@pytest.fixture
def task(make_task: Callable[..., Task]) -> Task:
    return make_task(name="noop")


@pytest.fixture
def make_run(db: Any) -> Callable[..., Run]:
    """A run placed directly in `state`, with no history: a fixture, not a move (the
    moves and the events they record are what the tests look at)."""

    def make(task: Task, state: RunState = RunState.CREATED, **fields: Any) -> Run:
        if state in TERMINAL_STATES:
            fields.setdefault("finished_at", timezone.now())
        fields.setdefault("message_number", 0 if state == RunState.CREATED else 1)
        run = Run.objects.create(task=task, state=state, **fields)
        RunEvent.objects.filter(run=run).delete()  # what the insert trigger recorded
        return run

    return make


def _user(username: str, *perms: str) -> User:
    user = User.objects.create_user(username=username, password="pw-" + username)
    for codename in perms:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    return user


def _client(user: User | None) -> APIClient:
    client = APIClient()
    if user is not None:
        token = Token.objects.create(user=user)
        client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


MODELS = ("task", "run", "schedule", "workflow", "workflowrun")
VIEW_PERMISSIONS = (
    *(f"view_{model}" for model in MODELS),
    "view_worker",
    "view_channel",
    "view_alertrule",
    "view_alert",
)


@pytest.fixture
def owner(db: Any) -> User:
    return _user(
        "owner",
        *VIEW_PERMISSIONS,
        *(f"{verb}_{model}" for model in MODELS for verb in ("add", "change", "delete")),
    )


@pytest.fixture
def api(owner: User) -> APIClient:
    """Signed in with every permission on tasks, runs, schedules and workflows."""
    return _client(owner)


@pytest.fixture
def reader(db: Any) -> APIClient:
    """Another user: signed in, allowed to read everything and to change nothing."""
    return _client(_user("reader", *VIEW_PERMISSIONS))


@pytest.fixture
def stranger(db: Any) -> APIClient:
    """Another user: signed in, without any model permission."""
    return _client(_user("stranger"))


@pytest.fixture
def client_with(db: Any) -> Callable[..., APIClient]:
    """A signed-in user with just the permissions named."""
    counter = iter(range(1, 1000))

    def make(*perms: str) -> APIClient:
        return _client(_user(f"user-{next(counter)}", *perms))

    return make


@pytest.fixture
def anonymous(db: Any) -> APIClient:
    return _client(None)


def wait_until(predicate: Callable[[], Any], *, timeout: float = 30, what: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def receiver(settings: Any, db: Any) -> Iterator[Receiver]:
    """A local HTTP server that webhooks may reach (the host allowlist names its port)."""
    receiver = Receiver()
    settings.BUILTIN_HTTP_ALLOWED_HOSTS = [f"127.0.0.1:{receiver.port}"]
    yield receiver
    receiver.close()
