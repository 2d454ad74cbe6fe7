"""Small helpers for the API's shapes (API.md "Shapes")."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import overload


@overload
def rfc3339(ts: float) -> str: ...
@overload
def rfc3339(ts: None) -> None: ...
@overload
def rfc3339(ts: float | None) -> str | None: ...


def rfc3339(ts: float | None) -> str | None:
    """A Unix time as an RFC 3339 UTC string (`2026-01-31T12:00:00Z`); None stays None."""
    if ts is None:
        return None
    text = datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")
