"""Hostile and malformed input: each a clear 4xx, and nothing written."""

from __future__ import annotations

import json

import pytest

from tasks_app.models import Run

URL = "/api/v1/runs/"


def nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def post_raw(client, body: str):
    return client.generic("POST", URL, body, content_type="application/json")


def test_body_over_the_limit_is_a_413(api, task, settings) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = post_raw(api, json.dumps({"task": "noop", "kwargs": {"x": "y" * 2000}}))
    assert response.status_code == 413
    assert not Run.objects.exists()


@pytest.mark.parametrize("depth", [33, 40, 5000])
def test_json_nested_too_deep_is_a_400(api, task, depth) -> None:
    body = (
        json.dumps({"task": "noop", "kwargs": nested(depth - 1)})
        if depth < 900
        else '{"a":' * depth + "1" + "}" * depth
    )
    response = post_raw(api, body)
    assert response.status_code == 400
    assert "nested deeper than 32" in response.data["detail"]
    assert not Run.objects.exists()


def test_json_nested_within_the_limit_is_stored(api, task, broker) -> None:
    response = post_raw(api, json.dumps({"task": "noop", "kwargs": nested(31)}))
    assert response.status_code == 201
    assert Run.objects.get().kwargs == nested(31)


@pytest.mark.parametrize("body", ['{"task": "noop", "kwargs": {"x": NaN}}', "[1, 2]", '"noop"', "", "{"])
def test_malformed_json_is_a_400(api, task, body) -> None:
    assert post_raw(api, body).status_code == 400
    assert not Run.objects.exists()


def test_submissions_are_throttled_per_user(api, reader, task, broker, settings) -> None:
    settings.SUBMIT_THROTTLE_RATE = "2/min"
    codes = [api.post(URL, {"task": "noop"}, format="json").status_code for _ in range(3)]
    assert codes == [201, 201, 429]
    assert api.get(URL).status_code == 200  # reads are not throttled
    assert Run.objects.count() == 2
