"""Delivering the outbox to a real local HTTP receiver and a real local SMTP server: claims,
signatures, retries with backoff, permanent errors, order per alert, the sender's lease."""

from __future__ import annotations

import datetime as dt
import json
import socket
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from typing import Any

import pytest
import time_machine
from django.utils import timezone

from tasks_app import alerts, notifications
from tasks_app.alerts import Subject
from tasks_app.choices import AlertCondition, ChannelKind
from tasks_app.models import AlertRule, Channel, Notification
from tests.receivers import Receiver

NOW = dt.datetime(2026, 3, 2, 12, 0, tzinfo=dt.UTC)
SECRET = "s3cret"


def at(seconds: float) -> dt.datetime:
    return NOW + dt.timedelta(seconds=seconds)


@pytest.fixture
def hook_channel(receiver: Receiver) -> Channel:
    return Channel.objects.create(name="hook", kind=ChannelKind.WEBHOOK, target=receiver.url, secret=SECRET)


@pytest.fixture
def rule(hook_channel: Channel) -> AlertRule:
    rule = AlertRule.objects.create(name="workers", condition=AlertCondition.WORKER_OFFLINE)
    rule.channels.set([hook_channel])
    return rule


def open_one(rule: AlertRule, name: str = "w1", now: dt.datetime = NOW) -> Any:
    return alerts.open_alert(rule, Subject(f"worker:{name}", f"worker {name}"), "no heartbeat", now=now)


def deliver(seconds: float = 0) -> int:
    with time_machine.travel(at(seconds), tick=False):
        return notifications.deliver_due()


def test_a_webhook_is_signed_and_says_which_delivery_it_is(rule, receiver) -> None:
    alert = open_one(rule)

    assert deliver() == 1

    (request,) = receiver.requests
    notification = Notification.objects.get()
    assert request["headers"]["X-Scheduler-Delivery"] == str(notification.delivery_id)
    assert request["headers"]["X-Scheduler-Signature"] == notifications.signature(SECRET, request["body"])
    assert request["headers"]["Content-Type"] == "application/json"
    body = json.loads(request["body"])
    assert {k: body[k] for k in ("event", "alert", "rule", "condition", "subject", "reason", "run")} == {
        "event": "opened", "alert": alert.pk, "rule": "workers", "condition": "worker_offline",
        "subject": "worker w1", "reason": "no heartbeat", "run": None,
    }  # fmt: skip
    assert (body["opened_at"], body["resolved_at"]) == (NOW.isoformat(), None)
    assert (notification.state, notification.attempts, notification.sent_at) == ("sent", 1, at(0))
    assert deliver(1) == 0  # sent once


def test_without_a_secret_a_webhook_is_not_signed(rule, receiver, hook_channel) -> None:
    Channel.objects.filter(pk=hook_channel.pk).update(secret="")
    open_one(rule)
    deliver()
    assert "X-Scheduler-Signature" not in receiver.requests[0]["headers"]


@pytest.mark.parametrize("status", [500, 503, 429])
def test_a_transient_error_is_retried_after_a_backoff_under_the_same_delivery_id(
    rule, receiver, hook_channel, status, settings
) -> None:
    settings.ALERT_RETRY_BACKOFF, settings.ALERT_RETRY_BACKOFF_MAX = 5, 60
    receiver.statuses = [status, status]
    open_one(rule)

    assert deliver(0) == 1
    notification = Notification.objects.get()
    assert (notification.state, notification.attempts, notification.next_attempt_at) == ("pending", 1, at(5))
    assert notification.last_error == f"HTTP {status} from 127.0.0.1"
    hook_channel.refresh_from_db()
    assert (hook_channel.enabled, hook_channel.last_error) == (True, f"HTTP {status} from 127.0.0.1")

    assert deliver(4) == 0  # its backoff
    assert deliver(5) == 1  # fails again: 10 s now
    assert Notification.objects.get().next_attempt_at == at(15)
    assert deliver(15) == 1

    notification.refresh_from_db()
    assert (notification.state, notification.attempts) == ("sent", 3)
    assert len(set(receiver.deliveries())) == 1 and len(receiver.requests) == 3


def test_a_permanent_error_disables_the_channel_and_what_it_had_pending_waits(
    rule, receiver, hook_channel
) -> None:
    receiver.statuses = [404]
    open_one(rule, "w1")
    open_one(rule, "w2")

    deliver()

    hook_channel.refresh_from_db()
    assert (hook_channel.enabled, hook_channel.last_error) == (False, "HTTP 404 from 127.0.0.1")
    assert list(Notification.objects.values_list("state", flat=True)) == ["failed", "pending"]
    assert len(receiver.requests) == 1
    open_one(rule, "w3")  # a disabled channel is told nothing new
    assert Notification.objects.count() == 2
    assert deliver(60) == 0

    Channel.objects.filter(pk=hook_channel.pk).update(enabled=True)  # mended by an operator
    assert deliver(120) == 1
    assert list(Notification.objects.values_list("state", flat=True)) == ["failed", "sent"]


def test_a_redirect_is_not_followed_and_is_permanent(rule, receiver, hook_channel) -> None:
    receiver.statuses = [302]
    open_one(rule)
    deliver()
    hook_channel.refresh_from_db()
    assert hook_channel.last_error.startswith("HTTP 302 from 127.0.0.1 (a redirect: not followed")


def test_a_receiver_that_is_down_gets_everything_in_order_when_it_returns(
    rule, hook_channel, settings
) -> None:
    settings.ALERT_RETRY_BACKOFF, settings.ALERT_RETRY_BACKOFF_MAX = 5, 60
    down = Receiver()  # then stopped: its port refuses connections
    down.close()
    settings.BUILTIN_HTTP_ALLOWED_HOSTS = [f"127.0.0.1:{down.port}"]
    Channel.objects.filter(pk=hook_channel.pk).update(target=down.url)
    first = open_one(rule, "w1")
    open_one(rule, "w2")
    alerts.resolve_alert(first, "back", now=at(1))

    for minute in range(10):  # down ten minutes: one attempt per channel and pass
        deliver(minute * 60)
    pending = Notification.objects.filter(state="pending")
    assert [(n.kind, n.last_error.startswith("ConnectionRefusedError")) for n in pending] == [
        ("opened", True), ("opened", True), ("resolved", False),  # it waits for its opening
    ]  # fmt: skip

    receiver = Receiver()
    receiver.close()
    up = ThreadingHTTPServer(("127.0.0.1", down.port), receiver.handler)
    threading.Thread(target=up.serve_forever, daemon=True).start()
    try:
        for seconds in (660, 661, 662):
            deliver(seconds)
    finally:
        up.shutdown()
        up.server_close()

    assert Notification.objects.filter(state="sent").count() == 3
    events = [(json.loads(r["body"])["subject"], json.loads(r["body"])["event"]) for r in receiver.requests]
    assert events.index(("worker w1", "opened")) < events.index(("worker w1", "resolved"))
    assert sorted(events) == [("worker w1", "opened"), ("worker w1", "resolved"), ("worker w2", "opened")]


def test_a_resolution_waits_for_its_opening_to_be_delivered(rule, receiver, settings) -> None:
    settings.ALERT_RETRY_BACKOFF = 30
    receiver.statuses = [500]
    alert = open_one(rule)
    alerts.resolve_alert(alert, "back", now=at(1))

    assert deliver(2) == 1  # the opening fails; the resolution is not tried before it
    assert receiver.events() == ["opened"]
    assert deliver(10) == 0
    deliver(32)
    deliver(33)
    assert receiver.events() == ["opened", "opened", "resolved"]


def test_a_claimed_notification_is_left_to_its_sender_until_the_lease_ends(rule, receiver, settings) -> None:
    settings.ALERT_DELIVERY_LEASE = 60
    open_one(rule)
    notification = Notification.objects.get()
    with time_machine.travel(NOW, tick=False):
        assert notifications._claim(notification, timezone.now())  # a sender that then died mid-send

    assert deliver(30) == 0
    assert deliver(61) == 1

    notification.refresh_from_db()
    assert (notification.state, notification.attempts) == ("sent", 2)
    assert receiver.deliveries() == [str(notification.delivery_id)]


def test_two_senders_never_claim_the_same_attempt(rule) -> None:
    open_one(rule)
    first, second = Notification.objects.get(), Notification.objects.get()
    with time_machine.travel(NOW, tick=False):
        assert notifications._claim(first, timezone.now()) is True
        assert notifications._claim(second, timezone.now()) is False


def test_a_target_the_allowlist_refuses_is_permanent(rule, hook_channel, settings) -> None:
    settings.BUILTIN_HTTP_ALLOWED_HOSTS = []
    open_one(rule)
    deliver()
    hook_channel.refresh_from_db()
    assert hook_channel.enabled is False
    assert hook_channel.last_error == "address 127.0.0.1 is not in the allowed hosts"


def test_an_undelivered_notification_is_failed_once_too_old(rule, hook_channel, settings) -> None:
    settings.ALERT_GIVE_UP_AFTER = 3600
    open_one(rule)
    Channel.objects.filter(pk=hook_channel.pk).update(enabled=False)  # an operator paused it
    deliver(3601)  # and an hour later re-enabled it: nothing stale is sent
    Channel.objects.filter(pk=hook_channel.pk).update(enabled=True)
    assert deliver(3602) == 0

    notification = Notification.objects.get()
    assert (notification.state, notification.last_error) == (
        "failed",
        "not delivered within 3600 s of its event",
    )


def test_slack_gets_the_facts_as_text(rule, receiver) -> None:
    slack = Channel.objects.create(name="slack", kind=ChannelKind.SLACK, target=receiver.url)
    rule.channels.set([slack])
    open_one(rule)

    deliver()

    (request,) = receiver.requests
    text = json.loads(request["body"])["text"]
    assert text.splitlines()[:2] == ["ALERT: worker w1", "no heartbeat"]
    assert "X-Scheduler-Signature" not in request["headers"]


def test_the_test_of_a_channel_is_sent_at_once_and_recorded(receiver, hook_channel) -> None:
    notification = notifications.send_test(hook_channel)

    assert (notification.state, notification.kind, notification.attempts) == ("sent", "test", 1)
    assert json.loads(receiver.requests[0]["body"])["event"] == "test"


@pytest.mark.parametrize(
    ("kind", "target", "problem"),
    [
        ("webhook", "ftp://127.0.0.1/x", "Give an http or https URL."),
        ("webhook", "http://user:pw@127.0.0.1/x", "The URL must not carry a user name or password."),
        ("webhook", "http://10.0.0.1:8080/x", "address 10.0.0.1 is not in the allowed hosts"),
        ("slack", "https://hooks.slack.com/services/x", "host 'hooks.slack.com' is not in the allowed hosts"),
        ("webhook", "http://127.0.0.1:99999/x", "The URL is not valid."),
        ("webhook", "http://[::1", "The URL is not valid."),
        ("email", "ops@example.com, nope", "'nope' is not an e-mail address."),
        ("email", " , ", "Give one or more e-mail addresses, comma-separated."),
    ],
)
def test_a_target_is_checked_before_it_is_stored(kind, target, problem, settings) -> None:
    settings.BUILTIN_HTTP_ALLOWED_HOSTS = ["127.0.0.1"]
    assert notifications.target_problem(kind, target).startswith(problem)


# --- e-mail, through a local SMTP server -----------------------------------------------


@pytest.fixture
def smtp(settings: Any) -> Iterator[list[Any]]:
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import Envelope

    received: list[Envelope] = []

    class Handler:
        async def handle_RCPT(
            self, server: Any, session: Any, envelope: Any, address: str, options: Any
        ) -> str:
            if address.endswith("@refused.example"):
                return "550 no such user"
            envelope.rcpt_tos.append(address)
            return "250 OK"

        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            received.append(envelope)
            return "250 OK"

    with socket.socket() as probe:  # a free port (the controller checks its own by connecting)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", port
    yield received
    controller.stop()


def test_an_email_channel_sends_one_message_per_change(rule, smtp) -> None:
    mail = Channel.objects.create(
        name="mail", kind=ChannelKind.EMAIL, target="ops@example.com, dev@example.com"
    )
    rule.channels.set([mail])
    alerts.resolve_alert(open_one(rule), "it heartbeats again", now=at(90))

    deliver(91)
    deliver(92)

    assert len(smtp) == 2
    assert sorted(smtp[0].rcpt_tos) == ["dev@example.com", "ops@example.com"]
    first, second = (envelope.content.decode() for envelope in smtp)
    assert "Subject: [scheduler] ALERT: worker w1" in first and "no heartbeat" in first
    assert "Subject: [scheduler] RESOLVED: worker w1" in second and "open 1 min 30 s" in second
    delivery = str(Notification.objects.order_by("pk").first().delivery_id)
    assert f"X-Scheduler-Delivery: {delivery}" in first


def test_an_address_the_mail_server_refuses_disables_the_channel(rule, smtp) -> None:
    mail = Channel.objects.create(name="mail", kind=ChannelKind.EMAIL, target="nobody@refused.example")
    rule.channels.set([mail])
    open_one(rule)

    deliver()

    mail.refresh_from_db()
    assert (mail.enabled, mail.last_error) == (False, "the mail server refused nobody@refused.example")


def test_an_unreachable_mail_server_is_retried(rule, settings) -> None:
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    closed = Receiver()  # stopped at once: its port refuses connections
    closed.close()
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", closed.port
    mail = Channel.objects.create(name="mail", kind=ChannelKind.EMAIL, target="ops@example.com")
    rule.channels.set([mail])
    open_one(rule)

    deliver()

    notification = Notification.objects.get()
    assert notification.state == "pending" and notification.last_error
