"""No lost updates: a PATCH writes only what it sent, If-Match refuses a stale edit, and an
admin edit writes only the fields the operator changed."""

from __future__ import annotations

import threading
from html.parser import HTMLParser

import pytest
from django.contrib.auth.models import User
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext

from tasks_app.models import Schedule, Task

TASKS = "/api/v1/tasks/"
SCHEDULES = "/api/v1/schedules/"


@pytest.mark.django_db(transaction=True)
def test_parallel_patches_of_different_fields_both_stick(owner, task) -> None:
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    token = Token.objects.create(user=owner).key
    lost = 0
    for _round in range(15):
        schedule = Schedule.objects.create(task=task, interval_seconds=60)
        barrier = threading.Barrier(2)
        answers: list[int] = []

        def patch(
            body: dict,
            schedule_pk: int = schedule.pk,
            barrier: threading.Barrier = barrier,
            answers: list = answers,
        ) -> None:
            client = APIClient()
            client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
            barrier.wait(timeout=10)
            answers.append(client.patch(f"{SCHEDULES}{schedule_pk}/", body, format="json").status_code)
            connections.close_all()

        threads = [
            threading.Thread(target=patch, args=({"kwargs": {"a": 1}},)),
            threading.Thread(target=patch, args=({"misfire_policy": "catch_up"},)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert answers == [200, 200]
        schedule.refresh_from_db()
        lost += (schedule.kwargs, schedule.misfire_policy) != ({"a": 1}, "catch_up")
    assert lost == 0


def test_a_patch_writes_only_the_fields_it_sent(api, task) -> None:
    with CaptureQueriesContext(connection) as queries:
        response = api.patch(f"{TASKS}noop/", {"priority": 3}, format="json")
    assert response.status_code == 200
    (update,) = [q["sql"] for q in queries if q["sql"].startswith("UPDATE `tasks_app_task`")]
    assigned = update.split(" SET ")[1].split(" WHERE ")[0]
    assert sorted(part.split(" = ")[0] for part in assigned.split(", ")) == ["`priority`", "`updated_at`"]


def test_a_patch_keeps_what_another_writer_changed_meanwhile(api, task) -> None:
    schedule = Schedule.objects.create(task=task, interval_seconds=60)
    api.get(f"{SCHEDULES}{schedule.pk}/")  # the client's read
    Schedule.objects.filter(pk=schedule.pk).update(kwargs={"from": "elsewhere"})

    assert (
        api.patch(f"{SCHEDULES}{schedule.pk}/", {"misfire_policy": "run_once"}, format="json").status_code
        == 200
    )

    schedule.refresh_from_db()
    assert (schedule.kwargs, schedule.misfire_policy) == ({"from": "elsewhere"}, "run_once")


def test_reads_carry_an_etag_that_any_edit_changes(api, task) -> None:
    first = api.get(f"{TASKS}noop/")["ETag"]
    assert first.startswith('"') and first == api.get(f"{TASKS}noop/")["ETag"]
    Task.objects.filter(pk=task.pk).update(description="changed by SQL")
    assert api.get(f"{TASKS}noop/")["ETag"] != first


@pytest.mark.parametrize("path", [f"{TASKS}noop/", "schedule", "/api/v1/workflows/flow/"])
def test_if_match_refuses_an_edit_of_a_version_no_longer_current(api, task, path) -> None:
    from tasks_app.models import Workflow

    step = {"key": "a", "task": "noop", "kwargs": {}, "depends_on": [], "trigger_rule": "all_success"}
    Workflow.objects.create(name="flow", steps=[step])
    if path == "schedule":
        path = f"{SCHEDULES}{Schedule.objects.create(task=task, interval_seconds=60).pk}/"
    body = {"kwargs": {"x": 1}} if "schedules" in path else {"description": "mine"}
    seen = api.get(path)["ETag"]

    edited = api.patch(path, body, format="json", HTTP_IF_MATCH=seen)
    assert edited.status_code == 200
    assert edited["ETag"] != seen

    stale = api.patch(path, {"description": "theirs"} if "schedules" not in path else {"kwargs": {}},
                      format="json", HTTP_IF_MATCH=seen)  # fmt: skip
    assert stale.status_code == 412
    assert stale.data["etag"] == edited["ETag"]
    assert api.delete(path, HTTP_IF_MATCH=seen).status_code == 412
    assert api.get(path).status_code == 200
    assert api.get(path)["ETag"] == edited["ETag"]  # nothing written by the refused ones
    assert api.patch(path, body, format="json", HTTP_IF_MATCH="*").status_code == 200
    assert (
        api.patch(path, body, format="json", HTTP_IF_MATCH=f'"other", W/{edited["ETag"]}').status_code == 200
    )


class _Form(HTMLParser):
    """The values a browser would send back for the admin's change form, as shown."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, str] = {}
        self._select: str | None = None
        self._textarea: str | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attr = dict(attrs)
        name = attr.get("name")
        if tag == "input" and name and attr.get("type") not in ("submit", "button"):
            if attr.get("type") != "checkbox" or "checked" in attr:
                self.values[name] = attr.get("value") or ("on" if attr.get("type") == "checkbox" else "")
        elif tag == "select":
            self._select = name
        elif tag == "option" and self._select and "selected" in attr:
            self.values[self._select] = attr.get("value", "")
        elif tag == "textarea":
            self._textarea = name
            self.values[name] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._select = None
        if tag == "textarea":
            self._textarea = None

    def handle_data(self, data: str) -> None:
        if self._textarea:
            self.values[self._textarea] += data.strip("\n")


def test_an_admin_edit_writes_only_what_the_operator_changed(client, api, task) -> None:
    client.force_login(User.objects.create_superuser("boss", password="pw"))
    page = client.get(f"/admin/tasks_app/task/{task.pk}/change/").content.decode()
    form = _Form()
    form.feed(page)
    # Meanwhile, through the API:
    assert api.patch(f"{TASKS}noop/", {"priority": 7}, format="json").status_code == 200

    saved = client.post(f"/admin/tasks_app/task/{task.pk}/change/", {**form.values, "description": "by hand"})

    assert saved.status_code == 302, saved.content.decode()[-2000:]
    task.refresh_from_db()
    assert (task.description, task.priority) == ("by hand", 7)
