"""Fallback destinations: where a message goes when a destination of its alias fails for good.

An alias may name ordered fallbacks. Every delivery made for it carries that
chain (`deliveries.fallbacks`, written at enqueue); the message remembers which
fallbacks it was handed to and how that went (`messages.fallbacks_tried`). The
rule, decided by `next_step` alone:

- A destination that fails for good (a permanent refusal, or deferrals until
  the queue lifetime ran out) is replaced by the first fallback of the chain
  that this message was not handed to yet and that is not among its pending
  deliveries: a new delivery to it, due at once, with a lifetime of its own.
  The sender gets no DSN; the message log says `deferred`, reason `fallback`.
- Each fallback is tried at most once per message: when two destinations of
  the alias fail, the second goes to the next fallback, never to the same one.
- With every fallback of the chain taken, a failure is covered while one of
  them still has the message or delivered it: no DSN, nothing new queued.
- Only when every fallback of the chain failed does the failure bounce: the
  DSN names the original recipient, and the log says `bounced`
  (`message.bounced`) once, for that last failure.

A fallback is a final address: it is delivered as written, never through
alias rules (the admin service refuses fallbacks on served domains).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from smtpy.mail.addresses import local_key, split_address
from smtpy.mail.parsed import destination_domain, is_url

if TYPE_CHECKING:
    from smtpy.queue.queries import Claimed
    from smtpy.store.db import Database

State = Literal["queued", "delivered", "failed"]

_TRIED = "SELECT fallbacks_tried FROM messages WHERE id = :m"
_TRIED_FOR_UPDATE = _TRIED + " FOR UPDATE"


@dataclass(frozen=True, slots=True)
class Step:
    """What a destination that failed for good leads to, when not a bounce.

    next     handed to `address`, a new delivery due now
    covered  `address`, a fallback of the chain, has the message or delivered it
    """

    kind: Literal["next", "covered"]
    address: str


def key(address: str) -> str:
    """An address as the chain compares them: the local part case-folded; a URL as given."""
    if is_url(address):
        return address
    local, domain = split_address(address)
    return f"{local_key(local)}@{domain}"


def next_step(
    chain: Sequence[str], tried: Mapping[str, State], pending: Collection[str]
) -> Step | None:
    """Where a failure goes: the next fallback, one that covers it, or None (it bounces).

    `tried` maps the keys of the fallbacks this message was handed to, to how
    that went; `pending` holds the keys of the message's deliveries still queued.
    """
    for address in chain:
        if key(address) not in tried and key(address) not in pending:
            return Step("next", address)
    for address in chain:
        if tried.get(key(address)) in ("queued", "delivered") or key(address) in pending:
            return Step("covered", address)
    return None


def is_fallback(recipient: str, chain: Sequence[str]) -> bool:
    """Whether a delivery to `recipient` is one of the chain's fallbacks (not a destination)."""
    return key(recipient) in {key(a) for a in chain}


# -- the store ---------------------------------------------------------------------------


def settle(
    db: Database, delivery: Claimed, chain: Sequence[str], *, failed: bool, now: float
) -> Step | None:
    """Settle a final outcome of a delivery whose alias has fallbacks (inside the caller's
    transaction, the delivery's row already deleted).

    A fallback that delivered or failed is remembered on the message. A failure
    returns the step that replaces its bounce (a new delivery is queued for
    `next`), or None when it bounces.
    """
    own = is_fallback(delivery.recipient, chain)
    if not failed and not own:
        return None
    # One settler at a time per message: two nodes failing two destinations at once
    # must not hand both to the same fallback.
    row = db.one(
        _TRIED_FOR_UPDATE if db.dialect == "postgresql" else _TRIED, {"m": delivery.message_id}
    )
    if row is None:
        return None  # removed meanwhile (an admin): nothing left to replace
    tried: dict[str, State] = json.loads(row["fallbacks_tried"] or "{}")
    if own:
        tried[key(delivery.recipient)] = "failed" if failed else "delivered"
    step = None
    if failed:
        pending = {
            key(str(r["recipient"]))
            for r in db.all(
                "SELECT recipient FROM deliveries WHERE message_id = :m",
                {"m": delivery.message_id},
            )
        }
        step = next_step(chain, tried, pending)
        if step is not None and step.kind == "next":
            tried[key(step.address)] = "queued"
            _queue(db, delivery, step.address, chain, now)
    db.execute(
        "UPDATE messages SET fallbacks_tried = :tried WHERE id = :m",
        {"tried": json.dumps(tried, ensure_ascii=False), "m": delivery.message_id},
    )
    return step


def _queue(db: Database, failed: Claimed, address: str, chain: Sequence[str], now: float) -> None:
    """A delivery to `address` in place of `failed`, due now, reckoned from now; held
    (status `unconfirmed`, never sent) while its owner has not confirmed `address`, like
    a destination's (`smtpy.admin.destinations.release_waiting` makes it due)."""
    from smtpy.queue.queries import UNCONFIRMED_REPLY

    waiting = _awaiting_confirmation(db, failed.original_recipient, address)
    db.execute(
        "INSERT INTO deliveries (message_id, original_recipient, recipient, domain,"
        " envelope_sender, status, attempts, next_attempt_at, lease_owner, last_error,"
        " fallbacks, created_at, updated_at) VALUES (:message_id, :original_recipient,"
        " :recipient, :domain, :envelope_sender, :status, 0, :now, NULL, :error, :fallbacks,"
        " :now, :now)",
        {
            "message_id": failed.message_id,
            "original_recipient": failed.original_recipient,
            "recipient": address,
            "domain": destination_domain(address),
            "envelope_sender": failed.envelope_sender,
            "status": "unconfirmed" if waiting else "queued",
            "error": UNCONFIRMED_REPLY if waiting else None,
            "fallbacks": json.dumps(list(chain), ensure_ascii=False),
            "now": now,
        },
    )


def _awaiting_confirmation(db: Database, original_recipient: str, address: str) -> bool:
    """Whether the organization of the alias's domain holds `address` as a destination
    its owner has not confirmed yet (a URL is confirmed by the admin who adds it)."""
    if is_url(address):
        return False
    return (
        db.scalar(
            "SELECT 1 FROM destinations d JOIN domains m ON m.organization_id = d.organization_id"
            " WHERE m.name = :domain AND d.kind = 'address' AND d.address_key = :key"
            " AND d.confirmed_at IS NULL",
            {"domain": split_address(original_recipient)[1], "key": key(address)},
        )
        is not None
    )
