"""A workflow run's page in the admin: its DAG with each step's state and duration, a legend of
the colours, a title with the workflow's name, "retry from here" on a failed step; and the page
and list being read-only, the controls going through workflows.py."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest
import time_machine

from tasks_app import execution, workflows
from tasks_app.lifecycle import RunState
from tasks_app.models import Task, Workflow, WorkflowRun
from tasks_app.models.workflows import check_steps

S = RunState
T0 = dt.datetime(2026, 3, 2, 12, 0, 7, tzinfo=dt.UTC)
ADMIN = "/admin/tasks_app/workflowrun/"
ERROR = {"type": "ValueError", "message": "boom", "traceback": ""}


@pytest.fixture
def failed_run(task, broker, django_capture_on_commit_callbacks) -> WorkflowRun:
    """etl-daily: extract, then transform -> load and report. extract took 2.5 s; transform failed
    after 1.25 s and report after 0.5 s; load was skipped: the workflow run failed."""
    steps = check_steps(
        [
            {"key": "extract", "task": "noop"},
            {"key": "transform", "task": "noop", "depends_on": ["extract"]},
            {"key": "report", "task": "noop", "depends_on": ["extract"]},
            {"key": "load", "task": "noop", "depends_on": ["transform"]},
        ],
        {"noop"},
    )
    workflow = Workflow.objects.create(name="etl-daily", steps=steps)
    with time_machine.travel(T0, tick=False) as clock:
        with django_capture_on_commit_callbacks(execute=True):
            workflow_run = workflows.start(workflow, by="boss")
        for key, seconds, ok in [("extract", 2.5, True), ("transform", 1.25, False), ("report", 0.5, False)]:
            run = workflows.latest_runs(workflow_run.pk)[key]
            with django_capture_on_commit_callbacks(execute=True):
                execution.claim(run, run.message_number, "w1")
                clock.shift(seconds)
                if ok:
                    execution.complete(run, {"rows": 3}, "w1")
                else:
                    execution.fail(run, ERROR, reason="ValueError", hostname="w1")
    workflow_run.refresh_from_db()
    assert workflow_run.state == "failed"
    assert states(workflow_run) == {"extract": S.COMPLETED, "transform": S.FAILED, "report": S.FAILED,
                                    "load": S.SKIPPED}  # fmt: skip
    Task.objects.filter(name="noop").update(handler="builtin.noop")  # as if its cause were fixed
    return workflow_run


def states(workflow_run: WorkflowRun) -> dict[str, str]:
    return {key: run.state for key, run in workflows.latest_runs(workflow_run.pk).items()}


def page_of(client: Any, workflow_run: WorkflowRun) -> str:
    response = client.get(f"{ADMIN}{workflow_run.pk}/change/")
    assert response.status_code == 200
    return response.content.decode()


def retry_buttons(page: str) -> list[str]:
    return re.findall(r'<button type="submit" class="retry-from" name="step" value="([^"]+)"', page)


def duration_on_box(page: str, key: str) -> str:
    box = re.search(rf'<g class="dag-step" data-step="{key}" data-state="\w+">.*?</g>', page, re.S)
    assert box, key
    return re.search(r'<text class="dag-duration"[^>]*>([^<]+)</text>', box.group()).group(1)


def messages_of(response: Any) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def test_the_page_is_titled_by_the_workflows_name_and_draws_each_steps_state_and_duration(
    admin_client, failed_run
) -> None:
    page = page_of(admin_client, failed_run)

    title = f"workflow run {failed_run.pk} · etl-daily (failed)"
    assert f"<h1>{title}</h1>" in page
    assert f"<title>{title} |" in page
    assert "extract · completed" in page and "transform · failed" in page and "load · skipped" in page
    assert [duration_on_box(page, key) for key in ("extract", "transform", "report", "load")] == [
        "2.500 s", "1.250 s", "0.500 s", "not started",
    ]  # fmt: skip
    assert re.search(
        r'<tr class="dag-step-row" data-step="extract">.*?<td class="step-duration">2.500 s</td>', page
    )
    assert '<td class="step-started">2026-03-02 12:00:07 UTC</td>' in page  # to the second


def test_the_legend_shows_every_run_state_in_the_dags_colours(admin_client, failed_run) -> None:
    page = page_of(admin_client, failed_run)

    legend = re.search(r'<ul class="dag-legend">(.*?)</ul>', page, re.S).group(1)
    assert re.findall(r'class="state-badge state-(\w+)"', legend) == list(S.values)
    assert 'fill="#f4a3a3"' in page  # failed's colour on transform's box, as on its badge


def test_a_workflow_run_page_offers_no_save_and_no_delete_and_cannot_be_posted(
    admin_client, failed_run
) -> None:
    page = page_of(admin_client, failed_run)

    assert 'name="_save"' not in page and 'name="_continue"' not in page
    assert "deletelink" not in page
    assert admin_client.post(f"{ADMIN}{failed_run.pk}/change/", {"state": "completed"}).status_code == 403
    assert admin_client.post(f"{ADMIN}{failed_run.pk}/delete/", {"post": "yes"}).status_code == 403
    failed_run.refresh_from_db()
    assert failed_run.state == "failed"


def test_retry_from_here_retries_that_step_and_its_downstream_steps_only(
    admin_client, failed_run, django_capture_on_commit_callbacks
) -> None:
    assert retry_buttons(page_of(admin_client, failed_run)) == ["transform", "report"]  # failed ones

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            f"{ADMIN}{failed_run.pk}/retry-from/", {"step": "transform"}, follow=True
        )

    assert response.redirect_chain == [(f"{ADMIN}{failed_run.pk}/change/", 302)]
    assert f"Workflow run {failed_run.pk} · etl-daily: retrying transform, load." in messages_of(response)
    assert states(failed_run) == {"extract": S.COMPLETED, "transform": S.PENDING, "report": S.FAILED,
                                  "load": S.CREATED}  # fmt: skip
    failed_run.refresh_from_db()
    assert failed_run.state == "running"
    event = failed_run.events.order_by("id").last()
    assert (event.reason, event.actor_name) == ("retried from transform: load, transform", "boss")


@pytest.mark.parametrize(
    ("step", "says"),
    [
        ("extract", "Step extract of workflow run {pk} is completed: only a failed or cancelled step"),
        ("nothing", "Workflow run {pk} has no step 'nothing'."),
    ],
)
def test_a_refused_retry_from_here_says_why(admin_client, failed_run, step, says) -> None:
    response = admin_client.post(f"{ADMIN}{failed_run.pk}/retry-from/", {"step": step}, follow=True)

    assert response.status_code == 200
    assert any(m.startswith("Not retried: " + says.format(pk=failed_run.pk)) for m in messages_of(response))
    assert states(failed_run)["transform"] == S.FAILED
    failed_run.refresh_from_db()
    assert failed_run.state == "failed"


def test_retry_from_here_on_a_run_retried_meanwhile_says_why(
    admin_client, failed_run, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        workflows.retry(failed_run, by="someone")  # from another tab, or the API

    response = admin_client.post(f"{ADMIN}{failed_run.pk}/retry-from/", {"step": "report"}, follow=True)

    assert response.status_code == 200
    said = f"Workflow run {failed_run.pk} is running: only a failed or cancelled one can be retried."
    assert f"Not retried: {said}" in messages_of(response)
    assert retry_buttons(page_of(admin_client, failed_run)) == []  # a running one offers none


def test_retry_from_here_needs_change_workflowrun_and_add_run(staff_with, failed_run) -> None:
    client = staff_with("view_workflowrun", "change_workflowrun")

    page = page_of(client, failed_run)
    refused = client.post(f"{ADMIN}{failed_run.pk}/retry-from/", {"step": "transform"})

    assert retry_buttons(page) == []
    assert refused.status_code == 403
    assert states(failed_run)["transform"] == S.FAILED


def test_with_add_run_too_the_staff_gets_retry_from_here_and_the_bulk_controls_work(
    staff_with, failed_run, django_capture_on_commit_callbacks
) -> None:
    client = staff_with("view_workflowrun", "change_workflowrun", "add_run")
    assert retry_buttons(page_of(client, failed_run)) == ["transform", "report"]
    listed = client.get(ADMIN).content.decode()
    assert 'value="retry"' in listed and 'value="cancel"' in listed
    assert 'value="delete_selected"' not in listed

    with django_capture_on_commit_callbacks(execute=True):
        client.post(ADMIN, {"action": "retry", "_selected_action": [failed_run.pk]})

    assert states(failed_run) == {"extract": S.COMPLETED, "transform": S.PENDING, "report": S.PENDING,
                                  "load": S.CREATED}  # fmt: skip


def test_the_list_shows_states_as_badges_and_times_to_the_second(admin_client, failed_run) -> None:
    page = admin_client.get(ADMIN).content.decode()

    assert '<span class="state-badge state-failed">failed</span>' in page
    assert "etl-daily" in page
    assert "2026-03-02 12:00:07" in page  # created, to the second
    assert "4.250 s" in page  # from start to finish


def test_the_events_of_a_workflow_run_show_their_states_as_badges(admin_client, failed_run) -> None:
    page = page_of(admin_client, failed_run)

    assert re.search(
        r'<td class="field-to_badge">\s*<p><span class="state-badge state-failed">failed</span>', page
    )
