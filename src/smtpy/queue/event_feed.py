"""The feed: a message's webhook events, made from the message log after its commits.

The `message.*` events say what the message log records (`smtpy.queue.message_log`),
in the commits a message's SMTP reply and delivery result wait for. Writing each
event and its deliveries in those commits as well made them a third larger
(bench/bench_webhooks.py) and let a failure to make an event refuse the mail, so
they are made afterwards: the webhook worker of `smtpy serve` reads the log past a
cursor kept in the store (`webhook_feed`), and in one transaction writes the events
the endpoints want, their deliveries already leased to itself (it sends them at
once, with no claim of their own), and the cursor's new place. A log row becomes
its events once, whichever process or node reads it; if that transaction is
undone, the rows are read again.

The cursor follows the order of commits. On SQLite one writer at a time assigns
the log's ids, so it is the id. On PostgreSQL several nodes commit rows out of id
order, so each row carries the transaction that wrote it (`txid`, the column's
default) and the feed reads only rows of transactions older than every one still
running (`pg_snapshot_xmin`), in (`txid`, id) order: a row that is not visible yet
cannot be passed over. A write transaction left open, in any database of the
cluster, holds the feed back until it ends; `held_back` names it, and the worker
logs it once a minute.

An endpoint gets the events of what happened after it was created. While no
endpoint wants a `message.*` event, nothing is read; the cursor is moved to the
log's end at most every `IDLE_SKIP` seconds, so that a new endpoint starts there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import ValidationError

from smtpy import log
from smtpy.events import outbox
from smtpy.events.deliveries import Claimed, load_leased
from smtpy.events.types import FROM_LOG, MessageData
from smtpy.queue.message_log import LOG_FIELDS, LogEvent
from smtpy.store.db import Database, Row

logger = log.get(__name__)

BATCH = 256  # log rows read per transaction at most
IDLE_SKIP = 60.0  # seconds between moves of an idle cursor to the log's end
HELD_WARNING = 60.0  # seconds a committed row may wait for older transactions unreported
_LAST = 2**62  # an id past every row: (txid, _LAST) is the end of a transaction's rows

_LOG_TYPES = frozenset(FROM_LOG.values())
_DATA_FIELDS = tuple(c for c in LOG_FIELDS if c not in ("at", "event"))
_READ = ", ".join(("id", "txid", *LOG_FIELDS))
_PG_VISIBLE = "pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
_PG_PAST_CURSOR = "txid IS NOT NULL AND (txid, id) > (:txid, :id)"  # in the feed's index


@dataclass(frozen=True, slots=True)
class Cursor:
    """The last log row made into events: its id, and on PostgreSQL its transaction."""

    log_id: int
    txid: int
    updated_at: float


@dataclass(frozen=True, slots=True)
class Fed:
    """What one pass of the feed did: the deliveries it leased, and whether rows remain."""

    claimed: list[Claimed]
    more: bool


def events_of(rows: Sequence[LogEvent], subs: outbox.Subscriptions) -> list[outbox.Pending]:
    """The events these log rows make for the organizations that subscribed.

    A row whose data makes no valid event is left out and logged: one bad row must
    not hold back every event after it."""
    pending = []
    for row in rows:
        type_ = FROM_LOG.get(row.event)
        org = subs.domains.get(row.domain) if row.domain is not None else None
        if type_ is None or org is None or not subs.targets(org, type_, at=row.at):
            continue
        try:
            data = MessageData(**{c: getattr(row, c) for c in _DATA_FIELDS})
        except ValidationError as exc:
            logger.error("webhook_event_unmade", type=type_, queue_id=row.queue_id, error=str(exc))
            continue
        pending.append(outbox.Pending(org, type_, data, row.at))
    return pending


def read_cursor(db: Database, *, lock: bool = False) -> Cursor | None:
    """The cursor; with `lock`, held until the transaction ends (None on PostgreSQL if
    another process holds it: it is feeding now). SQLite's write lock is held already."""
    held = " FOR UPDATE SKIP LOCKED" if lock and db.dialect == "postgresql" else ""
    row = db.one("SELECT log_id, txid, updated_at FROM webhook_feed WHERE id = 1" + held)  # noqa: S608 - a constant clause
    if row is None:
        return None
    return Cursor(int(row["log_id"]), int(row["txid"]), float(row["updated_at"]))


def _after(db: Database, cursor: Cursor, limit: int) -> list[Row]:
    """Up to `limit` log rows past `cursor`, in commit order."""
    params = {"id": cursor.log_id, "txid": cursor.txid, "limit": limit}
    if db.dialect == "sqlite":
        return db.all(
            f"SELECT {_READ} FROM message_log WHERE id > :id ORDER BY id LIMIT :limit",  # noqa: S608 - column names only
            params,
        )
    return db.all(
        f"SELECT {_READ} FROM message_log WHERE {_PG_PAST_CURSOR}"  # noqa: S608 - constants only
        f" AND txid < {_PG_VISIBLE}"
        " ORDER BY txid, id LIMIT :limit",
        params,
    )


def _end(db: Database) -> tuple[int, int]:
    """(log id, txid) of the log's end: every row written so far is behind it."""
    if db.dialect == "sqlite":
        return int(db.scalar("SELECT coalesce(max(id), 0) FROM message_log")), 0
    return _LAST, int(db.scalar(f"SELECT {_PG_VISIBLE} - 1"))


def _move(db: Database, log_id: int, txid: int, now: float) -> None:
    db.execute(
        "UPDATE webhook_feed SET log_id = :id, txid = :txid, updated_at = :now WHERE id = 1",
        {"id": log_id, "txid": txid, "now": now},
    )


def wanted(subs: outbox.Subscriptions) -> bool:
    """Whether an endpoint wants events of the log (of a domain of its organization)."""
    return bool(subs.domains) and any(
        type_ in _LOG_TYPES for by_type in subs.hooks.values() for type_ in by_type
    )


def _idle_move(db: Database, cursor: Cursor, now: float) -> tuple[int, int] | None:
    """Where an idle cursor is to move now (the log's end), if rows were written past it."""
    if now - cursor.updated_at < IDLE_SKIP or not _after(db, cursor, 1):
        return None
    return _end(db)


def waiting(db: Database, *, now: float) -> bool:
    """Whether a pass of the feed has work (a read, before `feed`, which writes)."""
    cursor = read_cursor(db)
    if cursor is None:
        return False
    if not wanted(outbox.subscriptions(db)):
        return _idle_move(db, cursor, now) is not None
    return bool(_after(db, cursor, 1))


@dataclass(frozen=True, slots=True)
class Holdup:
    """Rows committed past the cursor that wait for an older write transaction to end."""

    waiting: float  # seconds the first of them has waited since it was logged
    pid: int | None  # the oldest write transaction still running in the cluster, if shown
    database: str | None
    running: float | None  # seconds since that transaction began


def held_back(db: Database, *, now: float, after: float = HELD_WARNING) -> Holdup | None:
    """On PostgreSQL, a row committed past the cursor that has waited `after` seconds or
    more for an older write transaction, with the oldest one still running (what holds
    the feed back, in any database of the cluster); None otherwise, and on SQLite."""
    if db.dialect != "postgresql":
        return None
    cursor = read_cursor(db)
    if cursor is None:
        return None
    first = db.scalar(
        f"SELECT at FROM message_log WHERE {_PG_PAST_CURSOR}"  # noqa: S608 - constants only
        f" AND txid >= {_PG_VISIBLE} ORDER BY txid, id LIMIT 1",
        {"txid": cursor.txid, "id": cursor.log_id},
    )
    if first is None or now - float(first) < after:
        return None
    oldest = db.one(
        "SELECT pid, datname, extract(epoch FROM now() - xact_start) AS running"
        " FROM pg_stat_activity WHERE backend_xid IS NOT NULL"
        " ORDER BY age(backend_xid) DESC LIMIT 1"
    )
    return Holdup(
        waiting=now - float(first),
        pid=None if oldest is None else int(oldest["pid"]),
        database=None if oldest is None else oldest["datname"],
        running=None if oldest is None or oldest["running"] is None else float(oldest["running"]),
    )


def feed(db: Database, *, node: str, lease: float, now: float, limit: int = BATCH) -> Fed:
    """Make up to `limit` log rows past the cursor into events and deliveries leased to
    `node` for `lease` seconds, and move the cursor past them, in one transaction."""
    with db.transaction():
        cursor = read_cursor(db, lock=True)
        if cursor is None:
            return Fed([], more=False)
        subs = outbox.subscriptions(db)
        if not wanted(subs):
            end = _idle_move(db, cursor, now)
            if end is not None:
                _move(db, *end, now)
            return Fed([], more=False)
        rows = _after(db, cursor, limit)
        if not rows:
            return Fed([], more=False)
        logged = [LogEvent(**{c: row[c] for c in LOG_FIELDS}) for row in rows]
        ids = outbox.write(
            db,
            events_of(logged, subs),
            subs,
            since_created=True,
            lease=outbox.Lease(node, now + lease),
        )
        last = rows[-1]
        _move(db, int(last["id"]), int(last["txid"] or 0), now)
        return Fed(load_leased(db, ids, owner=node), more=len(rows) == limit)
