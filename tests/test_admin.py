from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import User
from django_celery_beat.models import PeriodicTask

from tasks_app import scheduling
from tasks_app.lifecycle import RunState
from tasks_app.models import Run, RunEvent, RunLog, Schedule, Task, Workflow

T = "2026-01-01T00:00:00Z"


@pytest.fixture
def admin_client(client, db):
    user = User.objects.create_superuser("boss", password="pw")
    client.force_login(user)
    return client


def test_task_and_run_pages_render(admin_client, task, make_run) -> None:
    run = make_run(task, RunState.FAILED, error={"type": "ValueError", "message": "m", "traceback": "tb"})
    RunEvent.objects.create(run=run, from_state="running", to_state="failed", reason="ValueError")
    RunLog.objects.create(run=run, level="INFO", message="a line of the handler")

    for url in [
        "/admin/tasks_app/task/",
        f"/admin/tasks_app/task/{task.pk}/change/",
        "/admin/tasks_app/run/",
        "/admin/tasks_app/run/?state__exact=failed",
        f"/admin/tasks_app/run/{run.pk}/change/",
    ]:
        assert admin_client.get(url).status_code == 200, url

    page = admin_client.get(f"/admin/tasks_app/run/{run.pk}/change/").content.decode()
    assert "a line of the handler" in page
    assert "ValueError" in page


def test_task_form_offers_only_registered_handlers(admin_client) -> None:
    response = admin_client.post(
        "/admin/tasks_app/task/add/",
        {"name": "evil", "handler": "os.system", "args": "[]", "kwargs": "{}", "queue": "default",
         "priority": 0, "max_retries": 0, "retry_backoff": 1, "retry_backoff_max": 60,
         "concurrency_policy": "allow"},
    )  # fmt: skip
    assert response.status_code == 200  # the form comes back with an error
    assert "Select a valid choice" in response.content.decode()


def test_run_now_action_submits_a_run(admin_client, task, broker, django_capture_on_commit_callbacks) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            "/admin/tasks_app/task/", {"action": "run_now", "_selected_action": [task.pk]}
        )
    assert response.status_code == 302
    run = Run.objects.get()
    assert (run.task, run.state, run.trigger) == (task, RunState.PENDING, "manual")


def test_run_actions_call_the_domain_and_record_who(admin_client, task, make_run) -> None:
    pending = make_run(task, RunState.PENDING)
    done = make_run(task, RunState.COMPLETED)

    admin_client.post(
        "/admin/tasks_app/run/", {"action": "cancel", "_selected_action": [pending.pk, done.pk]}
    )

    assert Run.objects.get(pk=pending.pk).state == RunState.CANCELLED
    assert Run.objects.get(pk=done.pk).state == RunState.COMPLETED  # refused, unchanged
    event = RunEvent.objects.get(run=pending)
    assert (event.actor, event.actor_name) == ("user", "boss")


def test_run_state_cannot_be_edited_in_the_admin(admin_client, task, make_run) -> None:
    run = make_run(task, RunState.PENDING)
    admin_client.post(f"/admin/tasks_app/run/{run.pk}/change/", {"state": "completed"})
    assert Run.objects.get(pk=run.pk).state == RunState.PENDING


def test_schedule_pages_render_and_actions_work(admin_client, task, broker) -> None:
    from tasks_app.models import Schedule

    schedule = Schedule.objects.create(task=task, cron="*/5 * * * *", timezone="Europe/Berlin")
    assert admin_client.get("/admin/tasks_app/schedule/").status_code == 200
    assert admin_client.get(f"/admin/tasks_app/schedule/{schedule.pk}/change/").status_code == 200

    admin_client.post("/admin/tasks_app/schedule/", {"action": "pause", "_selected_action": [schedule.pk]})
    assert Schedule.objects.get(pk=schedule.pk).enabled is False
    admin_client.post("/admin/tasks_app/schedule/", {"action": "fire_now", "_selected_action": [schedule.pk]})
    assert Run.objects.get().trigger == "manual"


def test_schedule_form_refuses_two_kinds_and_bad_cron(admin_client, task) -> None:
    from tasks_app.models import Schedule

    base = {
        "task": task.pk,
        "timezone": "UTC",
        "args": "null",
        "kwargs": "{}",
        "misfire_policy": "skip",
        "enabled": "on",
    }
    two = admin_client.post(
        "/admin/tasks_app/schedule/add/", {**base, "cron": "* * * * *", "interval_seconds": 5}
    )
    bad = admin_client.post("/admin/tasks_app/schedule/add/", {**base, "cron": "99 * * * *"})
    assert "exactly one" in two.content.decode()
    assert "invalid cron" in bad.content.decode()
    assert not Schedule.objects.exists()


def test_workflow_run_page_draws_the_dag_coloured_and_linked(
    admin_client, task, broker, django_capture_on_commit_callbacks
) -> None:
    from tasks_app import workflows
    from tasks_app.models import Workflow, WorkflowRun
    from tasks_app.models.workflows import check_steps

    steps = check_steps(
        [{"key": "A", "task": "noop"}, {"key": "B", "task": "noop", "depends_on": ["A"]}], {"noop"}
    )
    workflow = Workflow.objects.create(name="pair", steps=steps)
    with django_capture_on_commit_callbacks(execute=True):
        workflow_run = workflows.start(workflow, by="boss")
    a = workflows.latest_runs(workflow_run.pk)["A"]

    page = admin_client.get(f"/admin/tasks_app/workflowrun/{workflow_run.pk}/change/").content.decode()

    assert "<svg" in page and "marker-end" in page
    assert f'href="/admin/tasks_app/run/{a.pk}/change/"' in page
    assert "A · pending" in page and "B · created" in page
    assert "#fff3b0" in page  # pending's colour
    assert admin_client.get("/admin/tasks_app/workflow/").status_code == 200
    assert admin_client.get(f"/admin/tasks_app/workflow/{workflow.pk}/change/").status_code == 200

    admin_client.post(
        "/admin/tasks_app/workflowrun/", {"action": "cancel", "_selected_action": [workflow_run.pk]}
    )
    assert WorkflowRun.objects.get(pk=workflow_run.pk).state == "cancelled"


def test_workflow_form_refuses_a_cycle(admin_client, task) -> None:
    from tasks_app.models import Workflow

    steps = json.dumps(
        [{"key": "A", "task": "noop", "depends_on": ["B"]}, {"key": "B", "task": "noop", "depends_on": ["A"]}]
    )
    response = admin_client.post("/admin/tasks_app/workflow/add/", {"name": "loop", "steps": steps})
    assert "cycle" in response.content.decode()
    assert not Workflow.objects.exists()


def test_firing_a_workflow_schedule_from_the_admin_starts_a_workflow_run(admin_client, task, broker) -> None:
    from tasks_app.models import Schedule, Workflow, WorkflowRun
    from tasks_app.models.workflows import check_steps

    workflow = Workflow.objects.create(name="w", steps=check_steps([{"key": "A", "task": "noop"}], {"noop"}))
    schedule = Schedule.objects.create(workflow=workflow, interval_seconds=60)

    admin_client.post("/admin/tasks_app/schedule/", {"action": "fire_now", "_selected_action": [schedule.pk]})

    assert WorkflowRun.objects.filter(workflow=workflow).count() == 1


def test_a_schedule_set_aside_by_the_scheduler_shows_why_and_its_pages_render(admin_client, task) -> None:
    from tasks_app.models import Schedule

    schedule = Schedule.objects.create(task=task, interval_seconds=60)
    Schedule.objects.filter(pk=schedule.pk).update(interval_seconds=None, cron="0 0 30 2 *", timezone="X/Y")
    scheduling.fire_due()

    for url in ["/admin/tasks_app/schedule/", f"/admin/tasks_app/schedule/{schedule.pk}/change/"]:
        response = admin_client.get(url)
        assert response.status_code == 200, url
        assert "unknown time zone" in response.content.decode(), url


@pytest.fixture
def staff_with(client, db):
    """A staff user signed in to the admin with just the permissions named."""
    from django.contrib.auth.models import Permission

    def make(*codenames: str):
        user = User.objects.create_user("staff", password="pw", is_staff=True)
        user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
        client.force_login(user)
        return client

    return make


ALL_BUT_ADD_RUN = [
    f"{verb}_{model}"
    for model in ("task", "run", "schedule", "workflow", "workflowrun")
    for verb in ("view", "add", "change", "delete")
    if (verb, model) != ("add", "run")
]


def test_admin_actions_that_make_runs_need_add_run(staff_with, task, broker) -> None:
    from tasks_app.models import Schedule, Workflow, WorkflowRun

    schedule = Schedule.objects.create(task=task, interval_seconds=60, enabled=False)
    step = {"key": "a", "task": "noop", "kwargs": {}, "depends_on": [], "trigger_rule": "all_success"}
    workflow = Workflow.objects.create(name="flow", steps=[step])
    client = staff_with(*ALL_BUT_ADD_RUN)

    client.post("/admin/tasks_app/task/", {"action": "run_now", "_selected_action": [task.pk]})
    client.post("/admin/tasks_app/schedule/", {"action": "fire_now", "_selected_action": [schedule.pk]})
    client.post("/admin/tasks_app/schedule/", {"action": "resume", "_selected_action": [schedule.pk]})
    client.post("/admin/tasks_app/workflow/", {"action": "start", "_selected_action": [workflow.pk]})
    edit = client.post(
        f"/admin/tasks_app/schedule/{schedule.pk}/change/",
        {"task": task.pk, "cron": "* * * * * *", "timezone": "UTC", "kwargs": "{}", "misfire_policy": "skip",
         "enabled": "on"},
    )  # fmt: skip

    assert edit.status_code == 403
    assert not Run.objects.exists() and not WorkflowRun.objects.exists()
    schedule.refresh_from_db()
    assert (schedule.enabled, schedule.cron, schedule.interval_seconds) == (False, "", 60)
    page = client.get("/admin/tasks_app/task/").content.decode()
    assert "run_now" not in page  # not offered


def test_admin_run_now_with_add_run_makes_a_run(staff_with, task, broker) -> None:
    client = staff_with("view_task", "add_run")
    client.post("/admin/tasks_app/task/", {"action": "run_now", "_selected_action": [task.pk]})
    assert Run.objects.filter(task=task, trigger="manual").count() == 1


def test_the_admin_login_locks_out_after_repeated_failures(client, db, settings) -> None:
    User.objects.create_superuser("boss", password="right-password")
    login = "/admin/login/?next=/admin/"
    for _ in range(settings.AXES_FAILURE_LIMIT):
        failed = client.post(login, {"username": "boss", "password": "wrong"}, REMOTE_ADDR="203.0.113.7")
        assert failed.status_code in (200, 429)

    locked = client.post(login, {"username": "boss", "password": "right-password"}, REMOTE_ADDR="203.0.113.7")
    assert locked.status_code == 429
    assert client.get("/admin/", REMOTE_ADDR="203.0.113.7").status_code == 302  # not signed in

    # Locked by name and address together: the same user from elsewhere still signs in.
    elsewhere = client.post(
        login, {"username": "boss", "password": "right-password"}, REMOTE_ADDR="198.51.100.2"
    )
    assert elsewhere.status_code == 302


def test_the_admin_never_shows_an_api_token_in_clear(admin_client, db) -> None:
    from rest_framework.authtoken.models import Token

    other = User.objects.create_user("robot", password="pw")
    key = Token.objects.create(user=other).key
    pages = [
        "/admin/",
        "/admin/tasks_app/apitoken/",
        f"/admin/tasks_app/apitoken/{other.pk}/change/",
        f"/admin/tasks_app/apitoken/{other.pk}/delete/",
    ]
    for url in pages:
        response = admin_client.get(url)
        assert response.status_code == 200, url
        assert key not in response.content.decode(), url
    assert admin_client.get("/admin/authtoken/tokenproxy/").status_code == 404  # DRF's own, unregistered
    assert key[:4] in admin_client.get("/admin/tasks_app/apitoken/").content.decode()

    admin_client.post(f"/admin/tasks_app/apitoken/{other.pk}/delete/", {"post": "yes"})  # revoked
    assert not Token.objects.filter(key=key).exists()
    history = admin_client.get("/admin/").content.decode()
    assert key not in history


def test_admin_controls_on_rows_that_cannot_fire_say_why(admin_client, task, make_task, broker) -> None:
    from tasks_app.models import Schedule, Task, Workflow, WorkflowRun

    schedule = Schedule.objects.create(task=task, interval_seconds=60)
    Schedule.objects.filter(pk=schedule.pk).update(kwargs=[1, 2])  # written past validation
    step = {"key": "a", "task": "soon-renamed", "kwargs": {}, "depends_on": [], "trigger_rule": "all_success"}
    renamed = make_task(name="soon-renamed")
    workflow = Workflow.objects.create(name="flow", steps=[step])
    workflow_run = WorkflowRun.objects.create(workflow=workflow, steps=[step], state="failed")
    Run.objects.create(task=renamed, workflow_run=workflow_run, step="a", state="failed", finished_at=T)
    Task.objects.filter(pk=renamed.pk).update(name="renamed-by-sql")  # the steps name nothing now

    for url, action, pk in [("schedule", "fire_now", schedule.pk), ("workflow", "start", workflow.pk)]:
        data = {"action": action, "_selected_action": [pk]}
        page = admin_client.post(f"/admin/tasks_app/{url}/", data, follow=True).content.decode()
        assert "no longer exist" in page or "kwargs must be" in page, url
    assert Run.objects.count() == 1
    # A retry is a new attempt of the step's own run: it still has its task.
    data = {"action": "retry", "_selected_action": [workflow_run.pk]}
    admin_client.post("/admin/tasks_app/workflowrun/", data, follow=True)
    assert Run.objects.get().state == RunState.PENDING


def test_an_admin_edit_is_checked_against_the_row_as_it_is_now(admin_client, api, task) -> None:
    from tasks_app.models import Schedule
    from tests.test_api_versions import _Form

    schedule = Schedule.objects.create(task=task, cron="* * * * *")
    form = _Form()
    form.feed(admin_client.get(f"/admin/tasks_app/schedule/{schedule.pk}/change/").content.decode())
    # Meanwhile the API switches it to an interval:
    assert (
        api.patch(f"/api/v1/schedules/{schedule.pk}/", {"interval_seconds": 60}, format="json").status_code
        == 200
    )

    page = admin_client.post(
        f"/admin/tasks_app/schedule/{schedule.pk}/change/", {**form.values, "cron": "*/5 * * * *"}
    )

    assert page.status_code == 200  # the form again, with the problem
    assert "exactly one of cron" in page.content.decode()
    schedule.refresh_from_db()
    assert (schedule.cron, schedule.interval_seconds) == ("", 60)


def test_renaming_in_the_admin_a_task_that_workflows_name_is_refused(admin_client, task) -> None:
    from tasks_app.models import Task, Workflow
    from tests.test_api_versions import _Form

    step = {"key": "a", "task": "noop", "kwargs": {}, "depends_on": [], "trigger_rule": "all_success"}
    Workflow.objects.create(name="nightly", steps=[step])
    form = _Form()
    form.feed(admin_client.get(f"/admin/tasks_app/task/{task.pk}/change/").content.decode())

    page = admin_client.post(f"/admin/tasks_app/task/{task.pk}/change/", {**form.values, "name": "renamed"})

    assert page.status_code == 200 and "nightly" in page.content.decode()
    assert Task.objects.get(pk=task.pk).name == "noop"


def test_the_admin_deletes_no_task_with_unfinished_runs_as_the_api_does(admin_client, task, make_run) -> None:
    make_run(task, RunState.PENDING)

    page = admin_client.post(f"/admin/tasks_app/task/{task.pk}/delete/", {"post": "yes"}).content.decode()
    assert "1 unfinished run(s) of noop" in page  # the confirmation page says why not
    data = {"action": "delete_selected", "post": "yes", "_selected_action": [task.pk]}
    admin_client.post("/admin/tasks_app/task/", data, follow=True)

    assert Task.objects.filter(pk=task.pk).exists()


def test_the_admin_deletes_a_task_whose_runs_have_finished(admin_client, task, make_run) -> None:
    make_run(task, RunState.COMPLETED)
    data = {"action": "delete_selected", "post": "yes", "_selected_action": [task.pk]}
    admin_client.post("/admin/tasks_app/task/", data, follow=True)
    assert not Task.objects.filter(pk=task.pk).exists()


def test_the_admins_bulk_delete_of_schedules_leaves_no_mirror(admin_client, api, task) -> None:
    ids = [
        api.post("/api/v1/schedules/", {"task": "noop", "interval_seconds": 60 + n}, format="json").data["id"]
        for n in range(2)
    ]
    mirrors = list(Schedule.objects.filter(pk__in=ids).values_list("periodic_task_id", flat=True))
    assert PeriodicTask.objects.filter(pk__in=mirrors).count() == 2

    data = {"action": "delete_selected", "post": "yes", "_selected_action": ids}
    admin_client.post("/admin/tasks_app/schedule/", data, follow=True)

    assert not Schedule.objects.filter(pk__in=ids).exists()
    assert not PeriodicTask.objects.filter(pk__in=mirrors).exists()


def test_the_admin_deletes_no_workflow_with_a_running_run(admin_client, api, task, broker) -> None:
    api.post("/api/v1/workflows/", {"name": "flow", "steps": [{"key": "a", "task": "noop"}]}, format="json")
    started = api.post("/api/v1/workflows/flow/runs/").data["id"]
    workflow = Workflow.objects.get(name="flow")

    data = {"action": "delete_selected", "post": "yes", "_selected_action": [workflow.pk]}
    admin_client.post("/admin/tasks_app/workflow/", data, follow=True)

    assert Workflow.objects.filter(pk=workflow.pk).exists()
    page = admin_client.get(f"/admin/tasks_app/workflowrun/{started}/change/").content.decode()
    assert "started" in page and "owner" in page  # its history, the first event
