"""Who is acting: what the audit log records for every change.

A shell says once who is acting (`with acting(Actor(...))`) and every service
it calls inside records its changes under that actor. Without one (a test, or
a library caller), changes are recorded as the `system`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal

Via = Literal["cli", "api_key", "session", "system"]


@dataclass(frozen=True, slots=True)
class Actor:
    via: Via
    name: str  # the user's e-mail, "key NAME (ID)", the Unix user for the CLI, "smtpy"
    user_id: int | None = None
    api_key_id: str | None = None
    client_ip: str | None = None


SYSTEM = Actor(via="system", name="smtpy")

_current: ContextVar[Actor] = ContextVar("smtpy_actor", default=SYSTEM)


def current() -> Actor:
    """The actor of the change being made."""
    return _current.get()


@contextmanager
def acting(actor: Actor) -> Iterator[Actor]:
    """Record the changes made inside this block as `actor`'s."""
    token = _current.set(actor)
    try:
        yield actor
    finally:
        _current.reset(token)
