"""What the mail pages share: how times, sizes and statuses are shown, and the acting user.

Imported by the page modules (overview, domains, aliases, messages, stats, events);
the names starting with `_` keep it out of the page discovery of `smtpy.web.app`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from fastapi import Request

from smtpy.accounts.actor import acting
from smtpy.accounts.roles import Permission, allows
from smtpy.config import Settings
from smtpy.store.db import Database
from smtpy.web.session import SignedIn
from smtpy.web.templating import templates

STATUSES = ("received", "delivered", "deferred", "bounced", "rejected", "discarded")
# How each status reads (the message log's event names are the store's words).
STATUS_LABELS = {
    "received": "received",
    "delivered": "delivered",
    "deferred": "deferred",
    "bounced": "bounced",
    "rejected": "rejected",
    "discarded": "discarded",
}


def when(value: float | None) -> str:
    """A Unix time as people read it here: UTC, to the second."""
    if value is None:
        return "—"
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def iso(value: float | None) -> str:
    """A Unix time in RFC 3339 (for <time datetime> and exports)."""
    if value is None:
        return ""
    return datetime.fromtimestamp(value, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def size(value: int | None) -> str:
    if value is None:
        return "—"
    if value < 1024:
        return f"{value} B"
    if value < 1024 * 1024:
        return f"{value / 1024:.1f} KiB"
    return f"{value / 1024 / 1024:.1f} MiB"


def seconds(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.0f} min"


def reply(text: str | None, code: int | None = None) -> str:
    """A remote's reply as it was said: its code, then its text (once, however stored)."""
    text = (text or "").strip()
    if code is None or text.startswith(str(code)):
        return text or "—"
    return f"{code} {text}".strip()


templates.env.filters["when"] = when
templates.env.filters["reply"] = reply
templates.env.filters["iso"] = iso
templates.env.filters["size"] = size
templates.env.filters["seconds"] = seconds
templates.env.globals["status_labels"] = STATUS_LABELS


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


@contextmanager
def as_user(user: SignedIn) -> Iterator[None]:
    """Changes made inside are the user's (the audit log records them so)."""
    with acting(user.principal.actor):
        yield


@contextmanager
def store(request: Request) -> Iterator[Database]:
    """A connection from the app's pool (for code that runs outside a route's dependency)."""
    with request.app.state.pool.connection() as db:
        yield db


def can(user: SignedIn, permission: Permission) -> bool:
    """Whether the user's role allows `permission` (the core refuses anyway: this decides
    only what the page offers)."""
    return allows(user.principal.role, permission)


templates.env.globals["can"] = can
