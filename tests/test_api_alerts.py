"""The alerts API: channels (and their test against a real local HTTP receiver), alert rules
and the alerts they opened, with the three personas, validation that names the field, and
hostile inputs that are 400s, never 500s."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.core import mail
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tasks_app import alerts, lifecycle, notifications
from tasks_app.alerts import Subject
from tasks_app.choices import AlertCondition, ChannelKind, RunState
from tasks_app.models import Alert, AlertRule, Channel, Notification, Schedule, Workflow
from tests.conftest import _client, _user
from tests.receivers import Receiver

S, C = RunState, AlertCondition
CHANNELS, RULES, ALERTS = "/api/v1/channels/", "/api/v1/alert-rules/", "/api/v1/alerts/"
NOW = dt.datetime(2026, 3, 2, 12, 0, tzinfo=dt.UTC)
SECRET = "s3cret-ключ"
HOOK = "https://hooks.example/alerts"
STEP = {"key": "a", "task": "noop", "kwargs": {}, "depends_on": [], "trigger_rule": "all_success"}
ERROR = {"type": "ValueError", "message": "boom", "traceback": ""}

CHANNEL_FIELDS = {
    "id", "name", "kind", "target", "enabled", "has_secret", "last_error", "last_error_at", "created_at",
    "updated_at",
}  # fmt: skip
RULE_FIELDS = {
    "id", "name", "condition", "task", "schedule", "workflow", "consecutive", "grace_seconds", "max_seconds",
    "reminder_seconds", "channels", "enabled", "created_at", "updated_at",
}  # fmt: skip
ALERT_FIELDS = {
    "id", "rule", "rule_name", "condition", "subject", "state", "reason", "resolution", "opened_at",
    "resolved_at", "downtime_seconds", "run", "task", "schedule", "scheduled_for", "timeline",
    "notifications",
}  # fmt: skip
NOTIFICATION_FIELDS = {
    "id", "channel", "channel_name", "event", "state", "attempts", "last_error", "sent_at", "created_at",
    "delivery_id",
}  # fmt: skip
ALERT_MODELS = ("channel", "alertrule")
ALERT_VIEWS = ("view_channel", "view_alertrule", "view_alert")


@pytest.fixture(autouse=True)
def _hooks_allowed(settings: Any) -> None:
    settings.BUILTIN_HTTP_ALLOWED_HOSTS = ["hooks.example"]


@pytest.fixture
def alerts_api(db: Any) -> Any:
    """Signed in with every permission on channels, alert rules and alerts (and reads of tasks)."""
    perms = [f"{verb}_{model}" for model in ALERT_MODELS for verb in ("add", "change", "delete")]
    return _client(_user("alerts-owner", *ALERT_VIEWS, *perms, "view_task"))


@pytest.fixture
def alerts_reader(db: Any) -> Any:
    """Another user: reads channels, rules and alerts, changes nothing."""
    return _client(_user("alerts-reader", *ALERT_VIEWS))


@pytest.fixture
def channel(db: Any) -> Channel:
    return Channel.objects.create(name="ops hook", kind=ChannelKind.WEBHOOK, target=HOOK, secret=SECRET)


@pytest.fixture
def rule(channel: Channel) -> AlertRule:
    rule = AlertRule.objects.create(name="workers", condition=C.WORKER_OFFLINE)
    rule.channels.set([channel])
    return rule


@pytest.fixture
def hook(django_capture_on_commit_callbacks: Any) -> Any:
    """Runs what follows moves (the after-move hook) as a commit would."""
    return lambda: django_capture_on_commit_callbacks(execute=True)


def fail(run: Any) -> None:
    """pending -> running -> failed, as a worker moves it."""
    lifecycle.move(run, S.RUNNING, actor="worker", actor_name="w1@host", worker="w1@host")
    lifecycle.move(run, S.FAILED, actor="worker", actor_name="w1@host", error=ERROR)


def open_one(rule: AlertRule, name: str = "w1") -> Alert:
    alert = alerts.open_alert(rule, Subject(f"worker:{name}", f"worker {name}"), "no heartbeat", now=NOW)
    assert alert is not None
    return alert


# --- a real receiver -----------------------------------------------------------------


# --- channels ------------------------------------------------------------------------


def test_a_channel_is_created_and_its_secret_is_never_shown(alerts_api) -> None:
    response = alerts_api.post(
        CHANNELS, {"name": "ops hook", "kind": "webhook", "target": HOOK, "secret": SECRET}, format="json"
    )

    assert response.status_code == 201, response.data
    assert set(response.data) == CHANNEL_FIELDS
    assert (response.data["has_secret"], response.data["enabled"], response.data["last_error"]) == (
        True,
        True,
        "",
    )
    pk = response.data["id"]
    assert Channel.objects.get(pk=pk).secret == SECRET
    for read in (alerts_api.get(CHANNELS), alerts_api.get(f"{CHANNELS}{pk}/"), alerts_api.options(CHANNELS)):
        assert read.status_code == 200
        assert SECRET not in read.content.decode()
    assert alerts_api.get(CHANNELS).data["results"][0]["has_secret"] is True


def test_a_secret_is_replaced_and_cleared_but_never_read(alerts_api, channel) -> None:
    path = f"{CHANNELS}{channel.pk}/"

    replaced = alerts_api.patch(path, {"secret": "another"}, format="json")
    assert (replaced.status_code, replaced.data["has_secret"]) == (200, True)
    assert "another" not in replaced.content.decode()
    assert Channel.objects.get().secret == "another"

    cleared = alerts_api.patch(path, {"secret": ""}, format="json")
    assert (cleared.status_code, cleared.data["has_secret"]) == (200, False)
    assert Channel.objects.get().secret == ""


def test_an_email_channel_takes_addresses(alerts_api) -> None:
    response = alerts_api.post(
        CHANNELS,
        {"name": "mail", "kind": "email", "target": "ops@example.com, oncall@example.org"},
        format="json",
    )
    assert response.status_code == 201, response.data
    assert response.data["has_secret"] is False


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "webhook", "target": HOOK}, "name"),
        ({"name": "", "kind": "webhook", "target": HOOK}, "name"),
        ({"name": "x" * 201, "kind": "webhook", "target": HOOK}, "name"),
        ({"name": {"a": 1}, "kind": "webhook", "target": HOOK}, "name"),
        ({"name": "x", "target": HOOK}, "kind"),
        ({"name": "x", "kind": "sms", "target": HOOK}, "kind"),
        ({"name": "x", "kind": ["webhook"], "target": HOOK}, "kind"),
        ({"name": "x", "kind": "webhook"}, "target"),
        ({"name": "x", "kind": "webhook", "target": "https://evil.example/x"}, "target"),
        ({"name": "x", "kind": "webhook", "target": "https://hooks.example:8443/x"}, "target"),
        ({"name": "x", "kind": "webhook", "target": "ftp://hooks.example/x"}, "target"),
        ({"name": "x", "kind": "webhook", "target": "https://user:pw@hooks.example/x"}, "target"),
        ({"name": "x", "kind": "webhook", "target": "http://[::1"}, "target"),
        ({"name": "x", "kind": "webhook", "target": "https://hooks.example:99999/x"}, "target"),
        ({"name": "x", "kind": "webhook", "target": "https://hooks.example/" + "x" * 10_000}, "target"),
        (
            {"name": "x", "kind": "webhook", "target": "https://h\u043e\u043eks.example/x"},
            "target",
        ),  # Cyrillic o's
        ({"name": "x", "kind": "webhook", "target": "https://hooks.example/\x00"}, "target"),
        ({"name": "x", "kind": "webhook", "target": 12}, "target"),
        ({"name": "x", "kind": "slack", "target": "hooks.example/x"}, "target"),
        ({"name": "x", "kind": "email", "target": "not an address"}, "target"),
        ({"name": "x", "kind": "email", "target": ", ,"}, "target"),
        (
            {"name": "x", "kind": "email", "target": ",".join(f"a{i}@example.com" for i in range(21))},
            "target",
        ),
        ({"name": "x", "kind": "webhook", "target": HOOK, "secret": "s" * 256}, "secret"),
        ({"name": "x", "kind": "webhook", "target": HOOK, "secret": ["s"]}, "secret"),
        ({"name": "x", "kind": "webhook", "target": HOOK, "enabled": "maybe"}, "enabled"),
    ],
)
def test_an_invalid_channel_is_a_400_naming_the_field(alerts_api, body, field) -> None:
    response = alerts_api.post(CHANNELS, body, format="json")

    assert response.status_code == 400, response.data
    assert field in response.data
    assert not Channel.objects.exists()


def test_a_body_that_is_not_an_object_is_a_400(alerts_api) -> None:
    for body in ([1, 2], "x", 3):
        assert alerts_api.post(CHANNELS, body, format="json").status_code == 400
    assert not Channel.objects.exists()


def test_unicode_is_stored_as_written(alerts_api) -> None:
    response = alerts_api.post(
        CHANNELS,
        {"name": "Bereitschaft 🚨 夜間", "kind": "webhook", "target": "https://hooks.example/ä/🚨"},
        format="json",
    )
    assert response.status_code == 201, response.data
    assert Channel.objects.get().name == "Bereitschaft 🚨 夜間"


def test_a_patch_checks_the_target_against_the_kind_it_leaves(alerts_api, channel, settings) -> None:
    path = f"{CHANNELS}{channel.pk}/"

    to_email = alerts_api.patch(path, {"kind": "email"}, format="json")
    assert to_email.status_code == 400
    assert "target" in to_email.data
    assert Channel.objects.get().kind == "webhook"

    both = alerts_api.patch(path, {"kind": "email", "target": "ops@example.com"}, format="json")
    assert (both.status_code, both.data["kind"], both.data["target"]) == (200, "email", "ops@example.com")


def test_a_channel_whose_host_left_the_allowlist_can_still_be_renamed_and_disabled(
    alerts_api, channel, settings
) -> None:
    settings.BUILTIN_HTTP_ALLOWED_HOSTS = []
    path = f"{CHANNELS}{channel.pk}/"

    response = alerts_api.patch(path, {"name": "old hook", "enabled": False}, format="json")

    assert response.status_code == 200, response.data
    assert alerts_api.patch(path, {"target": HOOK + "/2"}, format="json").status_code == 400


def test_enabling_a_channel_again_clears_its_last_error(alerts_api, channel) -> None:
    Channel.objects.filter(pk=channel.pk).update(
        enabled=False, last_error="HTTP 410 from hooks", last_error_at=NOW
    )
    path = f"{CHANNELS}{channel.pk}/"
    assert alerts_api.get(path).data["last_error"] == "HTTP 410 from hooks"

    renamed = alerts_api.patch(path, {"name": "hook"}, format="json")
    assert renamed.data["last_error"] == "HTTP 410 from hooks"  # only enabling clears it

    response = alerts_api.patch(path, {"enabled": True}, format="json")

    assert response.status_code == 200
    assert (response.data["enabled"], response.data["last_error"], response.data["last_error_at"]) == (
        True,
        "",
        None,
    )
    channel.refresh_from_db()
    assert (channel.enabled, channel.last_error, channel.last_error_at) == (True, "", None)


def test_last_error_cannot_be_written(alerts_api, channel) -> None:
    response = alerts_api.patch(
        f"{CHANNELS}{channel.pk}/", {"last_error": "x", "has_secret": False}, format="json"
    )
    assert response.status_code == 200
    channel.refresh_from_db()
    assert (channel.last_error, channel.secret) == ("", SECRET)


def test_an_edit_on_a_stale_version_of_a_channel_is_a_412(alerts_api, channel) -> None:
    path = f"{CHANNELS}{channel.pk}/"
    tag = alerts_api.get(path)["ETag"]
    alerts_api.patch(path, {"name": "renamed"}, format="json")

    stale = alerts_api.patch(path, {"enabled": False}, format="json", HTTP_IF_MATCH=tag)
    gone = alerts_api.delete(path, HTTP_IF_MATCH=tag)

    assert (stale.status_code, gone.status_code) == (412, 412)
    assert Channel.objects.get().enabled is True
    current = alerts_api.get(path)["ETag"]
    assert alerts_api.patch(path, {"enabled": False}, format="json", HTTP_IF_MATCH=current).status_code == 200


def test_deleting_a_channel_takes_it_off_its_rules(alerts_api, rule, channel) -> None:
    assert alerts_api.delete(f"{CHANNELS}{channel.pk}/").status_code == 204
    assert not Channel.objects.exists()
    assert list(rule.channels.all()) == []
    assert alerts_api.get(f"{CHANNELS}{channel.pk}/").status_code == 404


def test_put_is_not_offered(alerts_api, channel) -> None:
    body = {"name": "x", "kind": "webhook", "target": HOOK}
    assert alerts_api.put(f"{CHANNELS}{channel.pk}/", body, format="json").status_code == 405


# --- a channel's test ----------------------------------------------------------------


def test_a_test_posts_a_signed_webhook_to_the_receiver(alerts_api, receiver) -> None:
    created = alerts_api.post(
        CHANNELS,
        {"name": "local", "kind": "webhook", "target": receiver.url, "secret": SECRET},
        format="json",
    )
    assert created.status_code == 201, created.data

    response = alerts_api.post(f"{CHANNELS}{created.data['id']}/test/")

    assert response.status_code == 200, response.data
    assert (response.data["delivered"], response.data["error"]) == (True, "")
    (request,) = receiver.requests
    assert request["path"] == "/hook"
    notification = Notification.objects.get()
    assert request["headers"]["X-Scheduler-Delivery"] == str(notification.delivery_id)
    assert request["headers"]["X-Scheduler-Signature"] == notifications.signature(SECRET, request["body"])
    body = json.loads(request["body"])
    assert (body["event"], body["subject"], body["alert"]) == ("test", "channel local", None)
    shown = response.data["notification"]
    assert set(shown) == NOTIFICATION_FIELDS
    assert (shown["event"], shown["state"], shown["attempts"], shown["channel"]) == (
        "test", "sent", 1, created.data["id"]
    )  # fmt: skip
    assert shown["delivery_id"] == str(notification.delivery_id)
    assert response.data["channel"]["enabled"] is True
    assert SECRET not in response.content.decode()


def test_a_test_answered_404_disables_the_channel_and_says_why(alerts_api, receiver) -> None:
    receiver.status = 404
    channel = Channel.objects.create(name="local", kind=ChannelKind.WEBHOOK, target=receiver.url)

    response = alerts_api.post(f"{CHANNELS}{channel.pk}/test/")

    assert response.status_code == 200
    assert response.data["delivered"] is False
    assert response.data["error"] == "HTTP 404 from 127.0.0.1"
    assert response.data["notification"]["state"] == "failed"
    assert (response.data["channel"]["enabled"], response.data["channel"]["last_error"]) == (
        False, "HTTP 404 from 127.0.0.1"
    )  # fmt: skip
    assert len(receiver.requests) == 1
    assert "X-Scheduler-Signature" not in receiver.requests[0]["headers"]  # no secret, no signature
    channel.refresh_from_db()
    assert (channel.enabled, channel.last_error) == (False, "HTTP 404 from 127.0.0.1")

    shown = alerts_api.get(f"{CHANNELS}{channel.pk}/").data
    assert (shown["enabled"], shown["last_error"]) == (False, "HTTP 404 from 127.0.0.1")
    enabled = alerts_api.patch(f"{CHANNELS}{channel.pk}/", {"enabled": True}, format="json").data
    assert (enabled["enabled"], enabled["last_error"], enabled["last_error_at"]) == (True, "", None)


def test_a_test_of_an_email_channel_sends_one_message(alerts_api) -> None:
    channel = Channel.objects.create(name="mail", kind=ChannelKind.EMAIL, target="ops@example.com")

    response = alerts_api.post(f"{CHANNELS}{channel.pk}/test/")

    assert response.data["delivered"] is True
    (message,) = mail.outbox
    assert message.to == ["ops@example.com"]
    assert "TEST" in message.subject


def test_a_test_needs_change_channel(alerts_reader, anonymous, client_with, receiver) -> None:
    channel = Channel.objects.create(name="local", kind=ChannelKind.WEBHOOK, target=receiver.url)
    path = f"{CHANNELS}{channel.pk}/test/"

    assert anonymous.post(path).status_code == 401
    assert alerts_reader.post(path).status_code == 403
    assert client_with("view_channel", "add_channel", "delete_channel").post(path).status_code == 403
    assert receiver.requests == [] and not Notification.objects.exists()
    assert client_with("change_channel").post(path).status_code == 200
    assert client_with("change_channel").post(f"{CHANNELS}999999/test/").status_code == 404


# --- alert rules ---------------------------------------------------------------------


def test_a_rule_is_created_with_its_defaults_and_channels(alerts_api, task, channel) -> None:
    other = Channel.objects.create(name="mail", kind=ChannelKind.EMAIL, target="ops@example.com")

    response = alerts_api.post(
        RULES,
        {"name": "noop fails", "condition": "failure", "task": "noop", "channels": [channel.pk, other.pk]},
        format="json",
    )

    assert response.status_code == 201, response.data
    assert set(response.data) == RULE_FIELDS
    data = response.data
    assert (data["task"], data["schedule"], data["workflow"]) == ("noop", None, None)
    assert (data["consecutive"], data["grace_seconds"], data["max_seconds"], data["reminder_seconds"]) == (
        1, 60, None, None
    )  # fmt: skip
    assert sorted(data["channels"]) == sorted([channel.pk, other.pk])
    assert data["enabled"] is True
    rule = AlertRule.objects.get()
    assert set(rule.channels.all()) == {channel, other}
    shown = alerts_api.get(f"{RULES}{rule.pk}/")
    assert (shown.status_code, sorted(shown.data["channels"])) == (200, sorted([channel.pk, other.pk]))
    assert "ETag" in shown


def test_a_rule_made_over_the_api_is_watched_at_once(alerts_api, task, make_run, channel, hook) -> None:
    alerts.rules_by_condition()  # this process read the rules before the new one
    created = alerts_api.post(
        RULES, {"name": "noop fails", "condition": "failure", "channels": [channel.pk]}, format="json"
    )
    run = make_run(task, S.PENDING)

    with hook():
        fail(run)

    alert = Alert.objects.get()
    assert (alert.rule_id, alert.run_id, alert.task_id) == (created.data["id"], run.pk, task.pk)
    assert alert.notifications.get().channel == channel


@pytest.fixture
def scopes(task: Any) -> dict[str, Any]:
    workflow = Workflow.objects.create(name="flow", steps=[STEP])
    return {
        "task_schedule": Schedule.objects.create(task=task, interval_seconds=60).pk,
        "flow_schedule": Schedule.objects.create(workflow=workflow, interval_seconds=60).pk,
    }


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"condition": "failure"}, "name"),
        ({"name": "x" * 201, "condition": "failure"}, "name"),
        ({"name": "r"}, "condition"),
        ({"name": "r", "condition": "sometimes"}, "condition"),
        ({"name": "r", "condition": {"a": 1}}, "condition"),
        ({"name": "r", "condition": "failure", "task": "noop", "workflow": "flow"}, "workflow"),
        ({"name": "r", "condition": "failure", "task": "noop", "schedule": "{task_schedule}"}, "schedule"),
        ({"name": "r", "condition": "worker_offline", "task": "noop"}, "task"),
        ({"name": "r", "condition": "worker_offline", "schedule": "{task_schedule}"}, "schedule"),
        ({"name": "r", "condition": "worker_offline", "workflow": "flow"}, "workflow"),
        ({"name": "r", "condition": "workflow_failure", "task": "noop"}, "task"),
        ({"name": "r", "condition": "workflow_failure", "schedule": "{task_schedule}"}, "schedule"),
        ({"name": "r", "condition": "overrun"}, "max_seconds"),
        ({"name": "r", "condition": "overrun", "max_seconds": None}, "max_seconds"),
        ({"name": "r", "condition": "overrun", "max_seconds": 0}, "max_seconds"),
        ({"name": "r", "condition": "overrun", "max_seconds": 366 * 86400 + 1}, "max_seconds"),
        ({"name": "r", "condition": "failure", "consecutive": 0}, "consecutive"),
        ({"name": "r", "condition": "failure", "consecutive": 1001}, "consecutive"),
        ({"name": "r", "condition": "failure", "consecutive": 10**30}, "consecutive"),
        ({"name": "r", "condition": "failure", "consecutive": "many"}, "consecutive"),
        ({"name": "r", "condition": "failure", "consecutive": 1.5}, "consecutive"),
        ({"name": "r", "condition": "failure", "consecutive": "9" * 5000}, "consecutive"),
        ({"name": "r", "condition": "late", "grace_seconds": -1}, "grace_seconds"),
        ({"name": "r", "condition": "late", "grace_seconds": 366 * 86400 + 1}, "grace_seconds"),
        ({"name": "r", "condition": "failure", "reminder_seconds": 59}, "reminder_seconds"),
        ({"name": "r", "condition": "failure", "reminder_seconds": 10**20}, "reminder_seconds"),
        ({"name": "r", "condition": "failure", "task": "missing"}, "task"),
        ({"name": "r", "condition": "failure", "task": ["noop"]}, "task"),
        ({"name": "r", "condition": "failure", "task": "x" * 10_000}, "task"),
        ({"name": "r", "condition": "failure", "workflow": "missing"}, "workflow"),
        ({"name": "r", "condition": "failure", "schedule": 999_999}, "schedule"),
        ({"name": "r", "condition": "failure", "schedule": "abc"}, "schedule"),
        ({"name": "r", "condition": "failure", "schedule": 10**30}, "schedule"),
        ({"name": "r", "condition": "failure", "schedule": True}, "schedule"),
        ({"name": "r", "condition": "failure", "channels": [999_999]}, "channels"),
        ({"name": "r", "condition": "failure", "channels": "{channel}"}, "channels"),
        ({"name": "r", "condition": "failure", "channels": {"a": 1}}, "channels"),
        ({"name": "r", "condition": "failure", "channels": ["x"]}, "channels"),
        ({"name": "r", "condition": "failure", "channels": [10**30]}, "channels"),
        ({"name": "r", "condition": "failure", "channels": [None]}, "channels"),
        ({"name": "r", "condition": "failure", "channels": None}, "channels"),
        ({"name": "r", "condition": "failure", "channels": list(range(1, 102))}, "channels"),
        ({"name": "r", "condition": "failure", "enabled": []}, "enabled"),
    ],
)
def test_an_invalid_rule_is_a_400_naming_the_field(alerts_api, scopes, channel, body, field) -> None:
    values = {**scopes, "channel": channel.pk}
    body = {k: v.format(**values) if isinstance(v, str) and "{" in v else v for k, v in body.items()}
    body = {
        k: int(v) if k == "schedule" and isinstance(v, str) and v.isdigit() else v for k, v in body.items()
    }

    response = alerts_api.post(RULES, body, format="json")

    assert response.status_code == 400, response.data
    assert field in response.data, response.data
    assert not AlertRule.objects.exists()


def test_an_unknown_channel_is_named(alerts_api, channel) -> None:
    response = alerts_api.post(
        RULES,
        {"name": "r", "condition": "failure", "channels": [channel.pk, 999_998, 999_999]},
        format="json",
    )
    assert response.status_code == 400
    assert response.data["channels"] == ["No channel with id 999998, 999999."]


def test_a_duplicate_rule_name_is_a_400(alerts_api, rule) -> None:
    response = alerts_api.post(RULES, {"name": "workers", "condition": "failure"}, format="json")
    assert response.status_code == 400
    assert "name" in response.data


@pytest.mark.parametrize(
    "scope",
    [{}, {"workflow": "flow"}, {"schedule": "flow_schedule"}],
)
def test_a_workflow_failure_rule_takes_a_workflow_its_schedule_or_nothing(alerts_api, scopes, scope) -> None:
    body = {"name": "flow fails", "condition": "workflow_failure", **scope}
    if "schedule" in scope:
        body["schedule"] = scopes[scope["schedule"]]

    response = alerts_api.post(RULES, body, format="json")

    assert response.status_code == 201, response.data


def test_an_overrun_rule_with_its_limit_is_created(alerts_api, task) -> None:
    response = alerts_api.post(
        RULES, {"name": "slow", "condition": "overrun", "task": "noop", "max_seconds": 600}, format="json"
    )
    assert (response.status_code, response.data["max_seconds"]) == (201, 600)


def test_a_patch_of_a_rule_writes_what_it_sent(alerts_api, task, scopes, channel) -> None:
    created = alerts_api.post(
        RULES, {"name": "r", "condition": "failure", "task": "noop", "consecutive": 3}, format="json"
    )
    path = f"{RULES}{created.data['id']}/"

    channels = alerts_api.patch(path, {"channels": [channel.pk]}, format="json")
    assert (channels.status_code, channels.data["channels"]) == (200, [channel.pk])
    assert channels.data["consecutive"] == 3

    switched = alerts_api.patch(path, {"schedule": scopes["task_schedule"]}, format="json")
    assert switched.status_code == 200, switched.data
    assert (switched.data["task"], switched.data["schedule"]) == (None, scopes["task_schedule"])
    assert switched.data["channels"] == [channel.pk]

    emptied = alerts_api.patch(
        path, {"channels": [], "reminder_seconds": 3600, "enabled": False}, format="json"
    )
    assert (emptied.data["channels"], emptied.data["reminder_seconds"], emptied.data["enabled"]) == (
        [],
        3600,
        False,
    )
    rule = AlertRule.objects.get()
    assert (rule.schedule_id, rule.task_id, rule.consecutive, list(rule.channels.all())) == (
        scopes["task_schedule"], None, 3, []
    )  # fmt: skip


def test_a_patch_that_would_leave_a_rule_invalid_changes_nothing(alerts_api, task, channel) -> None:
    created = alerts_api.post(
        RULES, {"name": "r", "condition": "failure", "task": "noop", "channels": [channel.pk]}, format="json"
    )
    path = f"{RULES}{created.data['id']}/"

    for body, field in (
        ({"condition": "overrun", "channels": []}, "max_seconds"),
        ({"condition": "worker_offline"}, "task"),
        ({"condition": "workflow_failure"}, "task"),
        ({"task": "noop", "workflow": "flow"}, "workflow"),
        ({"channels": [channel.pk, 999_999]}, "channels"),
    ):
        response = alerts_api.patch(path, body, format="json")
        assert response.status_code == 400, body
        assert field in response.data, (body, response.data)

    rule = AlertRule.objects.get()
    assert (rule.condition, rule.task_id, list(rule.channels.all())) == ("failure", task.pk, [channel])
    # Clearing the scope first makes it valid.
    moved = alerts_api.patch(path, {"condition": "worker_offline", "task": None}, format="json")
    assert (moved.status_code, moved.data["condition"], moved.data["task"]) == (200, "worker_offline", None)


def test_an_edit_on_a_stale_version_of_a_rule_is_a_412(alerts_api, rule) -> None:
    path = f"{RULES}{rule.pk}/"
    tag = alerts_api.get(path)["ETag"]
    alerts_api.patch(path, {"reminder_seconds": 600}, format="json")

    assert alerts_api.patch(path, {"enabled": False}, format="json", HTTP_IF_MATCH=tag).status_code == 412
    assert alerts_api.delete(path, HTTP_IF_MATCH=tag).status_code == 412
    assert AlertRule.objects.get().enabled is True


def test_rules_are_listed_and_deleted(alerts_api, rule, channel) -> None:
    AlertRule.objects.create(name="fails", condition=C.FAILURE)
    open_one(rule)

    listed = alerts_api.get(RULES)
    assert listed.status_code == 200
    assert [r["name"] for r in listed.data["results"]] == ["fails", "workers"]  # newest first
    assert alerts_api.delete(f"{RULES}{rule.pk}/").status_code == 204
    assert list(AlertRule.objects.values_list("name", flat=True)) == ["fails"]
    assert not Alert.objects.exists()  # a rule's alerts go with it
    assert Channel.objects.filter(pk=channel.pk).exists()


# --- alerts --------------------------------------------------------------------------


def test_an_alert_shows_its_rule_timeline_and_notifications(alerts_api, rule, channel) -> None:
    alert = open_one(rule)
    alerts.resolve_alert(alert, "it beat again", now=NOW + dt.timedelta(seconds=90))

    response = alerts_api.get(f"{ALERTS}{alert.pk}/")

    assert response.status_code == 200
    data = response.data
    assert set(data) == ALERT_FIELDS
    assert (data["rule"], data["rule_name"], data["condition"], data["subject"]) == (
        rule.pk, "workers", "worker_offline", "worker w1"
    )  # fmt: skip
    assert (data["state"], data["reason"], data["downtime_seconds"]) == ("resolved", "no heartbeat", 90.0)
    assert data["resolution"] == "it beat again"
    assert data["opened_at"] == "2026-03-02T12:00:00Z"
    assert data["resolved_at"] == "2026-03-02T12:01:30Z"
    assert (data["run"], data["task"], data["schedule"]) == (None, None, None)
    assert [(e["event"], e["reason"]) for e in data["timeline"]] == [
        ("opened", "no heartbeat"),
        ("resolved", "it beat again; it was open 1 min 30 s"),
    ]
    assert [(n["event"], n["channel"], n["channel_name"], n["state"]) for n in data["notifications"]] == [
        ("opened", channel.pk, "ops hook", "pending"),
        ("resolved", channel.pk, "ops hook", "pending"),
    ]
    assert set(data["notifications"][0]) == NOTIFICATION_FIELDS


def test_a_failed_run_opens_an_alert_the_list_shows(alerts_api, task, make_run, channel, hook) -> None:
    rule = AlertRule.objects.create(name="noop fails", condition=C.FAILURE, task=task)
    rule.channels.set([channel])
    run = make_run(task, S.PENDING)

    with hook():
        fail(run)

    listed = alerts_api.get(ALERTS)
    assert listed.status_code == 200
    assert {"results", "next", "previous"} <= set(listed.data)
    (shown,) = listed.data["results"]
    assert (shown["state"], shown["run"], shown["task"], shown["subject"]) == (
        "open",
        run.pk,
        "noop",
        "task noop",
    )
    assert shown["reason"] == f"run {run.pk} failed: ValueError: boom"
    assert (shown["resolved_at"], shown["downtime_seconds"]) == (None, None)
    assert [e["event"] for e in shown["timeline"]] == ["opened"]


def test_alerts_are_filtered_by_state_rule_and_task(alerts_api, rule, task, make_task) -> None:
    other_task = make_task(name="other")
    fails = AlertRule.objects.create(name="fails", condition=C.FAILURE)
    first = open_one(rule, "w1")
    second = open_one(rule, "w2")
    alerts.resolve_alert(first, "back", now=NOW)
    of_task = alerts.open_alert(fails, Subject(f"task:{task.pk}", "task noop", task.pk), "failed", now=NOW)
    alerts.open_alert(fails, Subject(f"task:{other_task.pk}", "task other", other_task.pk), "failed", now=NOW)

    def ids(**params: Any) -> list[int]:
        response = alerts_api.get(ALERTS, params)
        assert response.status_code == 200, response.data
        return [a["id"] for a in response.data["results"]]

    everything = ids()
    assert everything == sorted(everything, reverse=True) and len(everything) == 4  # newest first
    assert ids(state="resolved") == [first.pk]
    assert first.pk not in ids(state="open")
    assert len(ids(state=["open", "resolved"])) == 4
    assert ids(rule=rule.pk) == [second.pk, first.pk]
    assert ids(rule=rule.pk, state="open") == [second.pk]
    assert ids(task="noop") == [of_task.pk]
    assert ids(task="missing") == []
    assert ids(rule=10**30) == []


@pytest.mark.parametrize("params", [{"state": "closed"}, {"rule": "abc"}, {"state": ["open", "x"]}])
def test_an_invalid_alert_filter_is_a_400_naming_it(alerts_api, params) -> None:
    response = alerts_api.get(ALERTS, params)
    assert response.status_code == 400
    assert set(params) <= set(response.data)


def test_a_page_of_alerts_costs_the_same_queries_however_many(alerts_api, rule, channel) -> None:
    other = Channel.objects.create(name="mail", kind=ChannelKind.EMAIL, target="ops@example.com")
    rule.channels.add(other)

    def queries_for_a_page() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert alerts_api.get(ALERTS).status_code == 200
        return len(queries)

    open_one(rule, "w0")
    few = queries_for_a_page()
    for n in range(1, 12):
        alert = open_one(rule, f"w{n}")
        if n % 2:
            alerts.resolve_alert(alert, "back", now=NOW)
    many = queries_for_a_page()

    assert many == few
    newest = alerts_api.get(ALERTS).data["results"][0]  # opened and resolved, told to both channels
    assert [(n["event"], n["channel_name"]) for n in newest["notifications"]] == [
        ("opened", "ops hook"), ("opened", "mail"), ("resolved", "ops hook"), ("resolved", "mail")
    ]  # fmt: skip


def test_a_page_of_rules_costs_a_fixed_number_of_queries(
    alerts_api, channel, task, django_assert_max_num_queries
):
    for n in range(20):
        made = AlertRule.objects.create(name=f"r{n}", condition=C.FAILURE, task=task)
        made.channels.set([channel])
    with django_assert_max_num_queries(8):
        response = alerts_api.get(RULES)
    assert len(response.data["results"]) == 20


def test_alerts_are_read_only(client_with, rule) -> None:
    alert = open_one(rule)
    every = client_with(*(f"{verb}_alert" for verb in ("view", "add", "change", "delete")))

    assert every.post(ALERTS, {"rule": rule.pk}, format="json").status_code == 405
    assert every.patch(f"{ALERTS}{alert.pk}/", {"state": "resolved"}, format="json").status_code == 405
    assert every.delete(f"{ALERTS}{alert.pk}/").status_code == 405
    assert Alert.objects.get().state == "open"
    assert every.get(f"{ALERTS}999999/").status_code == 404


# --- permissions ---------------------------------------------------------------------

# (method, path, body, the permissions it needs)
PATHS = [
    ("get", CHANNELS, None, ["view_channel"]),
    ("get", CHANNELS + "{channel}/", None, ["view_channel"]),
    ("post", CHANNELS, {"name": "new", "kind": "webhook", "target": HOOK}, ["add_channel"]),
    ("patch", CHANNELS + "{channel}/", {"name": "renamed"}, ["change_channel"]),
    ("delete", CHANNELS + "{channel}/", None, ["delete_channel"]),
    ("post", CHANNELS + "{channel}/test/", None, ["change_channel"]),
    ("get", RULES, None, ["view_alertrule"]),
    ("get", RULES + "{rule}/", None, ["view_alertrule"]),
    ("post", RULES, {"name": "new", "condition": "worker_offline"}, ["add_alertrule"]),
    ("patch", RULES + "{rule}/", {"enabled": False}, ["change_alertrule"]),
    ("delete", RULES + "{rule}/", None, ["delete_alertrule"]),
    ("get", ALERTS, None, ["view_alert"]),
    ("get", ALERTS + "{alert}/", None, ["view_alert"]),
]
IDS = [f"{method} {path}" for method, path, _body, _needs in PATHS]


@pytest.fixture
def world(rule: AlertRule, channel: Channel, receiver: Receiver, settings: Any) -> dict[str, int]:
    """One of each; the channel's test goes to the local receiver."""
    settings.BUILTIN_HTTP_ALLOWED_HOSTS = [*settings.BUILTIN_HTTP_ALLOWED_HOSTS, "hooks.example"]
    Channel.objects.filter(pk=channel.pk).update(target=receiver.url)
    return {"channel": channel.pk, "rule": rule.pk, "alert": open_one(rule).pk}


def call(client: Any, method: str, path: str, body: Any, world: dict[str, int]) -> Any:
    url = path.format(**world)
    return (
        getattr(client, method)(url, body, format="json")
        if body is not None
        else getattr(client, method)(url)
    )


def written() -> tuple[Any, ...]:
    """What a refused request must leave as it was."""
    return (
        *Channel.objects.order_by("pk").values_list("name", "enabled", "last_error"),
        *AlertRule.objects.order_by("pk").values_list("name", "enabled"),
        Alert.objects.count(),
        Notification.objects.count(),
    )


@pytest.mark.parametrize(("method", "path", "body", "needs"), PATHS, ids=IDS)
def test_no_user_is_a_401(anonymous, world, method, path, body, needs) -> None:
    before = written()
    assert call(anonymous, method, path, body, world).status_code == 401
    assert written() == before


@pytest.mark.parametrize(("method", "path", "body", "needs"), PATHS, ids=IDS)
def test_a_user_without_permissions_is_a_403(stranger, world, method, path, body, needs) -> None:
    before = written()
    assert call(stranger, method, path, body, world).status_code == 403
    assert written() == before


@pytest.mark.parametrize(("method", "path", "body", "needs"), PATHS, ids=IDS)
def test_a_reader_reads_and_changes_nothing(alerts_reader, world, method, path, body, needs) -> None:
    before = written()
    response = call(alerts_reader, method, path, body, world)
    assert response.status_code == (200 if method == "get" else 403)
    assert written() == before


@pytest.mark.parametrize(("method", "path", "body", "needs"), PATHS, ids=IDS)
def test_each_permission_a_path_needs_is_needed(client_with, world, method, path, body, needs) -> None:
    everything_else = {p.codename for p in Permission.objects.filter(content_type__app_label="tasks_app")}
    for missing in needs:
        before = written()
        response = call(client_with(*(everything_else - {missing})), method, path, body, world)
        assert response.status_code == 403, (missing, response.content)
        assert written() == before, missing


@pytest.mark.parametrize(("method", "path", "body", "needs"), PATHS, ids=IDS)
def test_the_permissions_a_path_needs_are_enough(client_with, world, method, path, body, needs) -> None:
    response = call(client_with(*needs), method, path, body, world)
    assert response.status_code in (200, 201, 204), response.content
    if path.endswith("/test/"):
        assert response.data["delivered"] is True


def test_the_owner_of_alerts_does_everything(alerts_api, world, receiver) -> None:
    for method, path, body, _needs in sorted(PATHS, key=lambda p: p[0] == "delete"):
        response = call(alerts_api, method, path, body, world)
        assert response.status_code in (200, 201, 204), (method, path, response.content)
    assert len(receiver.requests) == 1
