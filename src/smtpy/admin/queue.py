"""Queue operations for admins: list, show, retry, hold, release, delete, bounce.

They edit the store directly, as `postsuper` edits queue files: the daemon need
not run, and when it does it sees the change at its next poll (within a
second). A message is shown with the state of its deliveries:

    active    due now or being delivered
    deferred  waiting for its next attempt after a temporary failure
    held      kept aside by an admin until released
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from smtpy.errors import InvalidInput, NotFound
from smtpy.store.db import Database

State = Literal["active", "deferred", "held"]
STATES: tuple[State, ...] = ("active", "deferred", "held")


@dataclass(frozen=True, slots=True)
class QueuedDelivery:
    id: int
    original_recipient: str
    recipient: str
    envelope_sender: str
    state: State
    attempts: int
    next_attempt_at: float
    last_code: int | None
    last_error: str | None

    def public(self) -> dict[str, Any]:
        return {
            "original_recipient": self.original_recipient,
            "recipient": self.recipient,
            "envelope_sender": self.envelope_sender,
            "state": self.state,
            "attempts": self.attempts,
            "next_attempt_at": self.next_attempt_at,
            "last_code": self.last_code,
            "last_error": self.last_error,
        }


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    id: int
    queue_id: str
    sender: str
    size: int
    received_at: float
    client_ip: str | None
    deliveries: list[QueuedDelivery] = field(default_factory=list)

    @property
    def state(self) -> State:
        states = {d.state for d in self.deliveries}
        for state in STATES:
            if state in states:
                return state
        return "active"

    @property
    def attempts(self) -> int:
        return max((d.attempts for d in self.deliveries), default=0)

    @property
    def next_attempt_at(self) -> float | None:
        waiting = [d.next_attempt_at for d in self.deliveries if d.state != "held"]
        return min(waiting) if waiting else None

    @property
    def last_error(self) -> str | None:
        errors = [d.last_error for d in self.deliveries if d.last_error]
        return errors[-1] if errors else None

    def public(self) -> dict[str, Any]:
        return {
            "queue_id": self.queue_id,
            "state": self.state,
            "sender": self.sender,
            "size": self.size,
            "received_at": self.received_at,
            "client_ip": self.client_ip,
            "attempts": self.attempts,
            "next_attempt_at": self.next_attempt_at,
            "last_error": self.last_error,
            "recipients": [d.public() for d in self.deliveries],
        }


def _state(row: dict[str, Any], now: float) -> State:
    if row["status"] == "held":
        return "held"
    if row["attempts"] and row["next_attempt_at"] > now and row["lease_owner"] is None:
        return "deferred"
    return "active"


def list_messages(
    db: Database,
    *,
    state: str | None = None,
    domain: str | None = None,
    older_than: float | None = None,
    now: float | None = None,
) -> list[QueuedMessage]:
    """Pending messages, oldest first, filtered by state, recipient domain and age (seconds)."""
    if state is not None and state not in STATES:
        raise InvalidInput(f"state {state!r} is not one of {', '.join(STATES)}")
    now = time.time() if now is None else now
    params = {"before": now - (older_than or 0.0) if older_than is not None else float("inf")}
    rows = db.all(
        "SELECT m.id AS mid, m.queue_id, m.sender, m.size, m.received_at, m.client_ip,"
        " d.id, d.original_recipient, d.recipient, d.envelope_sender, d.domain, d.status, d.attempts,"
        " d.next_attempt_at, d.lease_owner, d.last_code, d.last_error"
        " FROM messages m JOIN deliveries d ON d.message_id = m.id WHERE m.received_at <= :before"
        " ORDER BY m.received_at, m.id, d.id",
        params,
    )
    messages: dict[int, QueuedMessage] = {}
    domains: dict[int, set[str]] = {}
    for row in rows:
        message = messages.get(row["mid"])
        if message is None:
            message = messages[row["mid"]] = QueuedMessage(
                row["mid"],
                row["queue_id"],
                row["sender"],
                int(row["size"]),
                float(row["received_at"]),
                row["client_ip"],
            )
            domains[row["mid"]] = set()
        domains[row["mid"]].add(row["domain"])
        message.deliveries.append(
            QueuedDelivery(
                row["id"],
                row["original_recipient"],
                row["recipient"],
                row["envelope_sender"],
                _state(row, now),
                int(row["attempts"]),
                float(row["next_attempt_at"]),
                row["last_code"],
                row["last_error"],
            )
        )
    result = list(messages.values())
    if domain is not None:
        from smtpy.mail.addresses import normalize_domain

        wanted = normalize_domain(domain)
        result = [m for m in result if wanted in domains[m.id]]
    if state is not None:
        result = [m for m in result if m.state == state]
    return result


def _message(db: Database, queue_id: str) -> dict[str, Any]:
    row = db.one("SELECT id, queue_id FROM messages WHERE queue_id = :q", {"q": queue_id.upper()})
    if row is None:
        raise NotFound(f"no queued message has id {queue_id}; see `smtpy queue list`")
    return row


def show_message(db: Database, queue_id: str) -> tuple[QueuedMessage, list[dict[str, Any]], bytes]:
    """A message, the attempts of each delivery (remote host and exact reply), and its data."""
    row = _message(db, queue_id)
    message = next(m for m in list_messages(db) if m.id == row["id"])
    attempts = db.all(
        "SELECT a.delivery_id, d.recipient, a.at, a.remote_host, a.code, a.reply, a.result FROM attempts a"
        " JOIN deliveries d ON d.id = a.delivery_id WHERE d.message_id = :m ORDER BY a.at, a.id",
        {"m": row["id"]},
    )
    data = db.scalar("SELECT data FROM messages WHERE id = :m", {"m": row["id"]})
    return message, attempts, bytes(data)


BATCH = 200  # messages changed per transaction by bulk operations

Progress = Callable[[int], None]  # told how many more messages were done


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _ids(db: Database, queue_ids: Sequence[str], *, missing_ok: bool = False) -> list[int]:
    """Message ids of these queue ids; unknown ones fail the whole operation first
    (or, with `missing_ok`, are skipped: delivered or removed since they were listed)."""
    ids: list[int] = []
    for chunk in _chunks([q.strip().upper() for q in queue_ids], 500):
        params = {f"q{n}": q for n, q in enumerate(chunk)}
        placeholders = ", ".join(f":q{n}" for n in range(len(chunk)))
        found = {
            row["queue_id"]: int(row["id"])
            for row in db.all(
                f"SELECT id, queue_id FROM messages WHERE queue_id IN ({placeholders})",  # noqa: S608
                params,
            )
        }
        missing = [q for q in chunk if q not in found]
        if missing and not missing_ok:
            raise NotFound(
                f"no queued message has id {', '.join(missing[:5])}; see `smtpy queue list`"
            )
        ids.extend(found[q] for q in chunk if q in found)
    return ids


def _each(
    db: Database,
    message_ids: Sequence[int],
    action: Callable[[Database, int], int],
    progress: Progress | None,
) -> int:
    """Apply `action` to each message, `BATCH` messages per transaction; the sum of its counts.

    Small transactions keep a running daemon's group commit from waiting long
    behind a bulk operation, and let a progress bar move.
    """
    changed = 0
    for chunk in _chunks(message_ids, BATCH):
        with db.transaction():
            for message_id in chunk:
                changed += action(db, message_id)
        if progress is not None:
            progress(len(chunk))
    return changed


def _statement(sql: str, **params: Any) -> Callable[[Database, int], int]:
    return lambda db, message_id: db.execute(sql, {**params, "m": message_id})


def all_ids(db: Database, *, state: str | None = None) -> list[str]:
    return [m.queue_id for m in list_messages(db, state=state)]


def retry(
    db: Database,
    queue_ids: Sequence[str],
    *,
    now: float | None = None,
    missing_ok: bool = False,
    progress: Progress | None = None,
) -> int:
    """Make the deliveries of these messages due now (held ones stay held); a running
    daemon picks them up at its next poll, within a second."""
    return _each(
        db,
        _ids(db, queue_ids, missing_ok=missing_ok),
        _statement(
            "UPDATE deliveries SET next_attempt_at = :now WHERE message_id = :m"
            " AND status = 'queued' AND lease_owner IS NULL",
            now=time.time() if now is None else now,
        ),
        progress,
    )


def hold(
    db: Database,
    queue_ids: Sequence[str],
    *,
    missing_ok: bool = False,
    progress: Progress | None = None,
) -> int:
    """Keep these messages from being delivered until released (an attempt already in
    flight finishes)."""
    return _each(
        db,
        _ids(db, queue_ids, missing_ok=missing_ok),
        _statement(
            "UPDATE deliveries SET status = 'held' WHERE message_id = :m AND status = 'queued'"
        ),
        progress,
    )


def release(
    db: Database,
    queue_ids: Sequence[str],
    *,
    now: float | None = None,
    missing_ok: bool = False,
    progress: Progress | None = None,
) -> int:
    """Return held messages to the queue, due now."""
    return _each(
        db,
        _ids(db, queue_ids, missing_ok=missing_ok),
        _statement(
            "UPDATE deliveries SET status = 'queued', next_attempt_at = :now, lease_owner = NULL"
            " WHERE message_id = :m AND status = 'held'",
            now=time.time() if now is None else now,
        ),
        progress,
    )


def _remove(db: Database, message_id: int) -> None:
    db.execute(
        "DELETE FROM attempts WHERE delivery_id IN"
        " (SELECT id FROM deliveries WHERE message_id = :m)",
        {"m": message_id},
    )
    db.execute("DELETE FROM deliveries WHERE message_id = :m", {"m": message_id})
    db.execute("DELETE FROM messages WHERE id = :m", {"m": message_id})


def _pending(db: Database, message_id: int) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    m = db.one(
        "SELECT queue_id, sender, received_at, smtputf8, data FROM messages WHERE id = :m",
        {"m": message_id},
    )
    if m is None:
        return None
    rows = db.all("SELECT * FROM deliveries WHERE message_id = :m ORDER BY id", {"m": message_id})
    return m, rows


def delete(
    db: Database,
    queue_ids: Sequence[str],
    *,
    now: float | None = None,
    missing_ok: bool = False,
    progress: Progress | None = None,
) -> int:
    """Remove messages without a bounce; the message log records each as discarded."""
    from smtpy.queue.message_log import LogEvent, write_events

    now = time.time() if now is None else now

    def remove(db: Database, message_id: int) -> int:
        pending = _pending(db, message_id)
        if pending is None:
            return 0
        m, rows = pending
        write_events(
            db,
            [
                LogEvent(
                    at=now,
                    event="discarded",
                    queue_id=m["queue_id"],
                    sender=m["sender"],
                    alias=r["original_recipient"],
                    recipient=r["recipient"],
                    domain=r["original_recipient"].rpartition("@")[2],
                    reason="admin_delete",
                )
                for r in rows
            ],
        )
        _remove(db, message_id)
        return 1

    return _each(db, _ids(db, queue_ids, missing_ok=missing_ok), remove, progress)


def bounce(
    db: Database,
    queue_ids: Sequence[str],
    *,
    hostname: str,
    now: float | None = None,
    missing_ok: bool = False,
    progress: Progress | None = None,
) -> int:
    """Give up on these messages now: each pending delivery fails and the sender gets a DSN."""
    from dataclasses import replace

    from smtpy.queue.message_log import delivery_events, write_events
    from smtpy.queue.queries import AttemptResult, Claimed, enqueue
    from smtpy.queue.scheduler import bounce_message

    now = time.time() if now is None else now

    def give_up(db: Database, message_id: int) -> int:
        pending = _pending(db, message_id)
        if pending is None:
            return 0
        m, rows = pending
        failed = [
            AttemptResult(
                Claimed(
                    r["id"],
                    message_id,
                    m["queue_id"],
                    r["original_recipient"],
                    r["recipient"],
                    r["domain"],
                    r["envelope_sender"],
                    int(r["attempts"]),
                    m["sender"],
                    float(m["received_at"]),
                    bool(m["smtputf8"]),
                ),
                "failed",
                r["last_code"],
                r["last_error"] or "given up by the administrator",
                None,
                "5.0.0",  # pending deliveries only ever failed temporarily
            )
            for r in rows
        ]
        dsn = (
            bounce_message(hostname=hostname, failed=failed, original=bytes(m["data"]), now=now)
            if failed
            else None
        )
        if dsn is not None:
            enqueue(db, dsn)
        write_events(
            db,
            [replace(e, reason="admin_bounce") for e in delivery_events(failed, failed, at=now)],
        )
        _remove(db, message_id)
        return 1

    return _each(db, _ids(db, queue_ids, missing_ok=missing_ok), give_up, progress)


def parse_age(text: str) -> float:
    """`90s`, `15m`, `2h`, `7d` → seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    value = text.strip().lower()
    if len(value) >= 2 and value[-1] in units and value[:-1].isdigit():
        return float(int(value[:-1]) * units[value[-1]])
    if value.isdigit():
        return float(value)
    raise InvalidInput(f"{text!r} is not an age: use a number with s, m, h, d or w (e.g. 2h)")
