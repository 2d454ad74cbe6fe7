"""The queue in the store: enqueue, claim with a lease, record results.

A message is stored once; each destination is a delivery row. A worker claims
due rows by moving `next_attempt_at` past its lease and writing its node name
in `lease_owner`; if the node dies, the row simply becomes due again when the
lease runs out (`lease_seconds`). On PostgreSQL the claim uses `FOR UPDATE SKIP
LOCKED`, so any number of nodes share one queue with no coordinator. A node
that restarts releases its own leases at once, once it holds its name
(`smtpy.queue.nodes`), matching lease owners exactly (`release_node`).

Delivery rows: status queued (due or waiting), held (by an admin), unconfirmed
(waiting for its destination's owner to confirm: never claimed to be sent;
`claim_expired_unconfirmed` takes it once the queue lifetime ends), and the
final ones, which remove the delivery: a message leaves the store when none of
its deliveries is pending. What admins see of a pending delivery is its
`DeliveryState` (active, deferred, held), computed by `state_sql` alone.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from smtpy.events.deliveries import asked_delay
from smtpy.outbound.target import Status
from smtpy.queue import fallbacks
from smtpy.queue.fallbacks import Step
from smtpy.queue.message_log import LogEvent, write_events
from smtpy.store.db import Database, in_list

LEASE_SECONDS = 90.0  # the default of the `lease_seconds` setting; daemons pass theirs

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


DeliveryState = Literal["active", "deferred", "held"]
"""A pending delivery as admins see it (`smtpy queue`, `smtpy status`, the API):

    active    due now or being delivered
    deferred  tried at least once, waiting for its next attempt; or waiting for its
              destination's confirmation (status `unconfirmed`, never attempted)
    held      kept aside by an admin until released
"""
DELIVERY_STATES: tuple[DeliveryState, ...] = ("active", "deferred", "held")


def state_sql(table: str = "") -> str:
    """The SQL expression of a pending delivery's `DeliveryState` at `:now`.

    `table` is the alias of `deliveries` in the query (`"d"` for `d.status`).
    The one place the rule is written: the queue listing and the depth counts
    both select it.
    """
    p = f"{table}." if table else ""
    return (
        f"CASE WHEN {p}status = 'held' THEN 'held'"
        f" WHEN {p}status = 'unconfirmed' THEN 'deferred'"
        f" WHEN {p}attempts > 0 AND {p}next_attempt_at > :now AND {p}lease_owner IS NULL"
        " THEN 'deferred' ELSE 'active' END"
    )


def new_queue_id(now: float | None = None) -> str:
    """A 16-character id that sorts by arrival time (48 bits of milliseconds, 32 random)."""
    value = (int((time.time() if now is None else now) * 1000) << 32) | int.from_bytes(
        os.urandom(4), "big"
    )
    chars = []
    for _ in range(16):
        value, digit = divmod(value, 32)
        chars.append(_CROCKFORD[digit])
    return "".join(reversed(chars))


@dataclass(frozen=True, slots=True)
class NewDelivery:
    original_recipient: str
    recipient: str
    domain: str
    envelope_sender: str
    fallbacks: tuple[str, ...] = ()  # the alias's, in order (`smtpy.queue.fallbacks`)
    # A destination awaiting its owner's confirmation: stored with status `unconfirmed`,
    # never claimed, until confirmed (then due) or the queue lifetime ends (then failed).
    unconfirmed: bool = False


UNCONFIRMED_REPLY = "destination awaiting confirmation: not sent until its owner confirms it"


@dataclass(slots=True)
class NewMessage:
    queue_id: str
    sender: str
    data: bytes
    deliveries: Sequence[NewDelivery]
    client_ip: str | None = None
    client_helo: str | None = None
    smtputf8: bool = False
    received_at: float = field(default_factory=time.time)
    auth_results: str | None = None  # what this node's checks found, for the ARC seal
    log: Sequence[LogEvent] = ()  # message-log rows written in the same transaction


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery a worker now holds, with what it needs to send it."""

    id: int
    message_id: int
    queue_id: str
    original_recipient: str
    recipient: str
    domain: str
    envelope_sender: str
    attempts: int
    sender: str
    received_at: float
    smtputf8: bool
    auth_results: str | None = None  # the receiving node's results, sealed on delivery
    created_at: float | None = None  # when this destination was queued (None: received_at)

    @property
    def queued_at(self) -> float:
        """Where the queue lifetime of this delivery starts: a fallback has its own."""
        return self.received_at if self.created_at is None else self.created_at

    unconfirmed: bool = False  # its destination never confirmed: fail it, never send it


def enqueue(db: Database, message: NewMessage) -> int:
    """Insert a message and its deliveries, due now (inside the caller's transaction)."""
    return _insert(db, message, lease_owner=None, next_attempt_at=message.received_at)[0]


def enqueue_claimed(
    db: Database, message: NewMessage, *, node: str, lease: float = LEASE_SECONDS
) -> list[Claimed]:
    """Insert a message with its deliveries already leased to `node`, and return them.

    The node that received the message delivers it at once from memory, with
    no claim round trip; should it die, the lease runs out and any node
    delivers the message, as it would a claimed one.
    """
    _, claimed = _insert(db, message, lease_owner=node, next_attempt_at=message.received_at + lease)
    return claimed


def _insert(
    db: Database, message: NewMessage, *, lease_owner: str | None, next_attempt_at: float
) -> tuple[int, list[Claimed]]:
    message_id = db.insert(
        "INSERT INTO messages (queue_id, sender, client_ip, client_helo, smtputf8, size, received_at,"
        " auth_results, data) VALUES (:queue_id, :sender, :client_ip, :client_helo, :smtputf8,"
        " :size, :received_at, :auth_results, :data) RETURNING id",
        {
            "queue_id": message.queue_id,
            "sender": message.sender,
            "client_ip": message.client_ip,
            "client_helo": message.client_helo,
            "smtputf8": message.smtputf8,
            "size": len(message.data),
            "received_at": message.received_at,
            "auth_results": message.auth_results,
            "data": message.data,
        },
    )
    claimed = []
    for d in message.deliveries:
        delivery_id = db.insert(
            "INSERT INTO deliveries (message_id, original_recipient, recipient, domain,"
            " envelope_sender, status, attempts, next_attempt_at, lease_owner, last_error,"
            " fallbacks, created_at, updated_at) VALUES (:message_id, :original_recipient,"
            " :recipient, :domain, :envelope_sender, :status, 0, :next_attempt_at, :lease_owner,"
            " :error, :fallbacks, :now, :now) RETURNING id",
            {
                "message_id": message_id,
                "original_recipient": d.original_recipient,
                "recipient": d.recipient,
                "domain": d.domain,
                "envelope_sender": d.envelope_sender,
                "status": "unconfirmed" if d.unconfirmed else "queued",
                # Waiting for confirmation: due for expiry from its arrival on.
                "next_attempt_at": message.received_at if d.unconfirmed else next_attempt_at,
                "lease_owner": None if d.unconfirmed else lease_owner,
                "error": UNCONFIRMED_REPLY if d.unconfirmed else None,
                "fallbacks": json.dumps(list(d.fallbacks), ensure_ascii=False),
                "now": message.received_at,
            },
        )
        if d.unconfirmed:
            continue  # nobody holds it: it waits in the store
        claimed.append(
            Claimed(
                id=delivery_id,
                message_id=message_id,
                queue_id=message.queue_id,
                original_recipient=d.original_recipient,
                recipient=d.recipient,
                domain=d.domain,
                envelope_sender=d.envelope_sender,
                attempts=0,
                sender=message.sender,
                received_at=message.received_at,
                smtputf8=message.smtputf8,
                auth_results=message.auth_results,
                created_at=message.received_at,
            )
        )
    write_events(db, message.log)
    return message_id, claimed


def claim_due(
    db: Database,
    *,
    node: str,
    limit: int,
    exclude_domains: Collection[str] = (),
    now: float | None = None,
    lease: float = LEASE_SECONDS,
) -> list[Claimed]:
    """Take up to `limit` due deliveries for this node, leased for `lease` seconds.

    Deliveries to `exclude_domains` (destinations already busy at their
    concurrency limit on this node) stay in the queue for whoever is free.
    """
    now = time.time() if now is None else now
    lock = " FOR UPDATE SKIP LOCKED" if db.dialect == "postgresql" else ""
    params: dict[str, Any] = {"node": node, "until": now + lease, "now": now, "limit": limit}
    excluded = ""
    if exclude_domains:
        names, bound = in_list("x", exclude_domains)
        params.update(bound)
        excluded = " AND domain NOT IN (" + names + ")"
    with db.transaction():
        rows = db.all(
            "UPDATE deliveries SET lease_owner = :node, next_attempt_at = :until WHERE id IN ("
            f" SELECT id FROM deliveries WHERE status = 'queued' AND next_attempt_at <= :now{excluded}"
            f" ORDER BY next_attempt_at LIMIT :limit{lock})"
            " RETURNING id, message_id, original_recipient, recipient, domain, envelope_sender,"
            " attempts, created_at",
            params,
        )
        if not rows:
            return []
        ids = sorted({row["message_id"] for row in rows})
        params = {f"m{i}": mid for i, mid in enumerate(ids)}
        placeholders = ", ".join(f":m{i}" for i in range(len(ids)))
        messages = {
            m["id"]: m
            for m in db.all(
                f"SELECT id, queue_id, sender, received_at, smtputf8, auth_results FROM messages"
                f" WHERE id IN ({placeholders})",
                params,
            )
        }
    claimed = []
    for row in rows:
        message = messages[row["message_id"]]
        claimed.append(
            Claimed(
                id=row["id"],
                message_id=row["message_id"],
                queue_id=message["queue_id"],
                original_recipient=row["original_recipient"],
                recipient=row["recipient"],
                domain=row["domain"],
                envelope_sender=row["envelope_sender"],
                attempts=int(row["attempts"]),
                sender=message["sender"],
                received_at=float(message["received_at"]),
                smtputf8=bool(message["smtputf8"]),
                auth_results=message["auth_results"],
                created_at=float(row["created_at"]),
            )
        )
    return claimed


def claim_expired_unconfirmed(
    db: Database,
    *,
    node: str,
    limit: int,
    lifetime: float,
    now: float | None = None,
    lease: float = LEASE_SECONDS,
) -> list[Claimed]:
    """Take up to `limit` deliveries whose destination was not confirmed within the queue
    `lifetime`, leased to this node so that it fails them (never sends them) and bounces."""
    now = time.time() if now is None else now
    lock = " FOR UPDATE SKIP LOCKED" if db.dialect == "postgresql" else ""
    with db.transaction():
        rows = db.all(
            "UPDATE deliveries SET lease_owner = :node, next_attempt_at = :until WHERE id IN ("
            " SELECT id FROM deliveries WHERE status = 'unconfirmed' AND next_attempt_at <= :before"
            f" ORDER BY next_attempt_at LIMIT :limit{lock})"
            " RETURNING id, message_id, original_recipient, recipient, domain, envelope_sender,"
            " attempts",
            # Kept on the arrival-time scale: a lease that runs out (its node died) makes
            # the delivery claimable again, as a due one is.
            {
                "node": node,
                "until": now + lease - lifetime,
                "before": now - lifetime,
                "limit": limit,
            },
        )
        messages = {}
        for mid in sorted({row["message_id"] for row in rows}):
            found = db.one(
                "SELECT id, queue_id, sender, received_at, smtputf8, auth_results FROM messages"
                " WHERE id = :id",
                {"id": mid},
            )
            if found is not None:
                messages[mid] = found
    return [
        Claimed(
            id=row["id"],
            message_id=row["message_id"],
            queue_id=messages[row["message_id"]]["queue_id"],
            original_recipient=row["original_recipient"],
            recipient=row["recipient"],
            domain=row["domain"],
            envelope_sender=row["envelope_sender"],
            attempts=int(row["attempts"]),
            sender=messages[row["message_id"]]["sender"],
            received_at=float(messages[row["message_id"]]["received_at"]),
            smtputf8=bool(messages[row["message_id"]]["smtputf8"]),
            auth_results=messages[row["message_id"]]["auth_results"],
            unconfirmed=True,
        )
        for row in rows
        if row["message_id"] in messages
    ]


def message_data(db: Database, message_id: int) -> bytes | None:
    data = db.scalar("SELECT data FROM messages WHERE id = :id", {"id": message_id})
    return None if data is None else bytes(data)


def renew_leases(
    db: Database,
    *,
    node: str,
    ids: Sequence[int],
    now: float | None = None,
    lease: float = LEASE_SECONDS,
) -> None:
    """Keep in-flight deliveries leased while a slow remote is still talking."""
    if not ids:
        return
    now = time.time() if now is None else now
    placeholders, params = in_list("i", ids)
    params.update({"node": node, "until": now + lease})
    db.execute(
        f"UPDATE deliveries SET next_attempt_at = :until WHERE lease_owner = :node AND status = 'queued'"
        f" AND id IN ({placeholders})",
        params,
    )


def release_leases(
    db: Database,
    *,
    node: str,
    ids: Sequence[int] | None = None,
    now: float | None = None,
) -> int:
    """Make the deliveries leased to exactly `node` due now (all, or those of `ids`)."""
    now = time.time() if now is None else now
    params: dict[str, Any] = {"node": node, "now": now}
    where = "lease_owner = :node AND status = 'queued'"
    if ids is not None:
        if not ids:
            return 0
        names, bound = in_list("i", ids)
        params.update(bound)
        where += " AND id IN (" + names + ")"
    return db.execute(
        f"UPDATE deliveries SET lease_owner = NULL, next_attempt_at = :now WHERE {where}",
        params,
    )


def process_owner(node: str, index: int) -> str:
    """The lease owner of serving process `index` of `node` (several processes: `NODE.1` …)."""
    return f"{node}.{index}"


def owner_node(owner: str, nodes: Collection[str]) -> str | None:
    """Which of `nodes` a lease owner belongs to: the node itself, or one of its processes.

    Names are matched exactly: `mx1.example.net` is not a process of `mx1`,
    and `mx1.2` belongs to a node of that name before it belongs to `mx1`.
    """
    if owner in nodes:
        return owner
    base, dot, index = owner.rpartition(".")
    if dot and index.isascii() and index.isdigit() and base in nodes:
        return base
    return None


def release_node(db: Database, *, node: str, now: float | None = None) -> int:
    """Make every delivery leased by `node` due now: at the start of the node, once it holds
    its name, since nothing of an earlier start of it still runs.

    That is the leases of `node` itself and those of its serving processes
    (`NODE.1`, `NODE.2` …, of a start with several), matched exactly: never
    those of another node whose name begins with this one's (`mx1.example.net`
    for `mx1`), nor of a node that is itself called `NODE.2`.
    """
    now = time.time() if now is None else now
    prefix = f"{node}."
    bound = {"length": len(prefix), "prefix": prefix}
    others = {
        str(row["name"])
        for row in db.all("SELECT name FROM nodes WHERE substr(name, 1, :length) = :prefix", bound)
    }
    owners = [node] + [
        owner
        for row in db.all(
            "SELECT DISTINCT lease_owner FROM deliveries"
            " WHERE status = 'queued' AND substr(lease_owner, 1, :length) = :prefix",
            bound,
        )
        if owner_node(owner := str(row["lease_owner"]), {node} | others) == node
    ]
    names, params = in_list("o", owners)
    params["now"] = now
    return db.execute(
        "UPDATE deliveries SET lease_owner = NULL, next_attempt_at = :now"
        f" WHERE status = 'queued' AND lease_owner IN ({names})",
        params,
    )


def leases_by_owner(db: Database, *, now: float) -> dict[str, int]:
    """How many deliveries each lease owner holds now (leases that have not run out)."""
    return {
        str(row["lease_owner"]): int(row["n"])
        for row in db.all(
            "SELECT lease_owner, count(*) AS n FROM deliveries WHERE status = 'queued'"
            " AND lease_owner IS NOT NULL AND next_attempt_at > :now GROUP BY lease_owner",
            {"now": now},
        )
    }


@dataclass(frozen=True, slots=True)
class AttemptResult:
    delivery: Claimed
    result: Status  # what the target said: delivered, deferred or failed
    code: int | None
    reply: str
    remote_host: str | None
    enhanced: str
    retry_after: float | None = None  # seconds the receiver asked to wait, if it said


def next_delay(schedule: Sequence[int], attempts: int) -> int:
    """Seconds until the next attempt after `attempts` attempts (the last delay repeats)."""
    return schedule[min(max(attempts, 1), len(schedule)) - 1]


def _delay(schedule: Sequence[int], attempts: int, retry_after: float | None) -> float:
    """The wait before the next attempt: a receiver's Retry-After replaces the schedule's
    (the queue lifetime still ends the delivery)."""
    return next_delay(schedule, attempts) if retry_after is None else asked_delay(retry_after)


@dataclass(frozen=True, slots=True)
class Settled:
    """What became of a batch of attempts: the deliveries that now need a bounce, and those
    that failed for good but went to a fallback instead (by delivery id)."""

    failed: list[AttemptResult]
    fallbacks: dict[int, Step] = field(default_factory=dict)


def record_results(
    db: Database,
    results: Sequence[AttemptResult],
    *,
    node: str,
    schedule: Sequence[int],
    lifetime: float,
    now: float | None = None,
) -> Settled:
    """Write the outcome of attempts (inside the caller's transaction).

    Deferred deliveries queued longer than `lifetime` fail. Deliveries that
    reach a final state are removed, and a message with nothing left pending
    goes too. A delivery removed meanwhile (by an admin, or by the node that
    took over an expired lease) is skipped. A failure whose alias has fallbacks
    goes to the next one instead (`smtpy.queue.fallbacks`). Returns the failed
    ones so the caller can queue a bounce in the same transaction.
    """
    now = time.time() if now is None else now
    failed: list[AttemptResult] = []
    handed: dict[int, Step] = {}
    done_messages: set[int] = set()
    for r in results:
        d = r.delivery
        outcome = r
        if r.result == "deferred" and now - d.queued_at >= lifetime:
            outcome = AttemptResult(
                d,
                "failed",
                r.code,
                r.reply,
                r.remote_host,
                "4.4.7" if r.enhanced.startswith("4") else r.enhanced,
            )
        if outcome.result == "deferred":
            kept = db.execute(
                "UPDATE deliveries SET attempts = attempts + 1, next_attempt_at = :next, lease_owner = NULL,"
                " last_code = :code, last_error = :reply, updated_at = :now"
                " WHERE id = :id AND lease_owner = :node",
                {
                    "id": d.id,
                    "next": now + _delay(schedule, d.attempts + 1, r.retry_after),
                    "code": r.code,
                    "reply": r.reply[:1000],
                    "now": now,
                    "node": node,
                },
            )
            if kept:  # its history, for `smtpy queue show`
                db.execute(
                    "INSERT INTO attempts (delivery_id, at, remote_host, code, reply, result)"
                    " VALUES (:id, :at, :host, :code, :reply, :result)",
                    {
                        "id": d.id,
                        "at": now,
                        "host": r.remote_host,
                        "code": r.code,
                        "reply": r.reply[:1000],
                        "result": r.result,
                    },
                )
            continue
        # A final outcome: the delivery goes, with the attempts before this one
        # (this one is in the message log). Removed meanwhile: nothing to settle.
        if d.attempts:
            db.execute("DELETE FROM attempts WHERE delivery_id = :id", {"id": d.id})
        gone = db.one("DELETE FROM deliveries WHERE id = :id RETURNING fallbacks", {"id": d.id})
        if gone is None:
            continue
        done_messages.add(d.message_id)
        chain = json.loads(gone["fallbacks"] or "[]")
        if chain:
            step = fallbacks.settle(db, d, chain, failed=outcome.result == "failed", now=now)
            if step is not None:
                handed[d.id] = step
                continue
        if outcome.result == "failed":
            failed.append(outcome)
    for message_id in sorted(done_messages):  # one order: nodes locking messages never deadlock
        delete_if_done(db, message_id)
    return Settled(failed, handed)


def delete_if_done(db: Database, message_id: int) -> bool:
    """Remove a message once none of its deliveries is pending.

    On PostgreSQL the message row is locked first: two nodes settling the last
    two deliveries of one message at once would each still see the other's
    and both keep the message; the second waits for the first and sees.
    """
    if db.dialect == "postgresql":
        db.one("SELECT id FROM messages WHERE id = :m FOR UPDATE", {"m": message_id})
    return bool(
        db.execute(
            "DELETE FROM messages WHERE id = :m"
            " AND NOT EXISTS (SELECT 1 FROM deliveries WHERE message_id = :m)",
            {"m": message_id},
        )
    )


def queue_depth(db: Database, *, now: float) -> tuple[dict[str, int], float | None]:
    """Pending deliveries by state (active, deferred, held) and the oldest one's creation time.

    Deferred: tried at least once and waiting for its next attempt; active:
    due now or in flight. One query over the deliveries still in the queue.
    """
    rows = db.all(
        f"SELECT {state_sql()} AS state, count(*) AS n, min(created_at) AS oldest"
        " FROM deliveries WHERE status IN ('queued', 'held', 'unconfirmed') GROUP BY 1",
        {"now": now},
    )
    counts: dict[str, int] = dict.fromkeys(DELIVERY_STATES, 0)
    oldest: float | None = None
    for row in rows:
        counts[str(row["state"])] = int(row["n"])
        if row["oldest"] is not None:
            value = float(row["oldest"])
            oldest = value if oldest is None else min(oldest, value)
    return counts, oldest
