"""The message log: every decision about a message, recorded in the store, never the body.

Events: `received` (one row per accepted recipient, with its destinations),
`rejected` (with a reason key: unknown_user, relay, too_big, loop, …),
`delivered` (the remote host and its reply, and the delay since reception),
`deferred`, `bounced` and `discarded`. A destination that failed for good and went
to a fallback instead is `deferred` with reason `fallback`, its reply saying which
fallback has the message now (`smtpy.queue.fallbacks`); only the last failure of a
chain is `bounced`.

Writing them costs no transaction of its own on the hot path:

- a received message's rows ride in the message's own commit (`NewMessage.log`,
  written by `smtpy.queue.queries.enqueue` inside the group commit);
- delivery results are written in the transaction that records them
  (`smtpy.queue.scheduler.DeliveryWorker._settle`);
- events with no transaction to join (RCPT-time rejections, a message whose
  recipients all discard it) wait in an `EventBuffer` that the daemon's upkeep
  hands to the writer's next group commit at most every second, or sooner once
  it holds `FLUSH_ROWS` rows.

The webhook events of these rows (`message.*`) are made from them afterwards, out of
those commits (`smtpy.queue.event_feed`).

The pure functions here build rows from what the pipeline already knows; only
`write_events` and `prune` touch the store.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from smtpy.checks.recipients import Accepted
    from smtpy.queue.fallbacks import Step
    from smtpy.queue.queries import AttemptResult
    from smtpy.store.db import Database

EVENTS = ("received", "rejected", "delivered", "deferred", "bounced", "discarded")

FLUSH_ROWS = 500  # buffered rows that trigger a write before the second is up
MAX_BUFFERED = 50_000  # beyond this (the store is down) the oldest buffered rows are dropped
PRUNE_BATCH = 2_000  # rows deleted per transaction when pruning


@dataclass(frozen=True, slots=True)
class LogEvent:
    """One row of the message log."""

    at: float
    event: str
    queue_id: str | None = None
    client_ip: str | None = None
    sender: str | None = None
    alias: str | None = None  # the address the sender used (original recipient)
    recipient: str | None = None  # where it goes
    domain: str | None = None  # the served domain the event belongs to, A-label
    size: int | None = None
    reason: str | None = None
    code: int | None = None
    reply: str | None = None
    remote_host: str | None = None
    delay: float | None = None  # seconds from reception to this outcome


LOG_FIELDS = tuple(LogEvent.__dataclass_fields__)  # the columns a row is written with
_INSERT = (  # the column names are the dataclass's fields
    f"INSERT INTO message_log ({', '.join(LOG_FIELDS)})"  # noqa: S608
    f" VALUES ({', '.join(':' + c for c in LOG_FIELDS)})"
)


def _domain_of(address: str | None) -> str | None:
    if not address or "@" not in address:
        return None
    return address.rpartition("@")[2].lower()[:253]


def _canonical(address: str) -> str:
    """`local@a-label` as the log stores addresses, or the text as given if it is no address."""
    from smtpy.errors import InvalidInput
    from smtpy.mail.addresses import parse_address

    try:
        return str(parse_address(address))
    except InvalidInput:
        return address


def _clip(text: str | None, limit: int) -> str | None:
    return None if text is None else text[:limit]


# -- building rows (pure) ----------------------------------------------------------------


def received_events(
    *,
    queue_id: str,
    client_ip: str | None,
    sender: str,
    size: int,
    accepted: Iterable[Accepted],
    at: float,
) -> list[LogEvent]:
    """Rows for a message accepted at DATA: `received` per recipient, `discarded` for discards."""
    rows = []
    for recipient in accepted:
        rows.append(
            LogEvent(
                at=at,
                event="received" if recipient.destinations else "discarded",
                queue_id=queue_id,
                client_ip=client_ip,
                sender=_clip(sender, 600),
                alias=_clip(recipient.original, 600),
                recipient=_clip(", ".join(recipient.destinations), 600) or None,
                domain=recipient.alias_domain,
                size=size,
                reason=None if recipient.destinations else "alias_discard",
            )
        )
    return rows


def rejected_event(
    *,
    reason: str,
    reply: str,
    client_ip: str | None,
    sender: str | None,
    recipient: str | None = None,
    size: int | None = None,
    queue_id: str | None = None,
    at: float | None = None,
) -> LogEvent:
    """A refusal we answered with `reply` (a 4xx or 5xx line)."""
    code = reply[:3]
    if recipient is not None:
        recipient = _canonical(recipient)
    return LogEvent(
        at=time.time() if at is None else at,
        event="rejected",
        queue_id=queue_id,
        client_ip=client_ip,
        sender=_clip("" if sender == "<>" else sender, 600),
        alias=_clip(recipient, 600),
        domain=_domain_of(recipient),
        size=size,
        reason=reason[:32],
        code=int(code) if code.isdigit() else None,
        reply=_clip(reply, 1000),
    )


def delivery_events(
    results: Sequence[AttemptResult],
    failed: Sequence[AttemptResult],
    *,
    at: float,
    fallbacks: Mapping[int, Step] | None = None,
) -> list[LogEvent]:
    """Rows for delivery attempts: delivered, deferred, or bounced (those in `failed`,
    which include deferrals that outlived the queue lifetime); a failure that went to a
    fallback (in `fallbacks`, by delivery id) is deferred, reason `fallback`."""
    bounced = {r.delivery.id for r in failed}
    rows = []
    for r in results:
        d = r.delivery
        step = fallbacks.get(d.id) if fallbacks else None
        if step is not None:
            rows.append(_fallback_event(r, step, at))
            continue
        event = "bounced" if d.id in bounced else r.result
        if event == "failed":
            event = "bounced"
        rows.append(
            LogEvent(
                at=at,
                event=event,
                queue_id=d.queue_id,
                sender=_clip(d.sender, 600),
                alias=_clip(d.original_recipient, 600),
                recipient=_clip(d.recipient, 600),
                domain=_domain_of(d.original_recipient),
                reason="expired" if event == "bounced" and r.result == "deferred" else None,
                code=r.code,
                reply=_clip(r.reply, 1000),
                remote_host=_clip(r.remote_host, 300),
                delay=None if event == "deferred" else max(0.0, at - d.received_at),
            )
        )
    return rows


def _fallback_event(r: AttemptResult, step: Step, at: float) -> LogEvent:
    d = r.delivery
    then = (
        f"next: fallback {step.address}"
        if step.kind == "next"
        else f"fallback {step.address} has the message"
    )
    return LogEvent(
        at=at,
        event="deferred",
        queue_id=d.queue_id,
        sender=_clip(d.sender, 600),
        alias=_clip(d.original_recipient, 600),
        recipient=_clip(d.recipient, 600),
        domain=_domain_of(d.original_recipient),
        reason="fallback",
        code=r.code,
        reply=_clip(f"{r.reply} ({then})", 1000),
        remote_host=_clip(r.remote_host, 300),
    )


# -- the store ---------------------------------------------------------------------------


def write_events(db: Database, events: Sequence[LogEvent]) -> None:
    """Insert rows (inside the caller's transaction, or on their own in autocommit)."""
    if events:
        db.executemany(_INSERT, [{c: getattr(e, c) for c in LOG_FIELDS} for e in events])


def prune(db: Database, *, before: float, batch: int = PRUNE_BATCH) -> int:
    """Delete up to `batch` rows older than `before` in one short transaction; the count.

    The newest row stays, however old: SQLite gives a new row the highest id plus one,
    and the webhook feed's cursor must never see an id again (`event_feed`)."""
    return db.execute(
        "DELETE FROM message_log WHERE id IN"
        " (SELECT id FROM message_log WHERE at < :before"
        " AND id < (SELECT max(id) FROM message_log) ORDER BY at LIMIT :batch)",
        {"before": before, "batch": batch},
    )


def refresh_statistics(db: Database) -> None:
    """Let SQLite's planner know the log's shape (cheap: a sampled ANALYZE), so the stats
    queries read their covering indexes; PostgreSQL's autovacuum does this by itself."""
    if db.dialect == "sqlite":
        db.execute("PRAGMA analysis_limit = 1000")
        db.execute("ANALYZE message_log")


class EventBuffer:
    """Events with no transaction to join, kept in memory until the upkeep writes them.

    `add` is called on the event loop and costs an append; `take` hands the rows
    over for one write. If the store stays unreachable the buffer keeps the
    newest `MAX_BUFFERED` rows and counts what it dropped.
    """

    def __init__(self, *, flush_rows: int = FLUSH_ROWS, max_rows: int = MAX_BUFFERED) -> None:
        self.flush_rows = flush_rows
        self._rows: deque[LogEvent] = deque(maxlen=max_rows)
        self.dropped = 0
        self._on_full: Callable[[], None] | None = None

    def __len__(self) -> int:
        return len(self._rows)

    def on_full(self, callback: Callable[[], None]) -> None:
        """Call `callback()` when `flush_rows` rows are waiting (the upkeep's wake-up)."""
        self._on_full = callback

    def add(self, event: LogEvent) -> None:
        if len(self._rows) == self._rows.maxlen:
            self.dropped += 1
        self._rows.append(event)
        if self._on_full is not None and len(self._rows) == self.flush_rows:
            self._on_full()

    def extend(self, events: Iterable[LogEvent]) -> None:
        for event in events:
            self.add(event)

    def take(self) -> list[LogEvent]:
        rows = list(self._rows)
        self._rows.clear()
        return rows

    def put_back(self, rows: Sequence[LogEvent]) -> None:
        """Rows a failed write returns, ahead of what arrived meanwhile."""
        self._rows.extendleft(reversed(rows))
