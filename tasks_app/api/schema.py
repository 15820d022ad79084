"""The error answers of every operation, written into the OpenAPI schema.

drf-spectacular documents what a view returns when it succeeds; clients (and schemathesis'
status-code check) also need the errors docs/api.md promises: 400 for a bad field, 401/403,
404, 409 for a state conflict, 412 for a stale If-Match, 413 for a body too large, 414 for
a URL over the server's limit, 415 for a body that is not JSON, 429 when throttled, 503
while the database or broker is away.
"""

from __future__ import annotations

from typing import Any

ERROR = {
    "type": "object",
    "description": "`detail` says what is wrong; a 400 names each bad field instead, with its messages.",
    "properties": {"detail": {"type": "string"}},
    "additionalProperties": True,
}
WHY = {
    "400": "A field, filter or body is invalid; each bad field is named with its messages.",
    "401": "No credentials, or credentials that are not valid.",
    "403": "Signed in without the permission this needs.",
    "404": "No such object, or a cursor that is not one this API gave.",
    "409": "The object's state does not allow it; `detail` names that state.",
    "412": "If-Match names a version of the object that is no longer the current one.",
    "413": "The request body is over DATA_UPLOAD_MAX_MEMORY_SIZE.",
    "414": "The URL is longer than the server takes (gunicorn's limit_request_line).",
    "415": "The request body is not JSON.",
    "429": "Too many submissions; Retry-After says when to try again.",
    "503": "The database or the broker is unreachable; try again shortly.",
}
ALWAYS = ("401", "403", "414", "503")
# gunicorn answers an overlong request line itself, before Django sees it: a page, not JSON.
HTML = {"text/html": {"schema": {"type": "string"}}}
BY_METHOD = {
    "get": ("400", "404"),
    "post": ("400", "404", "409", "413", "415", "429"),
    "patch": ("400", "404", "409", "412", "413", "415"),
    "delete": ("404", "409", "412"),
}


def document_errors(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: add the error answers to each operation."""
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR
    body = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for operations in result.get("paths", {}).values():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            for code in (*ALWAYS, *BY_METHOD.get(method, ())):
                responses.setdefault(
                    code, {"description": WHY[code], "content": HTML if code == "414" else body}
                )
    return result
