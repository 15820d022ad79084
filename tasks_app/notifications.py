"""Delivering the outbox: each Notification row (committed with its alert's change by
tasks_app.alerts) is sent to its channel at least once, in order per alert and channel.

- A sender claims a notification by compare-and-set (attempts + 1, claimed for
  ALERT_DELIVERY_LEASE); it sends with no transaction or lock held, then records the outcome.
  A sender killed mid-send leaves its claim to expire: the next one sends the same body under
  the same delivery id, so a receiver de-duplicates by X-Scheduler-Delivery.
- 2xx is delivered. 429, 5xx, timeouts and refused connections are transient: tried again
  after a backoff (ALERT_RETRY_BACKOFF doubling to ALERT_RETRY_BACKOFF_MAX), until
  ALERT_GIVE_UP_AFTER after the event. Any other answer (another 4xx, a redirect, a target the
  host allowlist refuses, an address the mail server refuses) is permanent: the channel is
  disabled with its last error, and what it still had pending is failed, not left waiting.
- A notification waits while an earlier one of its alert and channel is pending: a receiver
  never hears "resolved" before "opened".
- Beat runs the sender in a thread of its own (`start_sender`), so a slow receiver never
  delays a schedule's fire; `send_test` sends one at once for the API's and admin's test.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import http.client
import json
import logging
import os
import smtplib
import socket
import threading
import urllib.parse
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.mail import EmailMessage
from django.db import InterfaceError, OperationalError, close_old_connections, transaction
from django.db.models import Exists, F, OuterRef, Q
from django.utils import timezone

from tasks_app import outbound
from tasks_app.choices import AlertEventKind, ChannelKind, NotificationState
from tasks_app.models import Channel, Notification
from tasks_app.models.alerts import email_addresses

logger = logging.getLogger(__name__)
N = NotificationState

BATCH = 100
DELIVERY_HEADER = "X-Scheduler-Delivery"
SIGNATURE_HEADER = "X-Scheduler-Signature"


@dataclass(frozen=True)
class Outcome:
    delivered: bool
    permanent: bool = False
    error: str = ""


DELIVERED = Outcome(True)


def body_of(payload: dict[str, Any]) -> bytes:
    """The bytes sent (and signed): the same for every attempt of one notification."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def target_problem(kind: str, target: str) -> str:
    """What is wrong with a channel's target, or "": a URL the allowlist lets webhooks and Slack
    reach (host and port; the addresses are checked at each send), or e-mail addresses."""
    if kind == ChannelKind.EMAIL:
        try:
            email_addresses(target)
        except Exception as exc:
            return " ".join(getattr(exc, "messages", [str(exc)]))
        return ""
    try:
        parsed = urllib.parse.urlsplit(target)
        if parsed.scheme not in {"http", "https"}:
            return "Give an http or https URL."
        if parsed.username is not None or parsed.password is not None:
            return "The URL must not carry a user name or password."
        host = (parsed.hostname or "").lower()
        if not host:
            return "The URL has no host."
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        outbound.Allowlist.parse(settings.BUILTIN_HTTP_ALLOWED_HOSTS).check_host(host, port)
    except ValueError:
        return "The URL is not valid."
    except PermissionError as exc:
        return f"{exc} (BUILTIN_HTTP_ALLOWED_HOSTS names where alerts and builtin.http may go)."
    return ""


# --- one send ------------------------------------------------------------------------


def _text(payload: dict[str, Any]) -> str:
    """The facts in words, for Slack and e-mail."""
    event = payload.get("event", "")
    head = {
        "opened": "ALERT",
        "resolved": "RESOLVED",
        "reminder": "STILL OPEN",
        "test": "TEST",
    }.get(event, event.upper())
    lines = [f"{head}: {payload.get('subject') or payload.get('rule', '')}", payload.get("reason") or ""]
    if payload.get("rule") and event != AlertEventKind.TEST:
        lines.append(
            f"rule {payload['rule']} ({payload.get('condition')}), opened {payload.get('opened_at')}"
        )
    if payload.get("run"):
        lines.append(f"run {payload['run']}")
    if payload.get("url"):
        lines.append(str(payload["url"]))
    return "\n".join(line for line in lines if line)


def _post(channel: Channel, body: bytes, headers: dict[str, str]) -> Outcome:
    host = urllib.parse.urlsplit(channel.target).hostname or "?"
    try:
        status, _headers, _body = outbound.request(
            "POST",
            channel.target,
            allowed=settings.BUILTIN_HTTP_ALLOWED_HOSTS,
            headers={"Content-Type": "application/json", "User-Agent": "scheduler-alerts/1", **headers},
            body=body,
            timeout=settings.ALERT_DELIVERY_TIMEOUT,
            limit=4096,
        )
    except (PermissionError, ValueError) as exc:
        return Outcome(False, permanent=True, error=str(exc))
    except (OSError, http.client.HTTPException) as exc:  # refused, reset, timed out, unresolvable
        return Outcome(False, error=f"{type(exc).__name__} from {host}: {exc}"[:1000])
    if 200 <= status < 300:
        return DELIVERED
    error = f"HTTP {status} from {host}"
    if status == 429 or status >= 500:
        return Outcome(False, error=error)
    if 300 <= status < 400:
        error += " (a redirect: not followed, where it leads was not checked)"
    return Outcome(False, permanent=True, error=error)


def _email(channel: Channel, notification: Notification) -> Outcome:
    payload = notification.payload
    try:
        addresses = email_addresses(channel.target)
    except Exception as exc:
        return Outcome(False, permanent=True, error=" ".join(getattr(exc, "messages", [str(exc)])))
    head = _text(payload).splitlines()[0]
    message = EmailMessage(
        subject=f"[scheduler] {head}"[:200],
        body=_text(payload),
        to=addresses,
        headers={
            "Message-ID": f"<{notification.delivery_id}@scheduler>",
            DELIVERY_HEADER: str(notification.delivery_id),
        },
    )
    try:
        message.send()
    except smtplib.SMTPRecipientsRefused as exc:
        refused = ", ".join(sorted(exc.recipients))[:500]
        return Outcome(False, permanent=True, error=f"the mail server refused {refused}")
    except smtplib.SMTPResponseException as exc:
        text = (
            exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else exc.smtp_error
        )
        error = f"SMTP {exc.smtp_code}: {text}"[:1000]
        return Outcome(False, permanent=500 <= exc.smtp_code < 600, error=error)
    except (smtplib.SMTPException, OSError) as exc:
        return Outcome(False, error=f"{type(exc).__name__} from the mail server: {exc}"[:1000])
    return DELIVERED


def send(notification: Notification) -> Outcome:
    """One attempt to deliver `notification` to its channel (no transaction held)."""
    channel = notification.channel
    if channel.kind == ChannelKind.EMAIL:
        return _email(channel, notification)
    if channel.kind == ChannelKind.SLACK:
        return _post(channel, body_of({"text": _text(notification.payload)}), {})
    body = body_of(notification.payload)
    headers = {DELIVERY_HEADER: str(notification.delivery_id), "X-Scheduler-Event": notification.kind}
    if channel.secret:
        headers[SIGNATURE_HEADER] = signature(channel.secret, body)
    return _post(channel, body, headers)


# --- the outbox ----------------------------------------------------------------------


def _sender_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"[:255]


def _claim(notification: Notification, now: dt.datetime) -> bool:
    lease = now + dt.timedelta(seconds=settings.ALERT_DELIVERY_LEASE)
    claimed = (
        Notification.objects.filter(pk=notification.pk, state=N.PENDING, attempts=notification.attempts)
        .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
        .update(claimed_until=lease, claimed_by=_sender_name(), attempts=F("attempts") + 1)
    )
    notification.attempts += 1
    return bool(claimed)


def _backoff(attempts: int) -> dt.timedelta:
    delay = settings.ALERT_RETRY_BACKOFF * 2 ** min(max(attempts - 1, 0), 30)
    return dt.timedelta(seconds=min(delay, settings.ALERT_RETRY_BACKOFF_MAX))


def record(notification: Notification, outcome: Outcome, now: dt.datetime) -> None:
    """Write what an attempt came to: sent; pending again after a backoff; or failed, its
    channel disabled (its other notifications wait for it to be enabled again)."""
    mine = Notification.objects.filter(pk=notification.pk, state=N.PENDING)
    if outcome.delivered:
        mine.update(state=N.SENT, sent_at=now, claimed_until=None, last_error="")
        return
    channel = notification.channel
    if outcome.permanent:
        with transaction.atomic():
            mine.update(state=N.FAILED, claimed_until=None, last_error=outcome.error)
            Channel.objects.filter(pk=channel.pk).update(
                enabled=False, last_error=outcome.error, last_error_at=now
            )
        logger.error("channel %s (%s) disabled: %s", channel.pk, channel.name, outcome.error)
        return
    too_old = now - notification.created_at > dt.timedelta(seconds=settings.ALERT_GIVE_UP_AFTER)
    if too_old or notification.kind == AlertEventKind.TEST:
        mine.update(state=N.FAILED, claimed_until=None, last_error=outcome.error)
    else:
        mine.update(
            next_attempt_at=now + _backoff(notification.attempts),
            claimed_until=None,
            last_error=outcome.error,
        )
    Channel.objects.filter(pk=channel.pk).update(last_error=outcome.error, last_error_at=now)
    logger.warning("notification %s to channel %s not delivered (attempt %d): %s",
                   notification.pk, channel.pk, notification.attempts, outcome.error)  # fmt: skip


def due(now: dt.datetime, limit: int = BATCH) -> list[Notification]:
    """Pending notifications whose time has come, unclaimed, each the earliest pending one of
    its alert and channel (notification_due index: state, next_attempt_at)."""
    earlier = Notification.objects.filter(
        state=N.PENDING,
        alert_id=OuterRef("alert_id"),
        channel_id=OuterRef("channel_id"),
        pk__lt=OuterRef("pk"),
    )
    return list(
        Notification.objects.select_related("channel")
        .filter(state=N.PENDING, next_attempt_at__lte=now, channel__enabled=True)
        .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
        .exclude(Exists(earlier))
        .order_by("next_attempt_at", "pk")[:limit]
    )


def deliver_due(limit: int = BATCH) -> int:
    """Claim, send and record the notifications due; returns how many were tried."""
    now = timezone.now()
    Notification.objects.filter(
        state=N.PENDING, created_at__lt=now - dt.timedelta(seconds=settings.ALERT_GIVE_UP_AFTER)
    ).update(
        state=N.FAILED, last_error=f"not delivered within {settings.ALERT_GIVE_UP_AFTER:g} s of its event"
    )
    tried = 0
    failing: set[int] = set()  # a channel that failed once this pass waits for the next
    for notification in due(now, limit):
        if notification.channel_id in failing or not _claim(notification, timezone.now()):
            continue
        outcome = send(notification)
        record(notification, outcome, timezone.now())
        tried += 1
        if not outcome.delivered:
            failing.add(notification.channel_id)
    return tried


def test_payload(channel: Channel) -> dict[str, Any]:
    return {
        "event": str(AlertEventKind.TEST),
        "alert": None,
        "rule": None,
        "condition": None,
        "subject": f"channel {channel.name}",
        "reason": "a test notification, asked for by a user",
        "opened_at": None,
        "resolved_at": None,
        "downtime_seconds": None,
        "run": None,
        "url": "",
    }


def send_test(channel: Channel) -> Notification:
    """Send a test to `channel` now, recorded as a notification like any other (a permanent
    error disables the channel here too); returns it, sent or failed."""
    now = timezone.now()
    notification = Notification.objects.create(
        channel=channel,
        kind=AlertEventKind.TEST,
        payload=test_payload(channel),
        attempts=1,
        claimed_until=now + dt.timedelta(seconds=settings.ALERT_DELIVERY_LEASE),
        claimed_by=_sender_name(),
        next_attempt_at=now,
        created_at=now,
    )
    record(notification, send(notification), timezone.now())
    notification.refresh_from_db()
    return notification


# --- beat's sender -------------------------------------------------------------------

_sender: threading.Thread | None = None
_stop = threading.Event()


def run_sender(stop: threading.Event) -> None:
    """Deliver what is due until `stop` is set: at once again while a batch was full."""
    while not stop.is_set():
        busy = False
        try:
            close_old_connections()
            busy = deliver_due() >= BATCH
        except (OperationalError, InterfaceError) as exc:
            logger.error("could not deliver notifications: database unreachable: %s", exc)
        except Exception:
            logger.exception("could not deliver notifications")
        if not busy:
            stop.wait(settings.ALERT_DELIVERY_INTERVAL)


def start_sender() -> None:
    """Start the sending thread of this process (once)."""
    global _sender
    if _sender is None or not _sender.is_alive():
        _sender = threading.Thread(target=run_sender, args=(_stop,), name="tasks_app-alerts", daemon=True)
        _sender.start()
