"""The run lists use the indexes their code names (tasks_app/models/runs.py, api/filters.py,
admin/runs.py): MariaDB's EXPLAIN of the SQL each request makes, on a history large enough
that a full scan or a sort would show (bench/history.py times them at 10,000,000 runs).

The plans are MariaDB's: on SQLite the module is skipped. The history is made once for the
module, committed (ANALYZE TABLE commits, and the planner needs its statistics), and removed
afterwards.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from tasks_app.choices import RunState, RunTrigger
from tasks_app.models import Run, Schedule, Task, Workflow, WorkflowRun

pytestmark = pytest.mark.skipif(
    connection.vendor != "mysql",
    reason="the plans checked are MariaDB's (EXPLAIN); SQLite plans its own way",
)

S = RunState
RUNS = 20_000
NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
STEP = dt.timedelta(seconds=60)  # run n created n minutes after the first: 2 weeks in all
URL = "/api/v1/runs/"


@pytest.fixture(scope="module")
def history(django_db_setup: Any, django_db_blocker: Any) -> Iterator[dict[str, Any]]:
    """20,000 runs: 19 common tasks and a rare one (1 run in 200), a schedule firing 1 in 100,
    workflow runs of 5 steps; 5 % failed, a paused run in 500, the others completed."""
    with django_db_blocker.unblock():
        tasks = [Task.objects.create(name=f"plan-{i:02d}", handler="builtin.noop") for i in range(20)]
        schedule = Schedule.objects.create(task=tasks[0], interval_seconds=60)
        workflow = Workflow.objects.create(name="plan-flow")
        workflow_runs = WorkflowRun.objects.bulk_create(
            WorkflowRun(workflow=workflow, created_at=NOW) for _ in range(RUNS // 100)
        )
        start = NOW - RUNS * STEP
        runs = []
        for n in range(RUNS):
            created = start + n * STEP
            state = S.PAUSED if n % 500 == 3 else S.FAILED if n % 20 == 11 else S.COMPLETED
            fields: dict[str, Any] = {}
            if n % 100 < 5:
                fields.update(
                    trigger=RunTrigger.WORKFLOW, workflow_run=workflow_runs[n // 100], step=f"s{n % 100}"
                )
            elif n % 100 == 50:
                fields.update(trigger=RunTrigger.SCHEDULE, schedule=schedule, scheduled_for=created)
            runs.append(
                Run(
                    task=tasks[19] if n % 200 == 7 else tasks[n % 19],
                    state=state,
                    created_at=created,
                    state_changed_at=created,
                    finished_at=None if state == S.PAUSED else created + dt.timedelta(seconds=1),
                    **fields,
                )
            )
        Run.objects.bulk_create(runs, batch_size=2000)  # the trigger writes each birth event
        with connection.cursor() as cursor:
            for table in ("tasks_app_run", "tasks_app_runevent"):
                cursor.execute(f"ANALYZE TABLE {table}")
                cursor.fetchall()
        yield {
            "tasks": tasks,
            "schedule": schedule,
            "workflow_run": workflow_runs[len(workflow_runs) // 2],
            "start": start,
        }
        with connection.cursor() as cursor:
            ids = ", ".join(str(task.pk) for task in tasks)
            cursor.execute(
                "DELETE e FROM tasks_app_runevent e JOIN tasks_app_run r ON r.id = e.run_id "
                f"WHERE r.task_id IN ({ids})"
            )
            cursor.execute(f"DELETE FROM tasks_app_run WHERE task_id IN ({ids})")
        WorkflowRun.objects.filter(workflow=workflow).delete()
        workflow.delete()
        schedule.delete()
        Task.objects.filter(pk__in=[task.pk for task in tasks]).delete()


@pytest.fixture
def api(db: Any) -> APIClient:
    user = User.objects.create_superuser("planner", password="pw")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


@pytest.fixture
def admin(db: Any) -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("plan-boss", password="pw"))
    return client


def plans(client: Any, url: str, data: dict[str, Any] | None = None, table: str = "tasks_app_run") -> list:
    """The EXPLAIN rows of each query of `table`'s rows the request made: not a count, nor a
    date range's seeks (checked apart)."""
    with CaptureQueriesContext(connection) as captured:
        assert client.get(url, data).status_code == 200
    found = []
    for query in captured.captured_queries:
        sql = query["sql"]
        if not sql.startswith("SELECT") or f"FROM `{table}`" not in sql:
            continue
        if "COUNT(" in sql or "ORDER BY `tasks_app_run`.`created_at`" in sql:
            continue
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN " + sql)
            columns = [column[0] for column in cursor.description]
            rows = [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
        found.append(rows)
    assert found, f"no page query of {table} in {url} {data}"
    return found


def assert_walks(rows: list[dict[str, Any]], key: str, table: str = "tasks_app_run") -> None:
    """`table` is read first, through `key`, in the page's order: no sort, no temporary table."""
    assert rows[0]["table"] == table, rows  # the joined task is looked up per run, not scanned first
    mine = rows[0]
    assert mine["key"] == key, [
        (row["table"], row["type"], row["key"], row["rows"], row["Extra"]) for row in rows
    ]
    assert mine["type"] != "ALL", rows
    extra = " ".join(str(row["Extra"] or "") for row in rows)
    assert "filesort" not in extra and "temporary" not in extra, rows


def test_runs_list_first_page_walks_the_primary_key(history, api) -> None:
    for rows in plans(api, URL):
        assert_walks(rows, "PRIMARY")


def test_runs_list_next_page_walks_the_primary_key_from_the_cursor(history, api) -> None:
    following = api.get(URL).data["next"]

    for rows in plans(api, following):
        assert_walks(rows, "PRIMARY")
        assert rows[0]["type"] == "range", rows


def test_runs_list_by_task_uses_run_task(history, api) -> None:
    for rows in plans(api, URL, {"task": "plan-19"}):
        assert rows[0]["table"] == "tasks_app_task"  # the name, a constant: then the task's runs
        assert rows[1]["key"] == "run_task", rows
        assert "filesort" not in str(rows[1]["Extra"]), rows


def test_runs_list_by_state_uses_run_state(history, api) -> None:
    for rows in plans(api, URL, {"state": "failed"}):
        assert_walks(rows, "run_state")


def test_runs_list_by_a_rare_state_reads_only_its_runs(history, api) -> None:
    for rows in plans(api, URL, {"state": "paused"}):
        # Its 40 runs through either index of states, sorted if need be: never the table.
        assert rows[0]["key"] in ("run_state", "run_state_due"), rows
        assert int(rows[0]["rows"]) < 100, rows


def test_runs_list_by_schedule_uses_run_schedule(history, api) -> None:
    for rows in plans(api, URL, {"schedule": history["schedule"].pk}):
        assert_walks(rows, "run_schedule")


def test_runs_list_by_workflow_run_uses_run_workflow_step(history, api) -> None:
    for rows in plans(api, URL, {"workflow_run": history["workflow_run"].pk}):
        # A workflow run's few steps, sorted: no index orders them by id, none needs to.
        assert rows[0]["key"] == "run_workflow_step", rows
        assert rows[0]["type"] == "ref", rows


def test_runs_list_by_creation_range_walks_the_primary_key_between_id_bounds(history, api) -> None:
    start = history["start"]
    window = {
        "created_after": (start + 5000 * STEP).isoformat(),
        "created_before": (start + 6000 * STEP).isoformat(),
    }

    for rows in plans(api, URL, window):
        assert_walks(rows, "PRIMARY")
        assert rows[0]["type"] == "range", rows
        assert int(rows[0]["rows"]) < 2000, rows  # the range's runs and the skew's, not the table
    with CaptureQueriesContext(connection) as captured:
        api.get(URL, window)
    seeks = [
        q["sql"] for q in captured.captured_queries if "ORDER BY `tasks_app_run`.`created_at`" in q["sql"]
    ]
    assert len(seeks) == 2
    for sql in seeks:
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN " + sql)
            columns = [column[0] for column in cursor.description]
            plan = dict(zip(columns, cursor.fetchone(), strict=True))
        assert plan["key"] == "run_created_at", plan


def test_run_events_use_the_run_foreign_key_index(history, api) -> None:
    run = Run.objects.filter(task=history["tasks"][3]).order_by("pk")[100]

    for rows in plans(api, f"{URL}{run.pk}/events/", table="tasks_app_runevent"):
        assert rows[0]["key"].startswith("tasks_app_runevent_run_id"), rows
        assert "filesort" not in str(rows[0]["Extra"]), rows


def test_admin_run_list_walks_the_primary_key_without_counting_every_run(history, admin) -> None:
    with CaptureQueriesContext(connection) as captured:
        assert admin.get("/admin/tasks_app/run/").status_code == 200
    counts = [
        q["sql"] for q in captured.captured_queries if "COUNT(" in q["sql"] and "tasks_app_run" in q["sql"]
    ]
    assert counts and all("LIMIT 10001" in sql for sql in counts), counts  # capped, not COUNT(*) of all

    for rows in plans(admin, "/admin/tasks_app/run/"):
        assert_walks(rows, "PRIMARY")


def test_admin_run_list_filters_use_their_indexes(history, admin) -> None:
    for rows in plans(admin, "/admin/tasks_app/run/", {"state__exact": "failed"}):
        assert_walks(rows, "run_state")
    for rows in plans(admin, "/admin/tasks_app/run/", {"task__id__exact": history["tasks"][19].pk}):
        assert_walks(rows, "run_task")


def test_admin_run_list_shows_an_estimate_past_the_cap(history, admin, monkeypatch) -> None:
    from tasks_app.admin import runs

    monkeypatch.setattr(runs, "COUNT_CAP", 1000)

    page = admin.get("/admin/tasks_app/run/").context["cl"]

    assert 5_000 < page.result_count < 60_000  # EXPLAIN's estimate of the 20,000, not a count
    paginator = page.paginator
    number = paginator.num_pages + 1  # past the estimate: read all the same
    bottom = (number - 1) * paginator.per_page
    there = Run.objects.order_by("-id").values_list("pk", flat=True)[bottom : bottom + paginator.per_page]
    assert [run.pk for run in paginator.page(number).object_list] == list(there)
    assert admin.get("/admin/tasks_app/run/", {"p": "0"}).status_code in (200, 302)  # not a 500


def test_created_filters_keep_runs_inserted_out_of_their_creation_order(api, make_task, make_run) -> None:
    task = make_task(name="late-insert")
    elsewhere = make_run(task, created_at=NOW - dt.timedelta(days=3))
    # Created before `later` but inserted after it: within INSERT_SKEW of each other.
    later = make_run(task, created_at=NOW)
    earlier = make_run(task, created_at=NOW - dt.timedelta(seconds=30))

    inside = api.get(
        URL, {"task": "late-insert", "created_after": (NOW - dt.timedelta(minutes=1)).isoformat()}
    )
    before = api.get(
        URL, {"task": "late-insert", "created_before": (NOW - dt.timedelta(seconds=10)).isoformat()}
    )

    assert [r["id"] for r in inside.data["results"]] == [earlier.pk, later.pk]
    assert [r["id"] for r in before.data["results"]] == [earlier.pk, elsewhere.pk]
