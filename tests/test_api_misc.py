from __future__ import annotations

import json
import re

import pytest
from django.core.cache.backends.redis import RedisCache
from django.db import OperationalError

from tasks_app.api.errors import exception_handler
from tasks_app.api.throttles import SubmitThrottle
from tasks_app.lifecycle import RunState
from tasks_app.models import Run


def test_handlers_lists_the_registered_ones_with_docstrings(reader) -> None:
    response = reader.get("/api/v1/handlers/")

    assert response.status_code == 200
    by_name = {h["name"]: h for h in response.data["results"]}
    assert {"builtin.noop", "builtin.sleep", "builtin.http", "builtin.flaky"} <= set(by_name)
    assert "checkpoint" in by_name["builtin.sleep"]["description"]
    assert by_name["builtin.sleep"]["pausable"] is True
    assert by_name["builtin.noop"]["pausable"] is False
    assert response.data["next"] is None


def test_handlers_need_a_signed_in_user(anonymous) -> None:
    assert anonymous.get("/api/v1/handlers/").status_code == 401


def test_handlers_cannot_be_written(api) -> None:
    assert api.post("/api/v1/handlers/", {"name": "evil"}, format="json").status_code == 405


def test_openapi_schema_describes_the_api(reader) -> None:
    response = reader.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")

    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    for path in ["/api/v1/tasks/", "/api/v1/runs/", "/api/v1/runs/bulk/", "/api/v1/runs/{id}/cancel/"]:
        assert path in schema["paths"]


def test_openapi_schema_gives_bulk_a_plain_list_and_no_filters(reader) -> None:
    schema = reader.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    bulk = schema["paths"]["/api/v1/runs/bulk/"]["post"]

    for status in ("200", "201"):
        listed = bulk["responses"][status]["content"]["application/json"]["schema"]
        assert listed == {"type": "array", "items": {"$ref": "#/components/schemas/Run"}}
    assert [p["name"] for p in bulk.get("parameters", [])] == ["Idempotency-Key"]  # no list filters
    item = schema["components"]["schemas"]["RunSubmitRequest"]["properties"]
    assert "idempotency_key" in item


def test_openapi_schema_types_workflow_steps(reader) -> None:
    schemas = reader.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()["components"][
        "schemas"
    ]

    assert schemas["Workflow"]["properties"]["steps"] == {
        "type": "array",
        "items": {"$ref": "#/components/schemas/WorkflowStep"},
    }
    step = schemas["WorkflowStep"]
    assert set(step["properties"]) == {"key", "task", "kwargs", "depends_on", "trigger_rule"}
    assert set(step["required"]) == {"key", "task"}
    assert "ModelSerializer" not in json.dumps(schemas)  # no mixin's docstring as a description


def test_swagger_ui_is_served_without_any_network(reader) -> None:
    response = reader.get("/api/docs/")

    assert response.status_code == 200
    html = response.content.decode()
    assert "drf_spectacular_sidecar/swagger-ui-dist" in html
    # Every script and stylesheet from this server: no address with a host of its own. (Not a
    # search for "cdn" in the page: its CSRF token is random, and held "cdn" one run in ~500.)
    assets = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)
    assert assets and not [url for url in assets if re.match(r"(?:[a-z]+:)?//", url, re.IGNORECASE)]
    assert "unpkg.com" not in html and "jsdelivr" not in html and "cdnjs" not in html


def test_swagger_ui_assets_are_served_by_the_app(client) -> None:
    response = client.get("/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js")
    assert response.status_code == 200


def test_schema_and_docs_need_a_signed_in_user(anonymous) -> None:
    assert anonymous.get("/api/schema/").status_code == 401
    assert anonymous.get("/api/docs/").status_code == 401


def test_healthz_answers_without_credentials(client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_is_ok_when_database_and_broker_answer(client, db) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "broker": "ok"}


def test_readyz_is_503_when_the_broker_is_unreachable(client, db, settings) -> None:
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["broker"].startswith("error")
    assert response.json()["database"] == "ok"


RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"


@pytest.mark.parametrize(
    ("broker_url", "broker"), [(RABBITMQ, "ok"), ("amqp://guest:guest@127.0.0.1:1//", "error")]
)
def test_readyz_on_rabbitmq_checks_the_broker_and_redis_apart(
    client, db, settings, monkeypatch, broker_url, broker
) -> None:
    from scheduler_site.celery import app

    settings.BROKER_IS_REDIS = False
    monkeypatch.setattr(app.conf, "broker_url", broker_url)
    response = client.get("/readyz")
    assert response.status_code == (200 if broker == "ok" else 503)
    assert response.json()["broker"].startswith(broker)
    assert (response.json()["database"], response.json()["redis"]) == ("ok", "ok")


def test_database_errors_become_503_not_500() -> None:
    response = exception_handler(OperationalError(2003, "Can't connect"), {})
    assert response.status_code == 503
    assert "Can't connect" not in str(response.data)


def test_submission_while_redis_is_unreachable_is_a_503_and_writes_nothing(api, task, monkeypatch) -> None:
    # The submit throttle counts in Redis; a cache on a port nothing listens on is Redis gone.
    dead = RedisCache("redis://127.0.0.1:1/0", {})
    monkeypatch.setattr(SubmitThrottle, "cache", dead)

    response = api.post("/api/v1/runs/", {"task": "noop"}, format="json")

    assert response.status_code == 503
    assert response.json() == {"detail": "The broker is unreachable; try again shortly."}
    assert not Run.objects.exists()


def test_metrics_are_prometheus_text_for_a_user_with_view_run(reader, task, make_run) -> None:
    make_run(task, RunState.RUNNING, worker="w1@host")
    response = reader.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    assert 'celery_worker_tasks_active{hostname="w1@host"} 1.0' in response.content.decode()


def test_metrics_need_a_signed_in_user(anonymous) -> None:
    assert anonymous.get("/metrics").status_code == 401


@pytest.mark.parametrize("path", ["/api/v1/nothing/", "/api/v1/tasks/x/y/"])
def test_unknown_paths_are_404(reader, path) -> None:
    assert reader.get(path).status_code == 404


def test_openapi_schema_is_valid_and_complete(tmp_path) -> None:
    from django.core.management import call_command

    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yml"))
    assert "/api/v1/schedules/preview/" in (tmp_path / "schema.yml").read_text()


@pytest.mark.parametrize("path", ["/api/v1/runs/1.2/retry/", "/api/v1/nope", "/api/v1/runs/x/y/z/"])
def test_a_url_no_route_matches_is_a_json_404_under_the_api(reader, path) -> None:
    response = reader.post(path) if path.endswith("/retry/") else reader.get(path)
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"detail": "Not found."}
