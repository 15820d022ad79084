"""The console in a real browser: signing in, the styles it loads, a workflow run's DAG, the
read-only pages of alerts and runs, and a run's page with JavaScript off."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from django.contrib.auth.models import User
from django.utils import timezone
from playwright.sync_api import Page, Response, expect

from tasks_app import alerts, workflows
from tasks_app.alerts import Subject
from tasks_app.choices import AlertCondition, AlertState
from tasks_app.lifecycle import RunState
from tasks_app.models import AlertRule, Run, RunEvent, RunLog, Task, Workflow
from tasks_app.models.workflows import check_steps
from tests.browser.conftest import PASSWORD, USERNAME, sign_in

ADMIN = "/admin/tasks_app"


def _failed_run(make_run: Callable[..., Run], task: Task) -> Run:
    run = make_run(task, RunState.FAILED, error={"type": "ValueError", "message": "bad input"})
    RunEvent.objects.create(run=run, from_state="created", to_state="pending", reason="submitted")
    RunEvent.objects.create(run=run, from_state="pending", to_state="running", reason="claimed")
    RunEvent.objects.create(run=run, from_state="running", to_state="failed", reason="ValueError")
    RunLog.objects.create(run=run, level="INFO", message="a line of the handler")
    return run


def test_a_wrong_password_is_refused_and_the_right_one_lands_on_the_index(
    page: Page, staff_user: User
) -> None:
    sign_in(page, USERNAME, "not-the-password")

    expect(page.locator(".errornote")).to_contain_text("Please enter the correct username and password")
    expect(page).to_have_url(re.compile(r"/admin/login/"))

    sign_in(page, USERNAME, PASSWORD)

    expect(page).to_have_url(re.compile(r"/admin/$"))
    expect(page.locator("#site-name")).to_be_visible()
    expect(page.locator("#user-tools")).to_contain_text(re.compile(rf"Welcome,\s*{USERNAME}\."))
    expect(page.locator("a.section", has_text="Tasks and runs")).to_have_count(1)


def test_the_admin_styles_are_served_and_applied(page: Page, staff_user: User) -> None:
    statics: list[Response] = []
    page.on("response", lambda response: statics.append(response) if "/static/" in response.url else None)

    sign_in(page, USERNAME, PASSWORD)  # the login page, then the index
    expect(page).to_have_url(re.compile(r"/admin/$"))
    page.wait_for_load_state("load")

    first = {}  # each file's first answer: the later ones may come from the cache
    for response in statics:
        first.setdefault(re.sub(r".*/static/", "", response.url), response.status)
    assert first.get("admin/css/base.css") == 200, first
    assert first.get("tasks_app/console.css") == 200, first
    assert all(status == 200 for status in first.values()), first
    # base.css applied: the header has the admin's colour, not the browser's transparent default.
    header = page.locator("#header").evaluate("element => getComputedStyle(element).backgroundColor")
    assert header not in ("rgba(0, 0, 0, 0)", "transparent"), header


def test_a_workflow_run_draws_one_box_per_step_each_linked_to_its_run(
    signed_in_page: Page, task: Task, broker: Any
) -> None:
    steps = check_steps(
        [
            {"key": "a", "task": "noop"},
            {"key": "b", "task": "noop", "depends_on": ["a"]},
            {"key": "c", "task": "noop", "depends_on": ["a"]},
        ],
        {"noop"},
    )
    workflow_run = workflows.start(Workflow.objects.create(name="fan-out", steps=steps), by="boss")
    runs = workflows.latest_runs(workflow_run.pk)
    assert sorted(runs) == ["a", "b", "c"]

    signed_in_page.goto(f"{ADMIN}/workflowrun/{workflow_run.pk}/change/")

    dag = signed_in_page.locator("svg.workflow-dag")
    expect(dag).to_have_count(1)
    expect(dag.locator("rect")).to_have_count(3)
    expect(dag.locator("line")).to_have_count(2)  # a -> b, a -> c
    expect(dag.locator("a")).to_have_count(3)
    drawn = {}
    for key, run in runs.items():
        box = dag.locator("a").filter(has=signed_in_page.locator("title", has_text=re.compile(rf"^{key}: ")))
        expect(box).to_have_count(1)
        expect(box).to_have_attribute("href", f"{ADMIN}/run/{run.pk}/change/")
        expect(box.locator("text")).to_have_text(f"{key} · {run.state}")
        drawn[key] = box.locator("rect").bounding_box()
    # Laid out, not only present: a in the first column, b and c one above the other in the next.
    a, b, c = drawn["a"], drawn["b"], drawn["c"]
    assert a and b and c and a["width"] > 0, drawn
    assert b["x"] == c["x"] > a["x"] and b["y"] != c["y"], drawn


def test_an_alert_page_shows_its_fields_and_offers_no_save_or_delete(
    signed_in_page: Page, task: Task
) -> None:
    rule = AlertRule.objects.create(name="failures", condition=AlertCondition.FAILURE)
    subject = Subject(f"task:{task.pk}", f"task {task.name}", task_id=task.pk)
    alert = alerts.open_alert(rule, subject, "run 7 failed", now=timezone.now())
    assert alert is not None

    signed_in_page.goto(f"{ADMIN}/alert/{alert.pk}/change/")

    form = signed_in_page.locator("#alert_form")
    expect(form.locator(".field-subject .readonly")).to_have_text(f"task {task.name}")
    expect(form.locator(".field-reason .readonly")).to_have_text("run 7 failed")
    expect(form.locator(".field-state .readonly")).to_have_text(AlertState.OPEN.label)
    expect(form.locator(".field-rule .readonly")).to_contain_text("failures")
    expect(form.locator("input:not([type=hidden]), select, textarea")).to_have_count(0)
    expect(form.locator("[type=submit]")).to_have_count(0)
    expect(form.locator(".submit-row a.closelink")).to_have_count(1)  # a view-only page's one way out
    expect(signed_in_page.locator("a.deletelink")).to_have_count(0)


def test_a_run_page_offers_no_save_or_delete(signed_in_page: Page, task: Task, make_run: Any) -> None:
    run = _failed_run(make_run, task)

    signed_in_page.goto(f"{ADMIN}/run/{run.pk}/change/")

    expect(signed_in_page.locator(".field-state_mark .readonly")).to_have_text(RunState.FAILED.value)
    assert signed_in_page.evaluate("typeof window.django") == "object"  # its scripts ran (see below)
    expect(signed_in_page.locator("input[type=submit][name=_save]")).to_have_count(0)
    expect(signed_in_page.locator("input[type=submit][name=_continue]")).to_have_count(0)
    expect(signed_in_page.locator("a.deletelink")).to_have_count(0)


def test_a_run_page_shows_its_state_and_events_with_javascript_off(
    new_page: Callable[..., Page], staff_user: User, task: Task, make_run: Any
) -> None:
    run = _failed_run(make_run, task)
    page = new_page(java_script_enabled=False)
    sign_in(page, USERNAME, PASSWORD)
    expect(page).to_have_url(re.compile(r"/admin/$"))

    page.goto(f"{ADMIN}/run/{run.pk}/change/")

    assert page.evaluate("typeof window.django") == "undefined"  # the admin's scripts did not run
    expect(page.locator(".field-state_mark .readonly")).to_have_text(RunState.FAILED.value)
    expect(page.locator(".field-task_link .readonly")).to_have_text(task.name)
    events = page.locator(".run-timeline tr.run-event")
    expect(events).to_have_count(3)
    expect(events.locator("td.event-reason")).to_have_text(["submitted", "claimed", "ValueError"])
    expect(page.locator("#run-log .log-message")).to_have_text(["a line of the handler"])
