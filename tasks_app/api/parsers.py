from __future__ import annotations

import codecs
import math
from typing import Any

from django.conf import settings
from rest_framework import status
from rest_framework.exceptions import APIException, ParseError
from rest_framework.parsers import JSONParser
from rest_framework.utils import json

# MariaDB's JSON functions (and its CHECK on JSON columns) stop at 32 levels.
MAX_JSON_DEPTH = 32


class RequestTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The request body is too large."
    default_code = "request_too_large"


def depth_of(value: Any) -> int:
    depth, level = 0, [value]
    while level:
        depth += 1
        level = [
            child
            for item in level
            if isinstance(item, (dict, list))
            for child in (item.values() if isinstance(item, dict) else item)
            if isinstance(child, (dict, list))
        ]
    return depth


def unstorable_text(value: Any) -> str | None:
    """The first string (key or value) in `value` that is not valid UTF-8 text, if any: a
    lone surrogate ("\\ud800") parses, but no database column can hold it."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return item
    return None


def finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # 1e309: JSON has no infinity, and MariaDB's JSON columns refuse it
        raise ValueError(f"number {text} is out of range")
    return value


class BoundedJSONParser(JSONParser):
    """JSON of at most DATA_UPLOAD_MAX_MEMORY_SIZE bytes and MAX_JSON_DEPTH levels.

    DRF's parser reads the stream itself, past Django's body size check, and a deeply
    nested body would otherwise end in a RecursionError (a 500) or in a value the
    database refuses.
    """

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        request = (parser_context or {}).get("request")
        declared = int((request.META.get("CONTENT_LENGTH") if request else 0) or 0)
        if declared > limit:
            raise RequestTooLarge(f"The request body is {declared} bytes; at most {limit} are accepted.")
        raw = stream.read(limit + 1) if stream is not None else b""
        if len(raw) > limit:
            raise RequestTooLarge(f"The request body is over {limit} bytes.")
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        try:
            text = codecs.decode(raw, encoding)
            data = json.loads(
                text, parse_constant=json.strict_constant if self.strict else None, parse_float=finite_float
            )
        except RecursionError:
            raise ParseError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels.") from None
        except ValueError as exc:
            raise ParseError(f"JSON parse error - {exc}") from None
        if depth_of(data) > MAX_JSON_DEPTH:
            raise ParseError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels.")
        if unstorable_text(data) is not None:
            raise ParseError(
                "JSON parse error - a string holds a lone surrogate (\\ud800-\\udfff), not text."
            )
        return data
