from __future__ import annotations

import pytest

from tasks_app.lifecycle import RunState
from tasks_app.models import Run, Task

URL = "/api/v1/tasks/"

TASK_FIELDS = {
    "name", "handler", "description", "args", "kwargs", "queue", "priority", "max_retries",
    "retry_backoff", "retry_backoff_max", "retry_jitter", "soft_time_limit", "time_limit",
    "concurrency_policy", "enabled", "online_workers", "created_at", "updated_at",
}  # fmt: skip


def test_create_task_returns_the_contracts_representation(api) -> None:
    response = api.post(
        URL,
        {"name": "nightly.report", "handler": "builtin.noop", "kwargs": {"day": "mon"}, "max_retries": 2},
        format="json",
    )

    assert response.status_code == 201, response.data
    assert set(response.data) == TASK_FIELDS
    assert response.data["kwargs"] == {"day": "mon"}
    assert response.data["created_at"].endswith("Z") or "+" in response.data["created_at"]
    assert Task.objects.get(name="nightly.report").max_retries == 2


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"handler": "builtin.noop"}, "name"),
        ({"name": "x"}, "handler"),
        ({"name": "x", "handler": "os.system"}, "handler"),
        ({"name": "has space", "handler": "builtin.noop"}, "name"),
        ({"name": "x", "handler": "builtin.noop", "args": {"a": 1}}, "args"),
        ({"name": "x", "handler": "builtin.noop", "kwargs": [1]}, "kwargs"),
        ({"name": "x", "handler": "builtin.noop", "priority": 10}, "priority"),
        ({"name": "x", "handler": "builtin.noop", "max_retries": -1}, "max_retries"),
        ({"name": "x", "handler": "builtin.noop", "retry_backoff": -1}, "retry_backoff"),
        ({"name": "x", "handler": "builtin.noop", "concurrency_policy": "maybe"}, "concurrency_policy"),
        ({"name": "x", "handler": "builtin.noop", "soft_time_limit": 10, "time_limit": 5}, "soft_time_limit"),
        ({"name": "x", "handler": "builtin.noop", "time_limit": 10**9}, "time_limit"),
        (
            {"name": "x", "handler": "builtin.noop", "retry_backoff": 50, "retry_backoff_max": 5},
            "retry_backoff",
        ),
    ],
)
def test_invalid_task_is_a_400_naming_the_field(api, body, field) -> None:
    response = api.post(URL, body, format="json")

    assert response.status_code == 400
    assert field in response.data
    assert not Task.objects.exists()


def test_duplicate_task_name_is_a_400(api, make_task) -> None:
    make_task(name="dup")
    response = api.post(URL, {"name": "dup", "handler": "builtin.noop"}, format="json")
    assert response.status_code == 400
    assert "name" in response.data


def test_tasks_are_read_and_listed_by_name(api, make_task) -> None:
    make_task(name="a.one")
    make_task(name="b.two")

    listed = api.get(URL)
    one = api.get(URL + "a.one/")

    assert listed.status_code == 200
    assert {"results", "next", "previous"} <= set(listed.data)
    assert sorted(t["name"] for t in listed.data["results"]) == ["a.one", "b.two"]
    assert one.status_code == 200
    assert one.data["name"] == "a.one"
    assert api.get(URL + "missing/").status_code == 404


def test_patch_changes_only_the_given_fields(api, make_task) -> None:
    make_task(name="t", queue="default", max_retries=1)

    response = api.patch(URL + "t/", {"max_retries": 4, "enabled": False}, format="json")

    assert response.status_code == 200
    task = Task.objects.get(name="t")
    assert (task.max_retries, task.enabled, task.queue) == (4, False, "default")


def test_patch_with_invalid_value_changes_nothing(api, make_task) -> None:
    make_task(name="t", time_limit=10)
    response = api.patch(URL + "t/", {"soft_time_limit": 20}, format="json")
    assert response.status_code == 400
    assert "soft_time_limit" in response.data
    assert Task.objects.get(name="t").soft_time_limit is None


def test_delete_task_without_unfinished_runs(api, make_task, make_run) -> None:
    task = make_task(name="t")
    make_run(task, RunState.COMPLETED)
    assert api.delete(URL + "t/").status_code == 204
    assert not Task.objects.exists()
    assert not Run.objects.exists()


def test_delete_task_with_unfinished_runs_is_a_409(api, make_task, make_run) -> None:
    task = make_task(name="t")
    make_run(task, RunState.RUNNING)
    response = api.delete(URL + "t/")
    assert response.status_code == 409
    assert "unfinished" in response.data["detail"]
    assert Task.objects.filter(name="t").exists()


def test_put_is_not_offered(api, make_task) -> None:
    make_task(name="t")
    assert api.put(URL + "t/", {"name": "t", "handler": "builtin.noop"}, format="json").status_code == 405


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", URL, {"name": "x", "handler": "builtin.noop"}),
        ("patch", URL + "t/", {"enabled": False}),
        ("delete", URL + "t/", None),
    ],
)
def test_writes_need_the_model_permission(reader, anonymous, make_task, method, path, body) -> None:
    make_task(name="t")
    assert getattr(anonymous, method)(path, body, format="json").status_code == 401
    assert getattr(reader, method)(path, body, format="json").status_code == 403
    task = Task.objects.get(name="t")
    assert task.enabled and Task.objects.count() == 1


def test_reads_need_a_signed_in_user(reader, anonymous, make_task) -> None:
    make_task(name="t")
    assert anonymous.get(URL).status_code == 401
    assert anonymous.get(URL + "t/").status_code == 401
    assert reader.get(URL + "t/").status_code == 200
