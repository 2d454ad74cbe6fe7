"""Keyset paging: opaque cursors that stay stable while new rows arrive.

A list is ordered newest first by (time, id); the cursor of a page holds the
last row's (time, id), and the next page is every row strictly older. New rows
come before the first page and never shift a later one.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from smtpy.errors import InvalidInput

T = TypeVar("T")

DEFAULT_LIMIT = 50
MAX_LIMIT = 200


class Page(BaseModel, Generic[T]):
    """API.md's list shape."""

    model_config = ConfigDict(defer_build=True)

    data: list[T]
    has_more: bool
    next_cursor: str | None


def check_limit(limit: int | None) -> int:
    if limit is None:
        return DEFAULT_LIMIT
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit must be between 1 and {MAX_LIMIT}")
    return limit


def encode_cursor(at: float, row_id: int | str) -> str:
    raw = json.dumps([at, row_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, Any]:
    """(time, id) from a cursor; `InvalidInput` when it was not made by `encode_cursor`."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, row_id = json.loads(raw)
        if not isinstance(at, int | float) or not isinstance(row_id, int | str):
            raise ValueError
        return float(at), row_id
    except (ValueError, TypeError):
        raise InvalidInput(
            "cursor is not valid: pass the next_cursor of the previous page"
        ) from None


def keyset(time_column: str, id_column: str, cursor: str | None) -> tuple[str, dict[str, Any]]:
    """The SQL condition for rows after `cursor` (columns are fixed names, never user text)
    and its parameters; "" for the first page. Order by `time DESC, id DESC`."""
    if cursor is None:
        return "", {}
    at, row_id = decode_cursor(cursor)
    return (
        f"({time_column} < :cursor_at OR ({time_column} = :cursor_at AND {id_column} < :cursor_id))",
        {"cursor_at": at, "cursor_id": row_id},
    )


def page_of(rows: Sequence[T], limit: int, *, key: Any) -> Page[T]:
    """A page from up to `limit + 1` rows read newest first; `key(row)` is its (time, id)."""
    more = len(rows) > limit
    data = list(rows[:limit])
    cursor = encode_cursor(*key(data[-1])) if more and data else None
    return Page[T](data=data, has_more=more, next_cursor=cursor)
