"""Alerts evaluated by real worker and beat processes and delivered by beat's sender to a local
HTTP receiver and a local SMTP server: one opened and one resolved per stretch, signed, each
delivery id delivered however the sender or the receiver dies."""

from __future__ import annotations

import socket
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from tasks_app import alerts, notifications, submission
from tasks_app.alerts import Subject
from tasks_app.choices import AlertCondition, ChannelKind, NotificationState
from tasks_app.lifecycle import RunState
from tasks_app.models import Alert, AlertRule, Channel, Notification, Run, Schedule, Task, Worker
from tasks_app.submission import RunRequest
from tests.conftest import wait_until
from tests.integration.conftest import (
    ALERT_SETTINGS,
    HOLD,
    Process,
    Received,
    SmtpServer,
    WebhookReceiver,
    process_env,
    restart,
)

S, C, N = RunState, AlertCondition, NotificationState
pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
SECRET = "integration-secret"
LEASE = float(ALERT_SETTINGS["ALERT_DELIVERY_LEASE"])
# What API.md (Alerts) says a webhook's JSON body holds.
BODY_FIELDS = {"event", "alert", "rule", "condition", "subject", "reason", "opened_at", "resolved_at", "run",
               "url"}  # fmt: skip


def webhook(receiver: WebhookReceiver, name: str, *, secret: str = "") -> Channel:
    return Channel.objects.create(
        name=name, kind=ChannelKind.WEBHOOK, target=receiver.url(f"/hooks/{name}"), secret=secret
    )


def path_of(channel: Channel) -> str:
    return urllib.parse.urlsplit(channel.target).path


def make_rule(name: str, condition: str, *channels: Channel, **fields: Any) -> AlertRule:
    with transaction.atomic():  # with its channels, or a process may open an alert that tells none
        rule = AlertRule.objects.create(name=name, condition=condition, **fields)
        rule.channels.set(channels)
    return rule


def told(
    receiver: WebhookReceiver, channel: Channel, event: str | None = None, **match: Any
) -> list[Received]:
    """The requests `channel` received (of `event`, with body fields equal to `match`)."""
    return [
        request
        for request in receiver.requests(path_of(channel))
        if (event is None or request.json()["event"] == event)
        and all(request.json().get(key) == value for key, value in match.items())
    ]


def open_alert(rule: AlertRule, task: Task, *, key: str = "") -> Alert:
    """Open an alert of `rule` from this process, as a worker or beat would; beat delivers it."""
    subject = Subject(key or f"task:{task.pk}", f"{key or 'task'} {task.name}", task.pk)
    alert = alerts.open_alert(rule, subject, f"opened by the test ({subject.key})", now=timezone.now())
    assert alert is not None
    return alert


def submit(task: Task, **kwargs: Any) -> Run:
    return submission.submit(RunRequest(task=task, kwargs=kwargs), by="tester")[0]


def wait_for_state(run: Run, *states: str, timeout: float = 30) -> Run:
    def reached() -> Run | None:
        run.refresh_from_db()
        return run if run.state in states else None

    return wait_until(reached, timeout=timeout, what=f"run {run.pk} to be {'/'.join(states)}")


def all_sent(notifications_of: Any, count: int) -> bool:
    states = list(notifications_of.values_list("state", flat=True))
    return len(states) == count and set(states) == {N.SENT}


def hostname(name: str) -> str:
    return f"{name}@{socket.gethostname()}"


@pytest.fixture
def start_worker(platform: dict[str, Process], tmp_path: Any) -> Iterator[Callable[..., Process]]:
    """Starts a worker of the test's own (`name`@host, on `queue` only) and waits until it has
    recorded itself; stops those still up at the end."""
    started: list[Process] = []

    def start(name: str, queue: str) -> Process:
        process = Process(
            name,
            ["worker", "-l", "info", "-c", "1", "-Q", queue, "-n", f"{name}@%h", "--without-gossip",
             "--without-mingle"],
            process_env(),
            tmp_path / f"{name}-{len(started)}.log",
        )  # fmt: skip
        started.append(process)

        def recorded() -> bool:
            if process.popen.poll() is not None:
                raise AssertionError(f"worker {name} exited at start:\n{process.output()[-3000:]}")
            return Worker.objects.filter(
                hostname=hostname(name), pid=process.popen.pid, stopped_at__isnull=True
            ).exists()

        wait_until(recorded, timeout=60, what=f"worker {name} to record itself")
        return process

    yield start
    for process in started:
        process.terminate()
    for process in started:
        process.stop()


def test_a_flaky_task_failing_three_times_then_passing_opens_and_resolves_one_alert(
    platform, receiver: WebhookReceiver, mailbox: SmtpServer, report
) -> None:
    task = Task.objects.create(name="alerts-flaky", handler="builtin.flaky", max_retries=0)
    hook = webhook(receiver, "flaky", secret=SECRET)
    address = "alerts-flaky@example.com"
    mail = Channel.objects.create(name="flaky-mail", kind=ChannelKind.EMAIL, target=address)
    rule = make_rule("alerts-flaky", C.FAILURE, hook, mail, task=task, consecutive=1)

    failed = [wait_for_state(submit(task, fail_times=1), S.FAILED, S.COMPLETED) for _ in range(3)]
    passed = wait_for_state(submit(task, fail_times=0), S.COMPLETED, S.FAILED)
    assert [run.state for run in [*failed, passed]] == [S.FAILED] * 3 + [S.COMPLETED]
    wait_until(lambda: told(receiver, hook, "resolved"), timeout=30, what="the resolved webhook")
    alert = Alert.objects.get(rule=rule)
    wait_until(lambda: all_sent(alert.notifications.all(), 4), timeout=30, what="all 4 notifications sent")
    wait_until(lambda: len(mailbox.mails(address)) >= 2, timeout=30, what="both e-mails")

    got = told(receiver, hook)
    mails = mailbox.mails(address)
    report(
        f"3 failed runs and 1 completed run of task {task.name}: {len(got)} webhook(s) "
        f"{[r.json()['event'] for r in got]}, {len(mails)} e-mail(s), "
        f"{Alert.objects.filter(rule=rule).count()} alert(s); opened by run {got[0].json()['run']} "
        f"(the first failed: {failed[0].pk})"
    )
    assert Alert.objects.filter(rule=rule).count() == 1
    assert [r.json()["event"] for r in got] == ["opened", "resolved"]
    assert len({r.delivery for r in got}) == 2
    hooked = alert.notifications.filter(channel=hook).order_by("pk")
    assert [r.delivery for r in got] == [str(n.delivery_id) for n in hooked]
    for request in got:
        assert request.method == "POST"
        assert request.headers["Content-Type"] == "application/json"
        assert request.headers["X-Scheduler-Signature"] == notifications.signature(SECRET, request.body)
        assert BODY_FIELDS <= set(request.json())
    opened, resolved = (r.json() for r in got)
    common = {"alert": alert.pk, "rule": rule.name, "condition": "failure", "subject": f"task {task.name}"}
    assert {k: opened[k] for k in common} == common == {k: resolved[k] for k in common}
    # The first failure opens it: a rule is seen by the worker's processes within a second.
    assert opened["run"] == resolved["run"] == failed[0].pk
    assert f"run {failed[0].pk} failed" in opened["reason"]
    assert f"run {passed.pk} completed" in resolved["reason"]
    assert opened["resolved_at"] is None and resolved["resolved_at"] is not None
    assert opened["opened_at"] == resolved["opened_at"]

    assert len(mails) == 2
    subjects = [m.message["Subject"] for m in mails]
    assert subjects[0].startswith("[scheduler] ALERT: task alerts-flaky"), subjects
    assert subjects[1].startswith("[scheduler] RESOLVED: task alerts-flaky"), subjects
    mailed = alert.notifications.filter(channel=mail).order_by("pk")
    assert [m.message["X-Scheduler-Delivery"] for m in mails] == [str(n.delivery_id) for n in mailed]


def test_a_schedule_whose_worker_is_stopped_opens_a_late_alert_until_a_run_starts(
    receiver: WebhookReceiver, start_worker, report
) -> None:
    queue = "alerts-late"
    start_worker("alerts-late", queue).stop()  # its queue had a worker, once
    wait_until(
        lambda: Worker.objects.filter(hostname=hostname("alerts-late"), stopped_at__isnull=False).exists(),
        timeout=30,
        what="the worker to record its stop",
    )
    task = Task.objects.create(name="alerts-late", handler="builtin.noop", queue=queue)
    hook = webhook(receiver, "late")
    schedule = Schedule.objects.create(task=task, interval_seconds=1)
    try:
        rule = make_rule("alerts-late", C.LATE, hook, schedule=schedule, grace_seconds=1)
        subject = f"schedule {schedule.pk} of task {task.name}"

        (opened,) = wait_until(
            lambda: told(receiver, hook, "opened"), timeout=30, what="the opened webhook of the late alert"
        )
        body = opened.json()
        assert (body["condition"], body["subject"], body["rule"]) == ("late", subject, rule.name)
        assert "has not started" in body["reason"], body["reason"]
        assert f"0 online worker(s) take queue {queue}" in body["reason"], body["reason"]
        assert Run.objects.get(pk=body["run"]).schedule_id == schedule.pk
        assert not Run.objects.filter(schedule=schedule, started_at__isnull=False).exists()

        start_worker("alerts-late", queue)
        resolved = wait_until(
            lambda: told(receiver, hook, "resolved", alert=body["alert"]),
            timeout=60,
            what="the resolved webhook of the late alert",
        )[0].json()
    finally:
        Schedule.objects.filter(pk=schedule.pk).update(enabled=False)

    events = [r.json()["event"] for r in told(receiver, hook)]
    report(
        f"schedule {schedule.pk} fired onto queue {queue} with its worker stopped: "
        f"{Run.objects.filter(schedule=schedule).count()} run(s); webhooks {Counter(events)}; "
        f"resolved: {resolved['reason']!r}"
    )
    assert resolved["subject"] == subject
    assert "started" in resolved["reason"], resolved["reason"]
    assert resolved["resolved_at"] is not None
    assert events[:2] == ["opened", "resolved"]


def test_a_sigkilled_worker_opens_worker_offline_and_its_lost_run_a_failure(
    receiver: WebhookReceiver, start_worker, report
) -> None:
    name, queue = "alerts-victim", "alerts-victim"
    victim = start_worker(name, queue)
    task = Task.objects.create(name="alerts-victim", handler="builtin.sleep", queue=queue, max_retries=0)
    hook = webhook(receiver, "victim")
    make_rule("alerts-offline", C.WORKER_OFFLINE, hook)
    make_rule("alerts-lost-run", C.FAILURE, hook, task=task)
    run = submit(task, seconds=30)

    wait_until(
        lambda: Run.objects.filter(pk=run.pk, state=S.RUNNING, worker=hostname(name)).exists(),
        timeout=30,
        what=f"run {run.pk} to be running on {name}",
    )
    victim.kill()  # SIGKILL of its group: the worker and its pool process, mid-run

    offline = wait_until(
        lambda: told(
            receiver, hook, "opened", condition="worker_offline", subject=f"worker {hostname(name)}"
        ),
        timeout=30,
        what="the worker_offline webhook",
    )
    failure = wait_until(
        lambda: told(receiver, hook, "opened", condition="failure", run=run.pk),
        timeout=30,
        what="the failure webhook of the lost run",
    )
    run.refresh_from_db()
    report(
        f"SIGKILL of worker {name} running run {run.pk}: run {run.state} ({run.state_reason}); webhooks "
        f"{Counter((r.json()['condition'], r.json()['event']) for r in told(receiver, hook))}"
    )
    assert len(offline) == 1 and len(failure) == 1
    assert run.state == S.FAILED
    assert failure[0].json()["subject"] == f"task {task.name}"
    assert "worker" in failure[0].json()["reason"].lower(), failure[0].json()["reason"]
    assert "no heartbeat" in offline[0].json()["reason"], offline[0].json()["reason"]


def test_a_notification_whose_sender_is_sigkilled_mid_send_is_sent_again_under_its_delivery_id(
    platform, receiver: WebhookReceiver, report
) -> None:
    task = Task.objects.create(name="alerts-sender-killed", handler="builtin.noop")
    hook = webhook(receiver, "sender-killed", secret=SECRET)
    rule = make_rule("alerts-sender-killed", C.FAILURE, hook, task=task)
    path = path_of(hook)
    receiver.answer_with(lambda request: HOLD if len(receiver.requests(path)) == 1 else 200)
    old_beat = platform["beat"].popen.pid

    alert = open_alert(rule, task)
    notification = Notification.objects.get(alert=alert)
    wait_until(lambda: receiver.requests(path), timeout=30, what="the first attempt to arrive")
    platform["beat"].kill()  # SIGKILL: the sender dies waiting for its answer
    notification.refresh_from_db()
    assert (notification.state, notification.attempts) == (N.PENDING, 1)  # killed mid-send, not after
    assert f":{old_beat}:" in notification.claimed_by
    new_beat = restart(platform, "beat").popen.pid

    wait_until(
        lambda: Notification.objects.filter(pk=notification.pk, state=N.SENT).exists(),
        timeout=LEASE + 30,
        what="the restarted beat to deliver it",
    )
    notification.refresh_from_db()
    got = receiver.requests(path)
    report(
        f"SIGKILL of beat (pid {old_beat}) while its request was held: {len(got)} request(s), "
        f"delivery ids {Counter(r.delivery for r in got)}, {notification.attempts} attempt(s), "
        f"the last by pid {new_beat}, {got[-1].at - got[0].at:.1f} s apart"
    )
    assert len(got) >= 2
    assert {r.delivery for r in got} == {str(notification.delivery_id)}
    assert {r.body for r in got} == {got[0].body}  # the same bytes, under the same signature
    assert got[0].headers["X-Scheduler-Signature"] == notifications.signature(SECRET, got[0].body)
    assert got[1].at - got[0].at >= LEASE - 0.5  # not before the dead sender's lease ran out
    assert notification.attempts >= 2
    assert f":{new_beat}:" in notification.claimed_by
    assert list(Notification.objects.filter(alert=alert).values_list("pk", flat=True)) == [notification.pk]


def test_a_receiver_restarted_mid_delivery_gets_each_delivery_id_once_in_order_per_alert(
    platform, receiver: WebhookReceiver, report
) -> None:
    task = Task.objects.create(name="alerts-receiver-down", handler="builtin.noop")
    hook = webhook(receiver, "receiver-down")
    rule = make_rule("alerts-receiver-down", C.FAILURE, hook, task=task)
    receiver.stop()  # connections refused

    opened = [open_alert(rule, task, key=f"probe:{n}") for n in range(3)]
    for alert in opened:
        assert alerts.resolve_alert(alert, "resolved by the test", now=timezone.now())
    sent = Notification.objects.filter(alert__rule=rule)
    firsts = sent.filter(kind="opened")
    wait_until(
        lambda: firsts.filter(attempts__gte=1).exclude(last_error="").count() == 3,
        timeout=30,
        what="an attempt at each opened notification to fail",
    )
    tried = {n.pk: (n.attempts, n.last_error) for n in sent}
    # A resolved one waits behind its alert's opened one.
    assert set(sent.filter(kind="resolved").values_list("state", "attempts")) == {(N.PENDING, 0)}
    assert not receiver.requests(path_of(hook))

    receiver.start()
    wait_until(lambda: all_sent(sent, 6), timeout=30, what="all 6 notifications sent")
    got = receiver.requests(path_of(hook))
    ids = Counter(r.delivery for r in got)
    report(
        f"receiver down for 3 alerts opened and resolved: attempts while down "
        f"{sorted(a for a, _ in tried.values())}, last error {next(iter(tried.values()))[1]!r}; after "
        f"it started again {len(got)} request(s), {len(ids)} delivery id(s), most per id {max(ids.values())}"
    )
    assert ids == Counter({str(n.delivery_id): 1 for n in sent})
    for alert in opened:
        assert [r.json()["event"] for r in got if r.json()["alert"] == alert.pk] == ["opened", "resolved"]
    assert set(sent.values_list("state", flat=True)) == {N.SENT}


def test_a_webhook_links_to_its_alert_in_the_admin(platform, receiver: WebhookReceiver, report) -> None:
    task = Task.objects.create(name="alerts-link", handler="builtin.noop")
    hook = webhook(receiver, "link")
    rule = make_rule("alerts-link", C.FAILURE, hook, task=task)

    alert = open_alert(rule, task)
    (request,) = wait_until(lambda: told(receiver, hook, "opened"), timeout=30, what="the opened webhook")
    url = request.json()["url"]
    report(f"alert {alert.pk} opened: its webhook's url is {url!r}")
    assert url == f"{settings.SITE_URL}/admin/tasks_app/alert/{alert.pk}/change/"
