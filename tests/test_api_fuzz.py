"""schemathesis against the OpenAPI schema: no 5xx, no response that breaks the schema."""

from __future__ import annotations

import json

import pytest
import schemathesis
from django.core.wsgi import get_wsgi_application
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.renderers import OpenApiJsonRenderer
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

raw = json.loads(OpenApiJsonRenderer().render(SchemaGenerator().get_schema(request=None, public=True)))
schema = schemathesis.openapi.from_dict(raw)
schema.app = get_wsgi_application()


@pytest.fixture
def token(transactional_db, owner, task, broker):
    from rest_framework.authtoken.models import Token

    return Token.objects.get_or_create(user=owner)[0].key


@schema.parametrize()
@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_api_answers_every_generated_request_without_a_5xx(case, token) -> None:
    case.call_and_validate(
        headers={"Authorization": f"Token {token}"},
        checks=[not_a_server_error, response_schema_conformance],
    )
