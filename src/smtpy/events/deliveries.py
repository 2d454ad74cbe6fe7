"""Webhook deliveries in the store: claimed with a lease, attempted, recorded, retried.

A serving process claims due rows by moving `next_attempt_at` past its lease
and writing its name in `lease_owner`, as the mail queue does
(`smtpy.queue.queries`); on PostgreSQL with `FOR UPDATE SKIP LOCKED`, so the
processes of every node share the outbox and each delivery goes to one of
them. A process that dies leaves its leases to run out (or to its own next
start, which releases them at once).

Retries follow `SCHEDULE` (immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h,
10 h) with jitter; a `Retry-After` on 429 or 503 replaces the next delay. Any
2xx is delivered; 410 disables the endpoint; an endpoint failing for
`DISABLE_AFTER` seconds is disabled too (the daemon mails its owners).
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from smtpy.store.db import Database, Row, in_list

SCHEDULE: tuple[int, ...] = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
JITTER = 0.1  # each delay is moved by up to this share either way
MAX_RETRY_AFTER = 86400.0  # a Retry-After longer than this is cut to it
MIN_RETRY_AFTER = 1.0  # a Retry-After of 0 must not make a loop of attempts
DISABLE_AFTER = 5 * 86400.0  # an endpoint failing this long is disabled
RESPONSE_KEPT = 1000  # characters of an answer's body kept with the attempt
PRUNE_BATCH = 2000  # finished deliveries deleted per transaction

DeliveryStatus = Literal["pending", "delivered", "failed"]


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery this process now holds, with what it needs to send it."""

    id: int
    event_id: str
    webhook_id: str
    organization_id: int
    attempts: int
    type: str
    body: str
    url: str
    secret: str
    previous_secret: str | None
    previous_secret_until: float | None

    def secrets(self, now: float) -> list[str]:
        """The secrets that sign now: the current one, and the previous during an overlap."""
        keys = [self.secret]
        if (
            self.previous_secret
            and self.previous_secret_until is not None
            and now < self.previous_secret_until
        ):
            keys.append(self.previous_secret)
        return keys


@dataclass(frozen=True, slots=True)
class Answer:
    """What one POST got: a status code and the start of the body, or an error."""

    status_code: int | None
    duration_ms: int
    body: str | None = None
    error: str | None = None
    retry_after: float | None = None  # seconds, from a 429 or 503

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


@dataclass(frozen=True, slots=True)
class Settled:
    """What recording an answer decided."""

    status: DeliveryStatus
    next_attempt_at: float | None
    disabled: str | None = None  # the reason, when this answer disabled the endpoint


def asked_delay(retry_after: float) -> float:
    """The wait a `Retry-After` asked for, as honoured: at least a second, at most a day."""
    return min(max(retry_after, MIN_RETRY_AFTER), MAX_RETRY_AFTER)


def next_delay(
    schedule: Sequence[int], attempts: int, *, rng: random.Random | None = None
) -> float | None:
    """Seconds before attempt `attempts + 1` (attempts made so far), or None: no more."""
    if attempts >= len(schedule):
        return None
    delay = float(schedule[attempts])
    if delay <= 0:
        return 0.0
    spread = delay * JITTER
    return delay + (rng or random).uniform(-spread, spread)


def decide(
    answer: Answer,
    *,
    attempts: int,
    schedule: Sequence[int],
    now: float,
    rng: random.Random | None = None,
) -> Settled:
    """The delivery's state after `answer` to its attempt number `attempts + 1`."""
    if answer.ok:
        return Settled("delivered", None)
    if answer.status_code == 410:
        return Settled("failed", None, disabled="the endpoint answered 410 Gone")
    delay = next_delay(schedule, attempts + 1, rng=rng)
    if delay is None:
        return Settled("failed", None)
    if answer.status_code in (429, 503) and answer.retry_after is not None:
        delay = asked_delay(answer.retry_after)
    return Settled("pending", now + delay)


def has_due(db: Database, *, now: float) -> bool:
    """Whether any delivery is due (a cheap read before a claim, which writes)."""
    return (
        db.scalar(
            "SELECT 1 FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= :now"
            " LIMIT 1",
            {"now": now},
        )
        is not None
    )


def claim_due(db: Database, *, node: str, limit: int, lease: float, now: float) -> list[Claimed]:
    """Take up to `limit` due deliveries of enabled endpoints, leased to `node` for `lease` s."""
    lock = " FOR UPDATE SKIP LOCKED" if db.dialect == "postgresql" else ""
    due = (  # noqa: S608
        "SELECT id FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= :now"
        " AND webhook_id IN (SELECT id FROM webhooks WHERE enabled)"
        " ORDER BY next_attempt_at LIMIT :limit"
    ) + lock
    with db.transaction():
        rows = db.all(
            "UPDATE webhook_deliveries SET lease_owner = :node, next_attempt_at = :until"  # noqa: S608
            " WHERE id IN (" + due + ") RETURNING id",
            {"node": node, "until": now + lease, "now": now, "limit": limit},
        )
        return load(db, [int(r["id"]) for r in rows])


_LOAD = (
    "SELECT d.id, d.event_id, d.webhook_id, d.attempts, e.organization_id, e.type, e.body,"
    " w.url, w.secret, w.previous_secret, w.previous_secret_until"
    " FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event_id"
    " JOIN webhooks w ON w.id = d.webhook_id WHERE "
)


def load(db: Database, ids: Sequence[int]) -> list[Claimed]:
    """The deliveries `ids` with their event and endpoint."""
    if not ids:
        return []
    names, params = in_list("i", ids)
    return _claimed(db.all(_LOAD + "d.id IN (" + names + ") ORDER BY d.id", params))


def load_leased(db: Database, event_ids: Sequence[str], *, owner: str) -> list[Claimed]:
    """The deliveries of `event_ids` leased to `owner` (written so by the feed)."""
    if not event_ids:
        return []
    names, params = in_list("e", event_ids)
    params["owner"] = owner
    return _claimed(
        db.all(
            _LOAD + "d.event_id IN (" + names + ") AND d.lease_owner = :owner ORDER BY d.id",
            params,
        )
    )


def _claimed(rows: Sequence[Row]) -> list[Claimed]:
    return [
        Claimed(
            id=int(r["id"]),
            event_id=r["event_id"],
            webhook_id=r["webhook_id"],
            organization_id=int(r["organization_id"]),
            attempts=int(r["attempts"]),
            type=r["type"],
            body=r["body"],
            url=r["url"],
            secret=r["secret"],
            previous_secret=r["previous_secret"],
            previous_secret_until=r["previous_secret_until"],
        )
        for r in rows
    ]


def record(
    db: Database,
    claimed: Claimed,
    answer: Answer,
    *,
    node: str | None,
    schedule: Sequence[int] = SCHEDULE,
    disable_after: float = DISABLE_AFTER,
    now: float | None = None,
    rng: random.Random | None = None,
) -> Settled:
    """Record one attempt and its consequences, in one transaction.

    `node`: the lease owner that sent it (its lease is cleared); None for a
    delivery sent by hand (`smtpy webhook test`), which holds no lease.
    """
    now = time.time() if now is None else now
    settled = decide(answer, attempts=claimed.attempts, schedule=schedule, now=now, rng=rng)
    if answer.ok:
        record_delivered(db, [(claimed, answer)], now=now)
        return settled
    with db.transaction():
        db.execute(
            "INSERT INTO webhook_attempts (delivery_id, at, status_code, duration_ms,"
            " response_body, error) VALUES (:id, :at, :code, :ms, :body, :error)",
            {
                "id": claimed.id,
                "at": now,
                "code": answer.status_code,
                "ms": answer.duration_ms,
                "body": None if answer.body is None else answer.body[:RESPONSE_KEPT],
                "error": None if answer.error is None else answer.error[:500],
            },
        )
        db.execute(
            "UPDATE webhook_deliveries SET status = :status, attempts = attempts + 1,"
            " next_attempt_at = :next, lease_owner = NULL, last_status_code = :code,"
            " last_error = :error, updated_at = :now WHERE id = :id",
            {
                "status": settled.status,
                "next": settled.next_attempt_at if settled.next_attempt_at is not None else now,
                "code": answer.status_code,
                "error": None if answer.error is None else answer.error[:500],
                "now": now,
                "id": claimed.id,
            },
        )
        db.execute(
            "UPDATE webhooks SET failing_since = :now WHERE id = :id AND failing_since IS NULL",
            {"id": claimed.webhook_id, "now": now},
        )
        reason = settled.disabled
        if reason is None:
            since = db.scalar(
                "SELECT failing_since FROM webhooks WHERE id = :id", {"id": claimed.webhook_id}
            )
            if since is not None and now - float(since) >= disable_after:
                days = (now - float(since)) / 86400
                reason = f"every delivery failed for {days:.1f} days"
        if reason is not None and disable(db, claimed.webhook_id, reason=reason, now=now):
            return Settled(settled.status, settled.next_attempt_at, disabled=reason)
    return Settled(settled.status, settled.next_attempt_at)


def record_delivered(
    db: Database, delivered: Sequence[tuple[Claimed, Answer]], *, now: float | None = None
) -> None:
    """Record answers that delivered (2xx), several at once: what `record` writes for each,
    in three statements for all of them (in one transaction)."""
    if not delivered:
        return
    now = time.time() if now is None else now
    rows = [
        {
            "id": claimed.id,
            "at": now,
            "code": answer.status_code,
            "ms": answer.duration_ms,
            "body": None if answer.body is None else answer.body[:RESPONSE_KEPT],
        }
        for claimed, answer in delivered
    ]
    with db.transaction():
        db.executemany(
            "INSERT INTO webhook_attempts (delivery_id, at, status_code, duration_ms,"
            " response_body, error) VALUES (:id, :at, :code, :ms, :body, NULL)",
            rows,
        )
        db.executemany(
            "UPDATE webhook_deliveries SET status = 'delivered', attempts = attempts + 1,"
            " next_attempt_at = :at, lease_owner = NULL, last_status_code = :code,"
            " last_error = NULL, updated_at = :at WHERE id = :id",
            rows,
        )
        db.executemany(
            "UPDATE webhooks SET failing_since = NULL WHERE id = :id AND failing_since IS NOT NULL",
            [{"id": hook} for hook in sorted({claimed.webhook_id for claimed, _ in delivered})],
        )


def disable(db: Database, webhook_id: str, *, reason: str, now: float) -> bool:
    """Disable an enabled endpoint with `reason`; whether it was enabled."""
    return bool(
        db.execute(
            "UPDATE webhooks SET enabled = :no, disabled_reason = :reason, updated_at = :now"
            " WHERE id = :id AND enabled",
            {"no": False, "reason": reason[:500], "now": now, "id": webhook_id},
        )
    )


def release(db: Database, *, owners: Sequence[str], now: float | None = None) -> int:
    """Make the deliveries leased to exactly `owners` due now (a stop, or a start after a crash)."""
    if not owners:
        return 0
    names, params = in_list("o", owners)
    params["now"] = time.time() if now is None else now
    return db.execute(
        "UPDATE webhook_deliveries SET lease_owner = NULL, next_attempt_at = :now"  # noqa: S608
        " WHERE status = 'pending' AND lease_owner IN (" + names + ")",
        params,
    )


def owners_of(db: Database, *, prefix: str) -> list[str]:
    """Lease owners now holding deliveries whose names start with `prefix`."""
    return [
        str(r["lease_owner"])
        for r in db.all(
            "SELECT DISTINCT lease_owner FROM webhook_deliveries"
            " WHERE status = 'pending' AND substr(lease_owner, 1, :length) = :prefix",
            {"length": len(prefix), "prefix": prefix},
        )
    ]


def delete(db: Database, ids: Sequence[int]) -> None:
    """Delete the deliveries `ids` with their attempts, and the events they leave without
    any delivery (in the caller's transaction). Only keys are read: the events' primary
    key and the deliveries' `event_id` index, never a scan of either table."""
    if not ids:
        return
    names, params = in_list("i", ids)
    events = [
        str(r["event_id"])
        for r in db.all(
            "SELECT DISTINCT event_id FROM webhook_deliveries WHERE id IN (" + names + ")",  # noqa: S608 - placeholders only
            params,
        )
    ]
    db.execute("DELETE FROM webhook_attempts WHERE delivery_id IN (" + names + ")", params)  # noqa: S608 - placeholders only
    db.execute("DELETE FROM webhook_deliveries WHERE id IN (" + names + ")", params)  # noqa: S608 - placeholders only
    if events:
        names, params = in_list("e", events)
        db.execute(
            "DELETE FROM webhook_events WHERE id IN (" + names + ") AND NOT EXISTS"  # noqa: S608 - placeholders only
            " (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = webhook_events.id)",
            params,
        )


def prune(db: Database, *, before: float, batch: int = PRUNE_BATCH) -> int:
    """Delete up to `batch` finished deliveries made before `before` with their attempts,
    and the events left with no delivery, in one short transaction; the deliveries deleted.

    Pending deliveries stay, however old (a disabled endpoint's, kept for when it is
    enabled again)."""
    with db.transaction():
        ids = [
            int(r["id"])
            for r in db.all(
                "SELECT id FROM webhook_deliveries WHERE status <> 'pending'"
                " AND created_at < :before ORDER BY created_at LIMIT :batch",
                {"before": before, "batch": batch},
            )
        ]
        delete(db, ids)
    return len(ids)
