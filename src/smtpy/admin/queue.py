"""Queue operations for admins: list, show, retry, hold, release, delete, bounce.

They edit the store directly, as `postsuper` edits queue files: the daemon need
not run, and when it does it sees the change at its next poll (within a
second). A message is shown with the `DeliveryState` of each delivery (active,
deferred, held: `smtpy.queue.queries` computes it, for this listing and for
the depth counts alike).

Every function acts inside one organization (`org`): it sees the mail sent
to its domains (see `smtpy.admin.organizations`); another organization's
queue id is not found.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from smtpy.accounts.audit import record
from smtpy.admin.organizations import Scope, scope
from smtpy.errors import InvalidInput, NotFound
from smtpy.queue.queries import DELIVERY_STATES, DeliveryState, state_sql
from smtpy.store.db import Database, in_list


class QueuedDelivery(BaseModel):
    """One pending destination of a queued message."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    original_recipient: str  # the address the sender used
    recipient: str  # where it goes
    envelope_sender: str
    state: DeliveryState
    attempts: int
    next_attempt_at: float
    last_code: int | None
    last_error: str | None


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, defer_build=True)

    queue_id: str
    state: DeliveryState  # the first of active, deferred, held among its deliveries
    sender: str  # "" for a bounce
    size: int
    received_at: float
    client_ip: str | None
    next_attempt_at: float | None  # the soonest, held deliveries aside
    last_error: str | None
    recipients: list[QueuedDelivery]


class QueuedMessage(_Message):
    """A queued message (`queue list --json` prints these keys)."""

    attempts: int  # the most any of its deliveries had


class Attempt(BaseModel):
    """One delivery attempt and the remote's exact reply."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    delivery_id: int
    recipient: str
    at: float
    remote_host: str | None
    code: int | None
    reply: str
    result: str  # delivered | deferred | failed


class QueuedMessageDetail(_Message):
    """A message with every attempt, its header section, and (not in JSON) its data."""

    attempts: list[Attempt]
    headers: str
    data: bytes = Field(exclude=True, repr=False)


def _message(id_row: dict[str, Any], deliveries: list[QueuedDelivery]) -> QueuedMessage:
    states = {d.state for d in deliveries}
    waiting = [d.next_attempt_at for d in deliveries if d.state != "held"]
    errors = [d.last_error for d in deliveries if d.last_error]
    return QueuedMessage(
        queue_id=id_row["queue_id"],
        state=next((s for s in DELIVERY_STATES if s in states), "active"),
        sender=id_row["sender"],
        size=int(id_row["size"]),
        received_at=float(id_row["received_at"]),
        client_ip=id_row["client_ip"],
        attempts=max((d.attempts for d in deliveries), default=0),
        next_attempt_at=min(waiting) if waiting else None,
        last_error=errors[-1] if errors else None,
        recipients=deliveries,
    )


def _domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


def _rows(db: Database, where: str, params: dict[str, Any], now: float) -> list[dict[str, Any]]:
    """Messages with their deliveries; `where` is one of this module's fixed conditions."""
    return db.all(
        "SELECT m.id AS mid, m.queue_id, m.sender, m.size, m.received_at, m.client_ip,"  # noqa: S608
        " d.original_recipient, d.recipient, d.envelope_sender, d.domain, d.attempts,"
        f" d.next_attempt_at, d.last_code, d.last_error, {state_sql('d')} AS state"
        f" FROM messages m JOIN deliveries d ON d.message_id = m.id WHERE {where}"
        " ORDER BY m.received_at, m.id, d.id",
        {**params, "now": now},
    )


def _group(
    rows: list[dict[str, Any]], seen: Scope
) -> list[tuple[list[dict[str, Any]], QueuedMessage]]:
    """(rows, message) per message the organization sees, in the rows' order."""
    grouped: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        grouped.setdefault(row["mid"], []).append(row)
    result = []
    for message_rows in grouped.values():
        if not seen.sees(_domain_of(r["original_recipient"]) for r in message_rows):
            continue
        deliveries = [
            QueuedDelivery(
                original_recipient=r["original_recipient"],
                recipient=r["recipient"],
                envelope_sender=r["envelope_sender"],
                state=r["state"],
                attempts=int(r["attempts"]),
                next_attempt_at=float(r["next_attempt_at"]),
                last_code=r["last_code"],
                last_error=r["last_error"],
            )
            for r in message_rows
        ]
        result.append((message_rows, _message(message_rows[0], deliveries)))
    return result


def list_messages(
    *,
    db: Database,
    org: int,
    state: str | None = None,
    domain: str | None = None,
    older_than: float | None = None,
    now: float | None = None,
) -> list[QueuedMessage]:
    """Pending messages, oldest first, filtered by state, recipient domain and age (seconds)."""
    if state is not None and state not in DELIVERY_STATES:
        raise InvalidInput(f"state {state!r} is not one of {', '.join(DELIVERY_STATES)}")
    now = time.time() if now is None else now
    before = now - older_than if older_than is not None else float("inf")
    rows = _rows(db, "m.received_at <= :before", {"before": before}, now)
    wanted = None
    if domain is not None:
        from smtpy.mail.addresses import normalize_domain

        wanted = normalize_domain(domain)
    result = []
    for message_rows, message in _group(rows, scope(db=db, org=org)):
        if wanted is not None and all(r["domain"] != wanted for r in message_rows):
            continue
        if state is not None and message.state != state:
            continue
        result.append(message)
    return result


def show_message(*, db: Database, org: int, queue_id: str) -> QueuedMessageDetail:
    """A message, the attempts of each delivery (remote host and exact reply), and its data."""
    from smtpy.mail.received import header_section

    now = time.time()
    rows = _rows(db, "m.queue_id = :q", {"q": queue_id.strip().upper()}, now)
    found = _group(rows, scope(db=db, org=org))
    if not found:
        raise NotFound(f"no queued message has id {queue_id}; see `smtpy queue list`")
    [first, *_], message = found[0]
    attempts = db.all(
        "SELECT a.delivery_id, d.recipient, a.at, a.remote_host, a.code, a.reply, a.result FROM attempts a"
        " JOIN deliveries d ON d.id = a.delivery_id WHERE d.message_id = :m ORDER BY a.at, a.id",
        {"m": first["mid"]},
    )
    data = bytes(db.scalar("SELECT data FROM messages WHERE id = :m", {"m": first["mid"]}))
    return QueuedMessageDetail(
        **message.model_dump(exclude={"attempts"}),
        attempts=[Attempt.model_validate(a) for a in attempts],
        headers=header_section(data).decode("utf-8", "replace"),
        data=data,
    )


BATCH = 200  # messages changed per transaction by bulk operations

Progress = Callable[[int], None]  # told how many more messages were done


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _ids(
    db: Database, org: int, queue_ids: Sequence[str], *, missing_ok: bool = False
) -> list[tuple[int, str]]:
    """(Message id, queue id) of these queue ids (the organization's only); unknown ones fail the whole
    operation first (or, with `missing_ok`, are skipped: delivered or removed since they were
    listed)."""
    seen = scope(db=db, org=org)
    ids: list[tuple[int, str]] = []
    for chunk in _chunks([q.strip().upper() for q in queue_ids], 500):
        placeholders, params = in_list("q", chunk)
        domains: dict[str, tuple[int, set[str]]] = {}
        for row in db.all(
            "SELECT m.id, m.queue_id, d.original_recipient FROM messages m"  # noqa: S608
            f" JOIN deliveries d ON d.message_id = m.id WHERE m.queue_id IN ({placeholders})",
            params,
        ):
            entry = domains.setdefault(row["queue_id"], (int(row["id"]), set()))
            entry[1].add(_domain_of(row["original_recipient"]))
        found = {q: mid for q, (mid, names) in domains.items() if seen.sees(names)}
        missing = [q for q in chunk if q not in found]
        if missing and not missing_ok:
            raise NotFound(
                f"no queued message has id {', '.join(missing[:5])}; see `smtpy queue list`"
            )
        ids.extend((found[q], q) for q in chunk if q in found)
    return ids


def _each(
    db: Database,
    org: int,
    name: str,
    messages: Sequence[tuple[int, str]],
    action: Callable[[Database, int], int],
    progress: Progress | None,
) -> int:
    """Apply `action` to each message, `BATCH` messages per transaction; the sum of its counts.
    Each message it changed is recorded in the audit log as `queue.<name>`.

    Small transactions keep a running daemon's group commit from waiting long
    behind a bulk operation, and let a progress bar move.
    """
    changed = 0
    for chunk in _chunks(messages, BATCH):
        with db.transaction():
            for message_id, queue_id in chunk:
                count = action(db, message_id)
                if count:
                    record(db, org=org, action=f"queue.{name}", target=queue_id)
                changed += count
        if progress is not None:
            progress(len(chunk))
    return changed


def _statement(sql: str, **params: Any) -> Callable[[Database, int], int]:
    return lambda db, message_id: db.execute(sql, {**params, "m": message_id})


def all_ids(*, db: Database, org: int, state: str | None = None) -> list[str]:
    """The queue ids of the organization's queued messages (in one state)."""
    return [m.queue_id for m in list_messages(db=db, org=org, state=state)]


def retry(
    *,
    db: Database,
    org: int,
    queue_ids: Sequence[str],
    now: float | None = None,
    missing_ok: bool = False,
    progress: Progress | None = None,
) -> int:
    """Make the deliveries of these messages due now (held ones stay held); a running
    daemon picks them up at its next poll, within a second."""
    return _each(
        db,
        org,
        "retry",
        _ids(db, org, queue_ids, missing_ok=missing_ok),
        _statement(
            "UPDATE deliveries SET next_attempt_at = :now WHERE message_id = :m"
            " AND status = 'queued' AND lease_owner IS NULL",
            now=time.time() if now is None else now,
        ),
        progress,
    )


def hold(
    *,
    db: Database,
    org: int,
    queue_ids: Sequence[str],
    missing_ok: bool = False,
    progress: Progress | None = None,
) -> int:
    """Keep these messages from being delivered until released (an attempt already in
    flight finishes)."""
    return _each(
        db,
        org,
        "hold",
        _ids(db, org, queue_ids, missing_ok=missing_ok),
        _statement(
            "UPDATE deliveries SET status = 'held' WHERE message_id = :m AND status = 'queued'"
        ),
        progress,
    )


def release(
    *,
    db: Database,
    org: int,
    queue_ids: Sequence[str],
    now: float | None = None,
    missing_ok: bool = False,
    progress: Progress | None = None,
) -> int:
    """Return held messages to the queue, due now."""
    return _each(
        db,
        org,
        "release",
        _ids(db, org, queue_ids, missing_ok=missing_ok),
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
    *,
    db: Database,
    org: int,
    queue_ids: Sequence[str],
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

    return _each(
        db, org, "delete", _ids(db, org, queue_ids, missing_ok=missing_ok), remove, progress
    )


def bounce(
    *,
    db: Database,
    org: int,
    queue_ids: Sequence[str],
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

    return _each(
        db, org, "bounce", _ids(db, org, queue_ids, missing_ok=missing_ok), give_up, progress
    )


def parse_age(text: str) -> float:
    """`90s`, `15m`, `2h`, `7d` → seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    value = text.strip().lower()
    if len(value) >= 2 and value[-1] in units and value[:-1].isdigit():
        return float(int(value[:-1]) * units[value[-1]])
    if value.isdigit():
        return float(value)
    raise InvalidInput(f"{text!r} is not an age: use a number with s, m, h, d or w (e.g. 2h)")
