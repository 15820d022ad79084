"""The run pages and the task page of the admin: what they show, and that their buttons and
forms go through the domain (controls, submission) with the API's rules."""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest
import time_machine
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tasks_app import redis_client
from tasks_app.admin import runs as run_admin
from tasks_app.lifecycle import RunState
from tasks_app.models import Run, RunEvent, RunLog, Schedule

S = RunState
NOW = dt.datetime(2026, 3, 2, 12, 0, 0, 250_000, tzinfo=dt.UTC)
TRACEBACK = "Traceback (most recent call last):\n  boom"


def page_url(run: Run, what: str = "change") -> str:
    return f"/admin/tasks_app/run/{run.pk}/{what}/"


def buttons(page: str) -> list[str]:
    return re.findall(r'class="run-control run-control-(\w+)"', page)


def first_event(run: Run) -> RunEvent:
    return RunEvent.objects.filter(run=run).order_by("at", "id").first()


# --- the run's page ---------------------------------------------------------------------------


@time_machine.travel(NOW, tick=False)
def test_the_run_page_shows_the_state_as_a_badge_its_links_and_times_to_the_millisecond(
    admin_client, task
) -> None:
    schedule = Schedule.objects.create(task=task, interval_seconds=60)
    started = NOW - dt.timedelta(seconds=2, milliseconds=500)
    run = Run.objects.create(
        task=task,
        state=S.FAILED,
        trigger="schedule",
        schedule=schedule,
        attempt=2,
        retries=1,
        scheduled_for=NOW - dt.timedelta(seconds=10),
        created_at=NOW - dt.timedelta(seconds=9, milliseconds=877),
        started_at=started,
        finished_at=NOW,
        worker="w1@host",
        kwargs={"day": "2026-03-01"},
        error={"type": "ValueError", "message": "bad day", "traceback": TRACEBACK},
    )

    page = admin_client.get(page_url(run)).content.decode()

    assert f"<h1>run {run.pk} · noop (failed)</h1>" in page
    assert '<span class="state-badge state-failed">failed</span>' in page
    assert f'href="/admin/tasks_app/task/{task.pk}/change/"' in page
    assert f'href="/admin/tasks_app/schedule/{schedule.pk}/change/"' in page
    assert 'href="/admin/tasks_app/worker/?hostname=w1%40host"' in page
    assert "2026-03-02 11:59:57.750 UTC" in page  # started, to the millisecond
    assert "2026-03-02 12:00:00.250 UTC" in page  # finished
    assert "2.500 s" in page  # the duration
    assert "0.123 s" in page  # lateness: created 0.123 s after the instant it was meant for
    assert '<pre class="traceback">Traceback (most recent call last):\n  boom</pre>' in page
    assert "&quot;day&quot;: &quot;2026-03-01&quot;" in page  # the kwargs
    assert "2 started; 1 automatic retry used of 0" in page


def test_the_run_page_names_who_submitted_it_and_links_them(admin_client, task, api, broker) -> None:
    made = api.post("/api/v1/runs/", {"task": "noop"}, format="json").data["id"]

    page = admin_client.get(f"/admin/tasks_app/run/{made}/change/").content.decode()

    assert 'api, by <a href="/admin/auth/user/?username=owner">owner</a> (submitted)' in page


def test_the_run_page_of_a_workflow_step_links_its_workflow_run(admin_client, task, broker) -> None:
    from tasks_app import workflows
    from tasks_app.models import Workflow
    from tasks_app.models.workflows import check_steps

    workflow = Workflow.objects.create(
        name="pair", steps=check_steps([{"key": "A", "task": "noop"}], {"noop"})
    )
    workflow_run = workflows.start(workflow, by="boss")
    step = workflows.latest_runs(workflow_run.pk)["A"]

    page = admin_client.get(page_url(step)).content.decode()

    assert f'workflow: <a href="/admin/tasks_app/workflowrun/{workflow_run.pk}/change/">' in page


def test_the_run_page_has_no_save_and_no_delete_and_takes_no_edit(admin_client, task, make_run) -> None:
    run = make_run(task, S.PENDING)

    page = admin_client.get(page_url(run)).content.decode()
    edit = admin_client.post(page_url(run), {"state": "completed", "priority": "9"})
    delete = admin_client.post(page_url(run, "delete"), {"post": "yes"})
    bulk_delete = admin_client.post(
        "/admin/tasks_app/run/", {"action": "delete_selected", "_selected_action": [run.pk], "post": "yes"}
    )

    assert 'name="_save"' not in page and 'name="_continue"' not in page
    assert "deletelink" not in page
    assert edit.status_code == 403 and delete.status_code == 403
    assert bulk_delete.status_code == 302  # back to the list: no such action
    assert 'value="delete_selected"' not in admin_client.get("/admin/tasks_app/run/").content.decode()
    run.refresh_from_db()
    assert (run.state, run.priority) == (S.PENDING, 0)


def test_the_run_list_shows_each_state_as_a_badge(admin_client, task, make_run) -> None:
    make_run(task, S.FAILED)
    make_run(task, S.RUNNING)

    page = admin_client.get("/admin/tasks_app/run/").content.decode()

    assert '<span class="state-badge state-failed">failed</span>' in page
    assert '<span class="state-badge state-running">running</span>' in page
    assert 'value="cancel"' in page  # the bulk controls are still offered


@pytest.mark.parametrize(
    ("state", "handler", "offered"),
    [
        (S.CREATED, "builtin.noop", ["cancel", "pause"]),
        (S.PENDING, "builtin.noop", ["cancel", "pause"]),
        (S.RUNNING, "builtin.noop", ["cancel"]),  # its handler takes no checkpoint
        (S.RUNNING, "builtin.sleep", ["cancel", "pause"]),
        (S.RETRYING, "builtin.noop", ["cancel", "pause"]),
        (S.PAUSED, "builtin.noop", ["cancel", "resume"]),
        (S.FAILED, "builtin.noop", ["retry"]),
        (S.CANCELLED, "builtin.noop", ["retry"]),
        (S.COMPLETED, "builtin.noop", []),
        (S.SKIPPED, "builtin.noop", []),
    ],
)
def test_each_button_is_offered_only_where_the_state_allows_it(
    admin_client, make_task, make_run, state, handler, offered
) -> None:
    run = make_run(make_task(handler=handler), state)
    assert buttons(admin_client.get(page_url(run)).content.decode()) == offered


def test_no_button_and_no_rerun_without_the_permissions(staff_with, task, make_run) -> None:
    run = make_run(task, S.PENDING)
    client = staff_with("view_run")

    page = client.get(page_url(run)).content.decode()
    cancel = client.post(page_url(run, "cancel"))
    rerun = client.get(page_url(run, "rerun"))

    assert buttons(page) == [] and "Rerun with edited parameters" not in page
    assert (cancel.status_code, rerun.status_code) == (403, 403)
    assert Run.objects.get(pk=run.pk).state == S.PENDING


@pytest.mark.parametrize(
    ("state", "control", "target"),
    [
        (S.PENDING, "cancel", S.CANCELLED),
        (S.PENDING, "pause", S.PAUSED),
        (S.PAUSED, "resume", S.PENDING),
        (S.FAILED, "retry", S.PENDING),
    ],
)
def test_each_button_calls_the_domain_and_records_who(
    admin_client, task, make_run, state, control, target
) -> None:
    run = make_run(task, state)

    response = admin_client.post(page_url(run, control), follow=True)

    assert response.redirect_chain == [(page_url(run), 302)]
    run.refresh_from_db()
    assert run.state == target
    event = RunEvent.objects.get(run=run)
    assert (event.from_state, event.to_state, event.actor, event.actor_name) == (
        state,
        target,
        "user",
        "boss",
    )
    assert f"run {run.pk}." in response.content.decode()  # "Cancelled run 5."


def test_a_refused_move_says_why_and_changes_nothing(admin_client, task, make_run) -> None:
    run = make_run(task, S.COMPLETED)

    response = admin_client.post(page_url(run, "cancel"), follow=True)

    assert response.status_code == 200
    assert f"Not done: run {run.pk} is completed: it cannot move to cancelled." in response.content.decode()
    assert Run.objects.get(pk=run.pk).state == S.COMPLETED
    assert not RunEvent.objects.filter(run=run).exists()


def test_pausing_a_running_run_whose_handler_takes_no_checkpoint_says_so(
    admin_client, task, make_run
) -> None:
    run = make_run(task, S.RUNNING)
    page = admin_client.post(page_url(run, "pause"), follow=True).content.decode()
    assert "its handler takes no checkpoint" in page
    assert Run.objects.get(pk=run.pk).state == S.RUNNING


def test_a_button_answers_only_a_post(admin_client, task, make_run) -> None:
    run = make_run(task, S.PENDING)
    assert admin_client.get(page_url(run, "cancel")).status_code == 405
    assert Run.objects.get(pk=run.pk).state == S.PENDING


def test_the_page_says_why_a_run_is_not_running(admin_client, task, make_run) -> None:
    holder = make_run(task, S.RUNNING)
    later = make_run(task, S.CREATED, due_at=dt.datetime(2099, 1, 1, tzinfo=dt.UTC))

    page = admin_client.get(page_url(later)).content.decode()

    assert "Why it is not running" in page
    assert "Waiting for its time: it is due at 2099-01-01 00:00:00 UTC." in page
    assert "No worker is online" in page
    assert "Why it is not running" not in admin_client.get(page_url(holder)).content.decode()


def test_the_page_shows_the_log_tail_and_progress_and_how_to_follow_them(
    admin_client, task, make_run
) -> None:
    run = make_run(task, S.RUNNING, progress={"fraction": 0.4, "message": "rows"})
    lines = [RunLog(run=run, level="INFO", message=f"line {i}") for i in range(3)]
    RunLog.objects.bulk_create(lines)
    last = RunLog.objects.filter(run=run).order_by("-id").first()

    page = admin_client.get(page_url(run)).content.decode()

    assert '<progress id="run-progress" max="1" value="0.400000">40%</progress>' in page
    assert "40% · rows" in page
    assert page.index("line 0") < page.index("line 1") < page.index("line 2")
    assert f'data-url="/admin/tasks_app/run/{run.pk}/live/"' in page
    assert f'data-after="{last.pk}"' in page and 'data-finished="false"' in page
    assert "/static/tasks_app/run.js" in page


def test_the_page_shows_the_last_lines_of_a_long_log(admin_client, task, make_run, monkeypatch) -> None:
    monkeypatch.setattr(run_admin, "LOG_TAIL", 2)
    run = make_run(task, S.COMPLETED)
    RunLog.objects.bulk_create([RunLog(run=run, level="INFO", message=f"line #{i}") for i in range(5)])

    page = admin_client.get(page_url(run)).content.decode()

    assert "line #3" in page and "line #4" in page and "line #2" not in page
    assert "The last 2 lines" in page


def test_the_page_does_not_query_per_log_line_or_event(admin_client, task, make_run) -> None:
    def queries(lines: int) -> int:
        run = make_run(task, S.RUNNING)
        RunLog.objects.bulk_create([RunLog(run=run, level="INFO", message=f"l{i}") for i in range(lines)])
        RunEvent.objects.bulk_create([RunEvent(run=run, from_state="", to_state="pending")] * lines)
        with CaptureQueriesContext(connection) as captured:
            assert admin_client.get(page_url(run)).status_code == 200
        return len(captured)

    assert queries(1) == queries(40)


# --- the live view ----------------------------------------------------------------------------


def test_the_live_view_gives_only_the_lines_after_the_offset(admin_client, task, make_run) -> None:
    run = make_run(task, S.RUNNING, attempt=1, progress={"fraction": 0.5, "message": "half"})
    first, second, third = (RunLog.objects.create(run=run, level="INFO", message=m) for m in ("a", "b", "c"))

    data = admin_client.get(page_url(run, "live"), {"after": first.pk}).json()

    assert [line["message"] for line in data["lines"]] == ["b", "c"]
    assert [line["id"] for line in data["lines"]] == [second.pk, third.pk]
    assert data["after"] == third.pk
    assert (data["state"], data["attempt"], data["finished"]) == ("running", 1, False)
    assert data["progress"] == {"fraction": 0.5, "percent": 50, "message": "half"}
    assert data["badge"] == '<span class="state-badge state-running">running</span>'
    nothing_new = admin_client.get(page_url(run, "live"), {"after": third.pk}).json()
    assert (nothing_new["lines"], nothing_new["after"]) == ([], third.pk)


def test_the_live_view_says_finished_once_the_run_ended_and_its_lines_are_given(
    admin_client, task, make_run, monkeypatch
) -> None:
    monkeypatch.setattr(run_admin, "LIVE_LINES", 2)
    run = make_run(task, S.COMPLETED)
    RunLog.objects.bulk_create([RunLog(run=run, level="INFO", message=m) for m in ("a", "b", "c")])

    first = admin_client.get(page_url(run, "live")).json()
    rest = admin_client.get(page_url(run, "live"), {"after": first["after"]}).json()

    assert ([line["message"] for line in first["lines"]], first["finished"]) == (["a", "b"], False)
    assert ([line["message"] for line in rest["lines"]], rest["finished"]) == (["c"], True)


def test_the_live_view_needs_view_run_and_a_number(staff_with, task, make_run) -> None:
    run = make_run(task, S.RUNNING)
    client = staff_with("view_task")
    assert client.get(page_url(run, "live")).status_code == 403

    client.force_login(User.objects.create_user("reader", password="pw", is_staff=True))
    User.objects.get(username="reader").user_permissions.add(Permission.objects.get(codename="view_run"))
    assert client.get(page_url(run, "live"), {"after": "x"}).status_code == 400
    assert client.get(page_url(run, "live")).status_code == 200


# --- rerun with edited parameters -------------------------------------------------------------


def test_the_rerun_form_is_filled_from_the_run(admin_client, task, make_run) -> None:
    run = make_run(task, S.FAILED, args=[1, "two"], kwargs={"day": "2026-03-01"}, priority=4)

    page = admin_client.get(page_url(run, "rerun")).content.decode()

    assert "[1, &quot;two&quot;]</textarea>" in page
    assert "{&quot;day&quot;: &quot;2026-03-01&quot;}</textarea>" in page
    assert 'name="priority" value="4"' in page


def test_rerun_makes_a_new_run_with_the_edited_kwargs(admin_client, task, make_run, broker) -> None:
    run = make_run(task, S.FAILED, kwargs={"day": "2026-03-01"})

    response = admin_client.post(
        page_url(run, "rerun"), {"args": "[]", "kwargs": '{"day": "2026-03-02"}', "priority": "3"}
    )

    new = Run.objects.exclude(pk=run.pk).get()
    assert response.status_code == 302 and response["Location"] == page_url(new)
    assert (new.trigger, new.kwargs, new.priority, new.state) == (
        "manual",
        {"day": "2026-03-02"},
        3,
        S.PENDING,
    )
    born = first_event(new)
    assert (born.actor, born.actor_name, born.reason) == ("user", "boss", f"rerun of run {run.pk}")
    assert Run.objects.get(pk=run.pk).state == S.FAILED  # a rerun is not a retry


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"kwargs": "{not json"}, "Enter a valid JSON."),
        ({"kwargs": "[1, 2]"}, "Expected a dictionary of items but got type &quot;list&quot;."),
        ({"args": '{"a": 1}'}, "Expected a list of items but got type &quot;dict&quot;."),
        ({"priority": "10"}, "Ensure this value is less than or equal to 9."),
        ({"run_at": "tomorrow"}, "Enter a valid date/time."),
    ],
)
def test_rerun_refuses_bad_input_inline(admin_client, task, make_run, fields, says) -> None:
    run = make_run(task, S.FAILED)

    response = admin_client.post(page_url(run, "rerun"), {"args": "", "kwargs": "{}", **fields})

    assert response.status_code == 200
    assert says in response.content.decode()
    assert Run.objects.count() == 1


# --- the task's page --------------------------------------------------------------------------


def task_run_url(task) -> str:
    return f"/admin/tasks_app/task/{task.pk}/run/"


def test_the_task_page_offers_run_now_with_parameters_to_those_who_may_make_runs(
    staff_with, admin_client, task
) -> None:
    page = admin_client.get(f"/admin/tasks_app/task/{task.pk}/change/").content.decode()
    assert f'href="{task_run_url(task)}"' in page

    client = staff_with("view_task", "change_task")
    page = client.get(f"/admin/tasks_app/task/{task.pk}/change/").content.decode()
    assert task_run_url(task) not in page
    assert client.get(task_run_url(task)).status_code == 403


def test_run_now_with_parameters_is_filled_with_the_task_defaults(admin_client, make_task) -> None:
    task = make_task(args=[7], kwargs={"size": 3}, priority=6)

    page = admin_client.get(task_run_url(task)).content.decode()

    assert "[7]</textarea>" in page and "{&quot;size&quot;: 3}</textarea>" in page
    assert 'name="priority" value="6"' in page


def test_run_now_with_parameters_submits_a_run(admin_client, make_task, broker) -> None:
    task = make_task(kwargs={"size": 3, "colour": "red"})

    response = admin_client.post(
        task_run_url(task), {"args": "", "kwargs": '{"size": 5}', "priority": "", "idempotency_key": " k-1 "}
    )

    run = Run.objects.get()
    assert response["Location"] == page_url(run)
    # kwargs merged over the task's, priority the task's, the key stripped: as POST /runs/.
    assert (run.task, run.trigger, run.kwargs) == (task, "manual", {"size": 5, "colour": "red"})
    assert (run.priority, run.idempotency_key, run.args) == (0, "k-1", [])
    assert first_event(run).actor_name == "boss"


@time_machine.travel(NOW, tick=False)
def test_run_now_with_a_later_run_at_waits_for_it(admin_client, task, broker) -> None:
    admin_client.post(task_run_url(task), {"kwargs": "{}", "run_at": "2026-03-02T14:00:00+01:00"})
    run = Run.objects.get()
    assert (run.state, run.due_at) == (S.CREATED, dt.datetime(2026, 3, 2, 13, tzinfo=dt.UTC))


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"priority": 10}, "priority"),
        ({"priority": -1}, "priority"),
        ({"priority": "high"}, "priority"),
        ({"kwargs": [1, 2]}, "kwargs"),
        ({"kwargs": "x"}, "kwargs"),
        ({"args": {"a": 1}}, "args"),
        ({"idempotency_key": "line\nbreak"}, "idempotency_key"),
        ({"idempotency_key": "k" * 256}, "idempotency_key"),
    ],
)
def test_run_now_refuses_bad_input_inline_with_the_message_the_api_gives(
    admin_client, api, task, broker, body, field
) -> None:
    said = api.post("/api/v1/runs/", {"task": "noop", **body}, format="json")
    form = {name: json.dumps(value) if name in ("args", "kwargs") else value for name, value in body.items()}

    page = admin_client.post(task_run_url(task), {"kwargs": "{}", **form})

    assert said.status_code == 400
    message = str(said.data[field][0]).replace('"', "&quot;")
    assert page.status_code == 200
    assert message in page.content.decode()
    assert not Run.objects.exists()


def test_run_now_of_a_disabled_task_is_refused_inline_as_the_api_refuses_it(
    admin_client, api, make_task
) -> None:
    task = make_task(name="off", enabled=False)
    said = api.post("/api/v1/runs/", {"task": "off"}, format="json")

    page = admin_client.post(task_run_url(task), {"kwargs": "{}"})

    assert said.status_code == 409
    assert said.data["detail"].replace("'", "&#x27;") in page.content.decode()
    assert not Run.objects.exists()


def test_run_now_with_a_key_used_for_another_request_says_so(admin_client, api, task, broker) -> None:
    first = api.post("/api/v1/runs/", {"task": "noop", "idempotency_key": "k"}, format="json").data["id"]

    page = admin_client.post(task_run_url(task), {"kwargs": '{"x": 1}', "idempotency_key": "k"})
    again = admin_client.post(task_run_url(task), {"kwargs": "{}", "idempotency_key": "k"})

    assert f"idempotency key &#x27;k&#x27; was used for run {first} with a different request" in (
        page.content.decode()
    )
    assert again["Location"] == f"/admin/tasks_app/run/{first}/change/"  # the same request: its run
    assert Run.objects.count() == 1


@time_machine.travel(NOW, tick=False)
def test_the_task_page_marks_its_recent_runs_with_success_rate_and_p95(admin_client, task, make_run) -> None:
    start = NOW - dt.timedelta(minutes=5)
    made = [
        make_run(task, state, started_at=start, finished_at=start + dt.timedelta(seconds=seconds))
        for state, seconds in [(S.COMPLETED, 1), (S.COMPLETED, 2), (S.FAILED, 3), (S.COMPLETED, 40)]
    ]
    pending = make_run(task, S.PENDING)

    page = admin_client.get(f"/admin/tasks_app/task/{task.pk}/change/").content.decode()

    strip = page[page.index('<div class="run-strip">') :]
    for run in [*made, pending]:
        assert f'<a class="run-mark state-{run.state}" href="/admin/tasks_app/run/{run.pk}/change/"' in strip
    assert strip.index(f"/run/{made[0].pk}/") < strip.index(f"/run/{pending.pk}/")  # oldest first
    assert (
        "Last 5 run(s): success rate 75% (3 completed of 4 completed or failed); p95 duration 40.0 s." in page
    )
    assert "/static/tasks_app/task.css" in page


def test_the_task_page_of_a_task_without_runs_says_so(admin_client, task) -> None:
    assert "No runs yet." in admin_client.get(f"/admin/tasks_app/task/{task.pk}/change/").content.decode()


def test_a_huge_log_line_is_cut_on_the_page_and_says_where_it_is_whole(admin_client, task, make_run) -> None:
    run = make_run(task, S.RUNNING)
    RunLog.objects.create(run=run, level="INFO", message="x" * (run_admin.LINE_SHOWN + 500))

    page = admin_client.get(page_url(run)).content.decode()
    live = admin_client.get(page_url(run, "live")).json()

    assert "x" * (run_admin.LINE_SHOWN + 1) not in page
    assert "500 more characters" in page
    assert live["lines"][0]["message"].endswith("500 more characters: GET /api/v1/runs/{id}/logs/]")


def test_the_task_page_shows_its_runs_only_to_those_who_may_view_runs(staff_with, task, make_run) -> None:
    make_run(task, S.COMPLETED)
    client = staff_with("view_task")

    page = client.get(f"/admin/tasks_app/task/{task.pk}/change/").content.decode()

    assert "field-recent_runs" not in page
    assert "run-mark" not in page


def test_a_bulk_control_whose_lock_cannot_be_read_says_so(
    admin_client, make_task, make_run, settings
) -> None:
    gated = make_task(name="gated", concurrency_policy="forbid")
    run = make_run(gated, S.PAUSED)
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # the locks' Redis is away
    redis_client.client.cache_clear()
    try:
        response = admin_client.post(
            "/admin/tasks_app/run/", {"action": "resume", "_selected_action": [run.pk]}, follow=True
        )
    finally:
        redis_client.client.cache_clear()

    assert response.status_code == 200
    assert "its concurrency lock cannot be read now" in response.content.decode()
    assert Run.objects.get(pk=run.pk).state == S.PAUSED
