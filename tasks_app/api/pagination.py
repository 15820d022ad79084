from __future__ import annotations

from typing import Any

from rest_framework.exceptions import NotFound
from rest_framework.pagination import Cursor, CursorPagination

BIGINT_MAX = 2**63 - 1


class NewestFirstCursorPagination(CursorPagination):
    ordering = "-id"
    page_size_query_param = "page_size"
    max_page_size = 500

    def decode_cursor(self, request: Any) -> Cursor | None:
        # DRF checks a cursor's offset and direction but passes its position straight into
        # the query: a forged one ("p=abc") reached the database as an id.
        cursor = super().decode_cursor(request)
        if cursor is not None and cursor.position is not None:
            position = cursor.position
            if not (
                position.isascii() and position.lstrip("-").isdigit() and abs(int(position)) <= BIGINT_MAX
            ):
                raise NotFound(self.invalid_cursor_message)
        return cursor


class OldestFirstCursorPagination(NewestFirstCursorPagination):
    ordering = "id"
