from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import User
from django_celery_beat.models import PeriodicTask

from tasks_app import scheduling
from tasks_app.lifecycle import RunState
from tasks_app.models import Run, RunEvent, RunLog, Schedule, Task, Workflow

T = "2026-01-01T00:00:00Z"


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
    assert "No handler named &#x27;os.system&#x27; is registered in this process" in response.content.decode()
    assert not Task.objects.filter(name="evil").exists()


def _task_form(admin_client, task: Task) -> dict[str, str]:
    from tests.test_api_versions import _Form

    form = _Form()
    form.feed(admin_client.get(f"/admin/tasks_app/task/{task.pk}/change/").content.decode())
    return form.values


def test_the_admin_shows_a_handler_this_process_does_not_know_and_keeps_it(admin_client, make_task) -> None:
    task = make_task(name="report", handler="reports.build")  # registered on the workers only

    page = admin_client.get(f"/admin/tasks_app/task/{task.pk}/change/").content.decode()
    values = _task_form(admin_client, task)
    saved = admin_client.post(f"/admin/tasks_app/task/{task.pk}/change/", {**values, "priority": "5"})

    assert "reports.build (not registered in this process)" in page
    assert values["handler"] == "reports.build"  # selected, not the first registered handler
    assert saved.status_code == 302
    task.refresh_from_db()
    assert (task.handler, task.priority) == ("reports.build", 5)


def test_the_admin_refuses_to_set_a_handler_this_process_does_not_know(admin_client, make_task) -> None:
    task = make_task(name="report", handler="reports.build")
    values = _task_form(admin_client, task)

    page = admin_client.post(
        f"/admin/tasks_app/task/{task.pk}/change/", {**values, "handler": "reports.other", "priority": "5"}
    )

    assert page.status_code == 200  # the form again, with the problem
    assert "No handler named &#x27;reports.other&#x27; is registered in this process" in page.content.decode()
    task.refresh_from_db()
    assert (task.handler, task.priority) == ("reports.build", 0)


def test_the_admin_offers_no_unknown_handler_to_a_task_whose_handler_is_registered(
    admin_client, task
) -> None:
    values = _task_form(admin_client, task)
    admin_client.post(f"/admin/tasks_app/task/{task.pk}/change/", {**values, "handler": "reports.build"})
    assert Task.objects.get(pk=task.pk).handler == "builtin.noop"
    assert (
        "not registered in this process"
        not in admin_client.get("/admin/tasks_app/task/add/").content.decode()
    )


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


BEAT = "/admin/django_celery_beat"


def _mirrored(api, **body) -> Schedule:
    response = api.post("/api/v1/schedules/", {"task": "noop", **body}, format="json")
    assert response.status_code == 201, response.data
    return Schedule.objects.select_related("periodic_task").get(pk=response.data["id"])


def test_a_mirror_in_beats_admin_can_only_be_viewed_and_links_to_its_schedule(
    admin_client, api, task
) -> None:
    schedule = _mirrored(api, cron="*/10 * * * * *", timezone="Europe/Berlin")
    mirror = schedule.periodic_task

    page = admin_client.get(f"{BEAT}/periodictask/{mirror.pk}/change/").content.decode()
    edit = admin_client.post(
        f"{BEAT}/periodictask/{mirror.pk}/change/",
        {
            "name": mirror.name,
            "task": mirror.task,
            "crontab": mirror.crontab_id,
            "args": "[]",
            "kwargs": "{}",
        },
    )  # "enabled" unticked
    delete = admin_client.post(f"{BEAT}/periodictask/{mirror.pk}/delete/", {"post": "yes"})

    assert f'href="/admin/tasks_app/schedule/{schedule.pk}/change/"' in page
    assert f"Mirror of schedule {schedule.pk}: cron */10 * * * * * (Europe/Berlin): Every 10 seconds" in page
    assert 'name="_save"' not in page  # view only
    assert (edit.status_code, delete.status_code) == (403, 403)
    listed = admin_client.get(f"{BEAT}/periodictask/").content.decode()
    assert f'href="/admin/tasks_app/schedule/{schedule.pk}/change/"' in listed
    mirror.refresh_from_db()
    assert mirror.enabled is True
    assert Schedule.objects.get(pk=schedule.pk).enabled is True


@pytest.mark.parametrize(
    ("body", "model", "row"),
    [
        ({"cron": "*/10 * * * * *"}, "crontabschedule", "crontab_id"),
        ({"interval_seconds": 30}, "intervalschedule", "interval_id"),
        ({"run_at": "2030-01-01T00:00:00Z"}, "clockedschedule", "clocked_id"),
    ],
)
def test_the_beat_rows_a_mirror_uses_can_only_be_viewed(admin_client, api, task, body, model, row) -> None:
    mirror = _mirrored(api, **body).periodic_task
    pk = getattr(mirror, row)

    page = admin_client.get(f"{BEAT}/{model}/{pk}/change/")
    delete = admin_client.post(f"{BEAT}/{model}/{pk}/delete/", {"post": "yes"})
    bulk = admin_client.post(
        f"{BEAT}/{model}/", {"action": "delete_selected", "post": "yes", "_selected_action": [pk]}
    )

    assert page.status_code == 200 and 'name="_save"' not in page.content.decode()
    assert delete.status_code == 403
    assert bulk.status_code == 403
    assert PeriodicTask.objects.filter(pk=mirror.pk).exists()


def test_beats_bulk_actions_leave_mirrors_alone_and_say_where_to_act(admin_client, api, task) -> None:
    from django_celery_beat.models import IntervalSchedule

    schedule = _mirrored(api, interval_seconds=60)
    every = IntervalSchedule.objects.create(every=10, period="seconds")
    plain = PeriodicTask.objects.create(name="plain", task="celery.backend_cleanup", interval=every)
    selected = [schedule.periodic_task_id, plain.pk]

    page = admin_client.post(
        f"{BEAT}/periodictask/", {"action": "disable_tasks", "_selected_action": selected}, follow=True
    ).content.decode()

    assert PeriodicTask.objects.get(pk=plain.pk).enabled is False  # beat's own entry: as before
    assert PeriodicTask.objects.get(pk=schedule.periodic_task_id).enabled is True
    assert f'href="/admin/tasks_app/schedule/{schedule.pk}/change/"' in page
    assert (
        admin_client.get(f"{BEAT}/periodictask/{plain.pk}/change/").content.decode().count('name="_save"')
        == 1
    )


def test_beats_admin_adds_no_entry_posing_as_a_mirror(admin_client, db) -> None:
    from django_celery_beat.models import IntervalSchedule

    every = IntervalSchedule.objects.create(every=10, period="seconds")
    page = admin_client.post(
        f"{BEAT}/periodictask/add/",
        {"name": "fake", "task": "tasks_app.schedule", "interval": every.pk, "args": "[]", "kwargs": "{}",
         "enabled": "on"},
    )  # fmt: skip

    assert page.status_code == 200 and "names the mirrors of platform schedules" in page.content.decode()
    assert not PeriodicTask.objects.filter(name="fake").exists()
