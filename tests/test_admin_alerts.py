"""The admin's window on alerts: channels (with their test, against a real local receiver),
rules checked as the API checks them, alerts read-only with their timeline and notifications,
and the open alerts on the index and on the pages of what they concern."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from tasks_app import alerts
from tasks_app.alerts import Subject
from tasks_app.choices import AlertCondition, ChannelKind
from tasks_app.models import Alert, AlertRule, Channel, Notification, Schedule, Task
from tests.receivers import Receiver
from tests.test_api_versions import _Form

ADMIN = "/admin/tasks_app"
SECRET = "s3cret-never-shown"
HOOK = "https://hooks.example/alerts"


@pytest.fixture
def receiver(receiver: Receiver, settings: Any) -> Receiver:
    settings.BUILTIN_HTTP_ALLOWED_HOSTS = [*settings.BUILTIN_HTTP_ALLOWED_HOSTS, "hooks.example"]
    return receiver


@pytest.fixture
def allowed(settings: Any) -> None:
    settings.BUILTIN_HTTP_ALLOWED_HOSTS = ["hooks.example"]


def _values(client: Client, url: str) -> dict[str, str]:
    form = _Form()
    form.feed(client.get(url).content.decode())
    return form.values


def _hook(receiver: Receiver, **fields: Any) -> Channel:
    fields = {"name": "hook", "kind": ChannelKind.WEBHOOK, "target": receiver.url, **fields}
    return Channel.objects.create(**fields)


def _rule(name: str = "failures", **fields: Any) -> AlertRule:
    return AlertRule.objects.create(
        name=name, condition=fields.pop("condition", AlertCondition.FAILURE), **fields
    )


def _open(
    rule: AlertRule, task: Task, schedule: Schedule | None = None, reason: str = "run 1 failed"
) -> Alert:
    key = f"schedule:{schedule.pk}" if schedule else f"task:{task.pk}"
    subject = Subject(
        key, f"task {task.name}", task_id=task.pk, schedule_id=schedule.pk if schedule else None
    )
    alert = alerts.open_alert(rule, subject, reason, now=timezone.now())
    assert alert is not None
    return alert


# --- channels ------------------------------------------------------------------------


def test_a_channel_with_a_target_the_allowlist_refuses_is_not_added(admin_client, allowed) -> None:
    data = {"name": "evil", "kind": "webhook", "target": "http://169.254.169.254/latest", "enabled": "on"}

    page = admin_client.post(f"{ADMIN}/channel/add/", data)

    assert page.status_code == 200  # the form again, with the problem on the target
    assert "BUILTIN_HTTP_ALLOWED_HOSTS" in page.content.decode()
    assert not Channel.objects.exists()


def test_a_channel_edited_to_a_bad_target_keeps_its_own(admin_client, allowed) -> None:
    channel = Channel.objects.create(name="mail", kind="email", target="ops@example.com")
    url = f"{ADMIN}/channel/{channel.pk}/change/"

    page = admin_client.post(url, {**_values(admin_client, url), "target": "ops@, not-an-address"})

    assert page.status_code == 200
    assert "is not an e-mail address" in page.content.decode()
    channel.refresh_from_db()
    assert channel.target == "ops@example.com"


def test_a_channel_is_added_with_a_secret_that_no_page_shows(admin_client, allowed) -> None:
    data = {"name": "ops", "kind": "webhook", "target": HOOK, "secret": SECRET, "enabled": "on"}
    assert admin_client.post(f"{ADMIN}/channel/add/", data).status_code == 302
    channel = Channel.objects.get()
    assert channel.secret == SECRET

    for url in [f"{ADMIN}/channel/", f"{ADMIN}/channel/{channel.pk}/change/"]:
        page = admin_client.get(url).content.decode()
        assert SECRET not in page, url
    assert "A secret is set" in admin_client.get(f"{ADMIN}/channel/{channel.pk}/change/").content.decode()


def test_an_edit_with_the_secret_left_empty_keeps_it_and_a_new_one_replaces_it(admin_client, allowed) -> None:
    channel = Channel.objects.create(name="ops", kind="webhook", target=HOOK, secret=SECRET)
    url = f"{ADMIN}/channel/{channel.pk}/change/"
    values = _values(admin_client, url)
    assert values["secret"] == ""  # the page carries no secret to send back

    assert admin_client.post(url, {**values, "name": "ops-renamed"}).status_code == 302
    channel.refresh_from_db()
    assert (channel.name, channel.secret) == ("ops-renamed", SECRET)

    assert admin_client.post(url, {**_values(admin_client, url), "secret": " new key"}).status_code == 302
    assert Channel.objects.get(pk=channel.pk).secret == " new key"  # as typed


def test_enabling_a_channel_again_clears_its_last_error(admin_client, allowed) -> None:
    channel = Channel.objects.create(
        name="ops", kind="webhook", target=HOOK, enabled=False, last_error="HTTP 404 from hooks.example",
        last_error_at=timezone.now(),
    )  # fmt: skip
    url = f"{ADMIN}/channel/{channel.pk}/change/"
    page = admin_client.get(url).content.decode()
    assert "HTTP 404 from hooks.example" in page

    assert admin_client.post(url, {**_values(admin_client, url), "enabled": "on"}).status_code == 302

    channel.refresh_from_db()
    assert (channel.enabled, channel.last_error, channel.last_error_at) == (True, "", None)


def test_the_send_a_test_button_delivers_to_the_receiver(admin_client, receiver) -> None:
    channel = _hook(receiver, secret=SECRET)
    url = f"{ADMIN}/channel/{channel.pk}/change/"
    assert f'action="{ADMIN}/channel/{channel.pk}/test/"' in admin_client.get(url).content.decode()

    response = admin_client.post(f"{ADMIN}/channel/{channel.pk}/test/")
    page = admin_client.get(response.url).content.decode()

    assert response.status_code == 302 and response.url == url
    assert "Test of channel hook: delivered." in page
    [request] = receiver.requests
    assert json.loads(request["body"])["event"] == "test"
    assert request["headers"]["X-Scheduler-Signature"].startswith("sha256=")
    assert Notification.objects.get(channel=channel).state == "sent"


def test_a_test_answered_404_disables_the_channel_and_says_why(admin_client, receiver) -> None:
    receiver.status = 404
    channel = _hook(receiver)

    page = admin_client.post(f"{ADMIN}/channel/{channel.pk}/test/", follow=True).content.decode()

    assert len(receiver.requests) == 1
    assert "not delivered: HTTP 404 from 127.0.0.1" in page
    assert "The channel was disabled" in page
    channel.refresh_from_db()
    assert channel.enabled is False and channel.last_error.startswith("HTTP 404")


def test_the_send_a_test_action_tests_each_selected_channel(admin_client, receiver) -> None:
    one, two = _hook(receiver, name="one"), _hook(receiver, name="two")
    data = {"action": "send_test", "_selected_action": [one.pk, two.pk]}

    page = admin_client.post(f"{ADMIN}/channel/", data, follow=True).content.decode()

    assert len(receiver.requests) == 2
    assert "Test of channel one: delivered." in page and "Test of channel two: delivered." in page


def test_the_test_is_a_post_with_csrf_by_a_user_who_may_change_the_channel(staff_with, receiver) -> None:
    channel = _hook(receiver, secret=SECRET)
    test = f"{ADMIN}/channel/{channel.pk}/test/"
    staff = User.objects.create_superuser("csrf", password="pw")
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(staff)

    assert strict.post(test).status_code == 403  # no CSRF token
    viewer = staff_with("view_channel")
    assert viewer.get(test).status_code == 405
    assert viewer.post(test).status_code == 403
    page = viewer.get(f"{ADMIN}/channel/{channel.pk}/change/").content.decode()
    assert "Send a test" not in page
    assert SECRET not in page and "a secret is set" in page  # view only: not the secret either
    viewer.post(f"{ADMIN}/channel/", {"action": "send_test", "_selected_action": [channel.pk]})
    assert receiver.requests == []
    assert not Notification.objects.exists()


# --- rules ---------------------------------------------------------------------------


def _rule_data(**fields: Any) -> dict[str, Any]:
    return {"name": "watch", "condition": "failure", "consecutive": 1, "grace_seconds": 60, "enabled": "on",
            **fields}  # fmt: skip


def test_a_rule_with_two_scopes_is_refused(admin_client, task) -> None:
    schedule = Schedule.objects.create(task=task, interval_seconds=60)

    page = admin_client.post(f"{ADMIN}/alertrule/add/", _rule_data(task=task.pk, schedule=schedule.pk))

    assert page.status_code == 200
    assert "Give at most one of task, schedule and workflow." in page.content.decode()
    assert not AlertRule.objects.exists()


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"condition": "worker_offline", "task": "TASK"}, "it takes no scope"),
        ({"condition": "workflow_failure", "task": "TASK"}, "A task has no workflow runs"),
        ({"condition": "overrun"}, "An overrun rule needs max_seconds"),
    ],
)
def test_a_rule_is_checked_as_the_api_checks_it(admin_client, task, fields, problem) -> None:
    fields = {key: task.pk if value == "TASK" else value for key, value in fields.items()}

    page = admin_client.post(f"{ADMIN}/alertrule/add/", _rule_data(**fields))

    assert page.status_code == 200 and problem in page.content.decode()
    assert not AlertRule.objects.exists()


def test_a_rule_is_added_with_its_channels_and_listed_with_them(admin_client, task, allowed) -> None:
    ops = Channel.objects.create(name="ops", kind="webhook", target=HOOK)
    mail = Channel.objects.create(name="mail", kind="email", target="ops@example.com")

    added = admin_client.post(f"{ADMIN}/alertrule/add/", _rule_data(task=task.pk, channels=[ops.pk, mail.pk]))

    assert added.status_code == 302
    rule = AlertRule.objects.get()
    assert (rule.task, set(rule.channels.all())) == (task, {ops, mail})
    listed = admin_client.get(f"{ADMIN}/alertrule/").content.decode()
    assert "task noop" in listed and "ops, mail" in listed


def test_a_rule_edit_leaves_the_channels_alone_unless_changed(admin_client, allowed) -> None:
    ops = Channel.objects.create(name="ops", kind="webhook", target=HOOK)
    mail = Channel.objects.create(name="mail", kind="email", target="ops@example.com")
    rule = _rule()
    rule.channels.set([ops])
    url = f"{ADMIN}/alertrule/{rule.pk}/change/"
    values = _values(admin_client, url)
    rule.channels.set([ops, mail])  # meanwhile, through the API

    assert admin_client.post(url, {**values, "channels": [ops.pk], "name": "renamed"}).status_code == 302

    rule.refresh_from_db()
    assert rule.name == "renamed"
    assert set(rule.channels.all()) == {ops, mail}
    values = {
        **_values(admin_client, url),
        "initial-channels": [ops.pk, mail.pk],
    }  # as shown (_Form keeps one)
    assert admin_client.post(url, {**values, "channels": [mail.pk]}).status_code == 302
    assert list(rule.channels.all()) == [mail]


# --- alerts --------------------------------------------------------------------------


def test_an_alert_can_only_be_viewed_with_its_timeline_and_notifications(admin_client, task, allowed) -> None:
    channel = Channel.objects.create(name="ops", kind="webhook", target=HOOK)
    rule = _rule()
    rule.channels.set([channel])
    alert = _open(rule, task)
    alerts.resolve_alert(alert, "run 2 completed", now=timezone.now())
    url = f"{ADMIN}/alert/{alert.pk}/change/"

    page = admin_client.get(url).content.decode()

    assert 'name="_save"' not in page and 'name="_continue"' not in page
    assert f"{ADMIN}/alert/{alert.pk}/delete/" not in page
    assert "run 1 failed" in page and "run 2 completed" in page  # the timeline
    assert page.count(">ops (webhook)</a>") == 2  # a notification of each event, to the channel
    for notification in Notification.objects.filter(alert=alert):
        assert str(notification.delivery_id) in page
    assert timezone.localtime(alert.opened_at).strftime("%Y-%m-%d %H:%M:%S") in page  # to the second
    assert admin_client.post(url, {"reason": "edited"}).status_code == 403
    assert admin_client.get(f"{ADMIN}/alert/add/").status_code == 403
    assert admin_client.post(f"{ADMIN}/alert/{alert.pk}/delete/", {"post": "yes"}).status_code == 403
    assert Alert.objects.get(pk=alert.pk).reason == "run 1 failed"


def test_the_alert_list_filters_by_state_and_offers_no_delete(admin_client, task, make_task) -> None:
    rule = _rule()
    still = _open(rule, task, reason="still failing")
    over = _open(rule, make_task(name="other"))
    alerts.resolve_alert(over, "run 3 completed", now=timezone.now())

    page = admin_client.get(f"{ADMIN}/alert/?state__exact=open").content.decode()
    assert f"{ADMIN}/alert/{still.pk}/change/" in page
    assert f"{ADMIN}/alert/{over.pk}/change/" not in page
    assert "delete_selected" not in page
    for query in ["", "?rule__condition__exact=failure", f"?rule__id__exact={rule.pk}"]:
        assert admin_client.get(f"{ADMIN}/alert/{query}").status_code == 200, query


def test_the_index_shows_the_open_alerts_and_not_the_resolved(admin_client, task, make_task) -> None:
    assert "Open alerts" not in admin_client.get("/admin/").content.decode()  # none: no box
    rule = _rule()
    still = _open(rule, task)
    over = _open(rule, make_task(name="other"))
    alerts.resolve_alert(over, "run 3 completed", now=timezone.now())

    page = admin_client.get("/admin/").content.decode()

    assert "Open alerts (1)" in page
    assert f'href="{ADMIN}/alert/{still.pk}/change/"' in page and "rule failures" in page
    assert f"{ADMIN}/alert/{over.pk}/change/" not in page


def test_the_index_shows_no_alerts_to_staff_who_may_not_view_them(staff_with, task) -> None:
    _open(_rule(), task)
    assert "Open alerts" not in staff_with("view_task").get("/admin/").content.decode()
    # Those who may, see them (and their pages).
    viewer = staff_with("view_alert")
    assert "Open alerts (1)" in viewer.get("/admin/").content.decode()
    alert = Alert.objects.get()
    page = viewer.get(f"{ADMIN}/alert/{alert.pk}/change/").content.decode()
    assert "Timeline" in page and "the condition started" in page  # its inline, with view_alert alone


def test_the_task_and_schedule_pages_show_their_open_alerts(admin_client, task, make_task) -> None:
    schedule = Schedule.objects.create(task=task, interval_seconds=60)
    on_task = _open(_rule(), task)
    on_schedule = _open(_rule("late", condition=AlertCondition.LATE), task, schedule, reason="not fired")
    elsewhere = _open(_rule("other"), make_task(name="other"))

    task_page = admin_client.get(f"{ADMIN}/task/{task.pk}/change/").content.decode()
    schedule_page = admin_client.get(f"{ADMIN}/schedule/{schedule.pk}/change/").content.decode()

    assert f'href="{ADMIN}/alert/{on_task.pk}/change/"' in task_page
    assert f'href="{ADMIN}/alert/{on_schedule.pk}/change/"' in task_page  # a schedule of the task
    assert f"{ADMIN}/alert/{elsewhere.pk}/change/" not in task_page
    assert f'href="{ADMIN}/alert/{on_schedule.pk}/change/"' in schedule_page
    assert f"{ADMIN}/alert/{on_task.pk}/change/" not in schedule_page
    alerts.resolve_alert(on_task, "run 2 completed", now=timezone.now())
    task_page = admin_client.get(f"{ADMIN}/task/{task.pk}/change/").content.decode()
    assert f"{ADMIN}/alert/{on_task.pk}/change/" not in task_page


def test_a_task_edit_still_saves_with_the_open_alerts_shown(admin_client, task) -> None:
    _open(_rule(), task)
    url = f"{ADMIN}/task/{task.pk}/change/"

    assert admin_client.post(url, {**_values(admin_client, url), "priority": "3"}).status_code == 302
    assert Task.objects.get(pk=task.pk).priority == 3
