"""The outbox: events written in the transaction of what caused them.

An event is stored once (`webhook_events`, its body as it will be sent) with
one delivery row per endpoint subscribed to its type (`webhook_deliveries`),
in the caller's transaction: a core service's change, or the feed's
transaction that reads them from the message log (`smtpy.queue.event_feed`, for
the `message.*` events). If that transaction is undone, so is the event;
once it commits, the event is durable and `smtpy serve` delivers it.

Which organizations want which types is read from the store at most every
`TTL` seconds per store and kept in memory (`subscriptions`): with no webhook
anywhere, emitting costs a dictionary lookup and writes nothing.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel

from smtpy.events.types import EVENT_TYPES, render
from smtpy.store.db import Database, in_list

TTL = 2.0  # seconds a webhook change may take to reach a running process


@dataclass(frozen=True, slots=True)
class Subscriptions:
    """Enabled endpoints by organization and type, and the domains of those organizations."""

    loaded_at: float = 0.0
    hooks: dict[int, dict[str, tuple[str, ...]]] = field(default_factory=dict)
    domains: dict[str, int] = field(default_factory=dict)  # A-label → organization
    since: dict[str, float] = field(default_factory=dict)  # endpoint → when it was created

    def targets(self, org: int, type_: str, *, at: float | None = None) -> tuple[str, ...]:
        """The endpoints of `org` subscribed to `type_` (that existed at `at`, if given)."""
        by_type = self.hooks.get(org)
        found = () if by_type is None else by_type.get(type_, ())
        if at is None or not found:
            return found
        return tuple(hook for hook in found if self.since.get(hook, 0.0) <= at)


@dataclass(frozen=True, slots=True)
class Pending:
    """An event to write: its organization, type, data and when it happened."""

    org: int
    type: str
    data: BaseModel | dict[str, object]
    at: float


_cache: dict[str, Subscriptions] = {}
_lock = threading.Lock()


def load(db: Database) -> Subscriptions:
    """Read the enabled endpoints and the domains of their organizations."""
    hooks: dict[int, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    since: dict[str, float] = {}
    for row in db.all("SELECT id, organization_id, events, created_at FROM webhooks WHERE enabled"):
        since[str(row["id"])] = float(row["created_at"])
        wanted = json.loads(row["events"])
        for type_ in wanted:
            if type_ in EVENT_TYPES:
                hooks[int(row["organization_id"])][type_].append(str(row["id"]))
    domains: dict[str, int] = {}
    if hooks:
        names, params = in_list("o", sorted(hooks))
        for row in db.all(
            f"SELECT name, organization_id FROM domains WHERE organization_id IN ({names})",  # noqa: S608
            params,
        ):
            domains[str(row["name"])] = int(row["organization_id"])
    return Subscriptions(
        loaded_at=time.monotonic(),
        hooks={
            org: {type_: tuple(ids) for type_, ids in by_type.items()}
            for org, by_type in hooks.items()
        },
        domains=domains,
        since=since,
    )


def subscriptions(db: Database) -> Subscriptions:
    """What `db`'s organizations subscribe to, read again once `TTL` seconds old."""
    hit = _cache.get(db.url)
    if hit is not None and time.monotonic() - hit.loaded_at < TTL:
        return hit
    fresh = load(db)
    with _lock:
        _cache[db.url] = fresh
    return fresh


def invalidate(url: str | None = None) -> None:
    """Forget what was read (of one store, or all): a webhook changed in this process."""
    with _lock:
        if url is None:
            _cache.clear()
        else:
            _cache.pop(url, None)


def new_event_id(at: float | None = None) -> str:
    """`evt_` + milliseconds in hex + 64 random bits: unique, and sorts by time."""
    ms = int((time.time() if at is None else at) * 1000)
    return f"evt_{ms:011x}{secrets.token_hex(8)}"


@dataclass(frozen=True, slots=True)
class Lease:
    """Deliveries written already leased: to `owner` (who sends them now) until `until`."""

    owner: str
    until: float


def write(
    db: Database,
    events: Sequence[Pending],
    subs: Subscriptions | None = None,
    *,
    since_created: bool = False,
    lease: Lease | None = None,
) -> list[str]:
    """Store `events` and a delivery per subscribed endpoint (in the caller's transaction).

    Events no endpoint wants are not stored. With `since_created`, an endpoint gets only
    the events that happened after it was created. Returns the ids of those stored.
    """
    subs = subscriptions(db) if subs is None else subs
    event_rows: list[dict[str, object]] = []
    delivery_rows: list[dict[str, object]] = []
    now = time.time()
    for pending in events:
        targets = subs.targets(pending.org, pending.type, at=pending.at if since_created else None)
        if not targets:
            continue
        event_id = new_event_id(pending.at)
        body = render(pending.type, pending.data, at=pending.at)
        event_rows.append(
            {
                "id": event_id,
                "org": pending.org,
                "type": pending.type,
                "at": pending.at,
                "body": body,
            }
        )
        delivery_rows.extend({"event": event_id, "hook": hook, "now": now} for hook in targets)
    insert(db, event_rows, delivery_rows, lease=lease)
    return [str(row["id"]) for row in event_rows]


def insert(
    db: Database,
    event_rows: Sequence[dict[str, object]],
    delivery_rows: Sequence[dict[str, object]],
    *,
    lease: Lease | None = None,
) -> None:
    """Insert events and their deliveries (`event`, `hook`, `now`): due now, or leased."""
    if not event_rows:
        return
    owner = None if lease is None else lease.owner
    delivery_rows = [
        {**row, "owner": owner, "due": row["now"] if lease is None else lease.until}
        for row in delivery_rows
    ]
    db.executemany(
        "INSERT INTO webhook_events (id, organization_id, type, created_at, body)"
        " VALUES (:id, :org, :type, :at, :body)",
        event_rows,
    )
    db.executemany(
        "INSERT INTO webhook_deliveries (event_id, webhook_id, status, attempts, next_attempt_at,"
        " lease_owner, created_at, updated_at)"
        " VALUES (:event, :hook, 'pending', 0, :due, :owner, :now, :now)",
        delivery_rows,
    )


def emit(
    db: Database,
    *,
    org: int,
    type_: str,
    data: BaseModel | dict[str, object],
    at: float | None = None,
) -> str | None:
    """Emit one event of `org` (in the caller's transaction); its id, or None if unwanted."""
    stored = write(db, [Pending(org, type_, data, time.time() if at is None else at)])
    return stored[0] if stored else None


def emit_many(db: Database, events: Iterable[Pending]) -> list[str]:
    return write(db, list(events))
