"""The queue in the store (smtpy.queue.queries), on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
import re
import threading
from collections.abc import Sequence
from typing import Any

import pytest

from smtpy.outbound.target import Status
from smtpy.queue.queries import (
    LEASE_SECONDS,
    AttemptResult,
    Claimed,
    NewDelivery,
    NewMessage,
    claim_due,
    enqueue,
    enqueue_claimed,
    message_data,
    new_queue_id,
    next_delay,
    record_results,
    release_leases,
    renew_leases,
)
from smtpy.store.db import Database

T = 1_700_000_000.0
SCHEDULE = (60, 300, 3600)
LIFETIME = 5 * 86400.0
_ms = itertools.count()


def message(
    *recipients: str, received_at: float = T, sender: str = "carol@sender.test"
) -> NewMessage:
    return NewMessage(
        queue_id=new_queue_id(received_at + next(_ms) / 1000),
        sender=sender,
        data=b"Subject: test\r\n\r\nhello\r\n",
        deliveries=[
            NewDelivery(
                original_recipient=f"alias{n}@example.test",
                recipient=r,
                domain=r.rpartition("@")[2],
                envelope_sender=f"SRS0=xxxx=TT=sender.test=carol@mx.test{n}",
            )
            for n, r in enumerate(recipients)
        ],
        client_ip="192.0.2.1",
        client_helo="client.test",
        received_at=received_at,
    )


def put(db: Database, *recipients: str, received_at: float = T) -> int:
    with db.transaction():
        return enqueue(db, message(*recipients, received_at=received_at))


def result(
    claim: Claimed, outcome: Status, code: int | None = 250, enhanced: str = "2.0.0"
) -> AttemptResult:
    return AttemptResult(claim, outcome, code, f"{code} {enhanced} reply", "mx.dest.test", enhanced)


def record(
    db: Database, results: Sequence[AttemptResult], *, node: str = "a", now: float
) -> list[AttemptResult]:
    with db.transaction():
        return record_results(
            db, results, node=node, schedule=SCHEDULE, lifetime=LIFETIME, now=now
        ).failed


def count(db: Database, table: str) -> int:
    return int(db.scalar(f"SELECT count(*) FROM {table}"))


def delivery(db: Database, delivery_id: int) -> dict[str, Any] | None:
    return db.one("SELECT * FROM deliveries WHERE id = :id", {"id": delivery_id})


# -- queue ids ----------------------------------------------------------------


def test_new_queue_id_sorts_by_time() -> None:
    times = [T, T + 0.001, T + 0.002, T + 1, T + 60, T + 86400 * 365, T * 2]
    ids = [new_queue_id(t) for t in times]
    assert sorted(ids) == ids
    assert all(re.fullmatch(r"[0-9A-HJKMNP-TV-Z]{16}", i) for i in ids)
    # The same millisecond: still distinct.
    assert len({new_queue_id(T) for _ in range(1000)}) == 1000
    # Later ids sort later whatever their random part.
    assert max(new_queue_id(T) for _ in range(100)) < min(
        new_queue_id(T + 0.001) for _ in range(100)
    )
    assert new_queue_id() > new_queue_id(T)


# -- enqueue and claim ----------------------------------------------------------


def test_enqueue_then_claim_returns_due_rows_once(db: Database) -> None:
    msg = message("x@dest.test", "y@other.test")
    with db.transaction():
        message_id = enqueue(db, msg)
    assert message_data(db, message_id) == msg.data
    assert count(db, "deliveries") == 2

    claimed = claim_due(db, node="a", limit=10, now=T)
    assert sorted(c.recipient for c in claimed) == ["x@dest.test", "y@other.test"]
    first = next(c for c in claimed if c.recipient == "x@dest.test")
    assert first.message_id == message_id
    assert first.queue_id == msg.queue_id
    assert first.sender == "carol@sender.test"
    assert first.original_recipient == "alias0@example.test"
    assert first.domain == "dest.test"
    assert first.envelope_sender == "SRS0=xxxx=TT=sender.test=carol@mx.test0"
    assert first.attempts == 0
    assert first.received_at == T
    assert first.smtputf8 is False
    row = delivery(db, first.id)
    assert row is not None
    assert row["lease_owner"] == "a"
    assert row["next_attempt_at"] == T + LEASE_SECONDS

    # Leased: nobody gets them again until the lease runs out.
    assert claim_due(db, node="a", limit=10, now=T + 1) == []
    assert claim_due(db, node="b", limit=10, now=T + LEASE_SECONDS - 1) == []
    again = claim_due(db, node="b", limit=10, now=T + LEASE_SECONDS)
    assert sorted(c.id for c in again) == sorted(c.id for c in claimed)
    assert {delivery(db, c.id)["lease_owner"] for c in again} == {"b"}  # type: ignore[index]


def test_enqueue_claimed_leases_the_deliveries_to_the_receiving_node(db: Database) -> None:
    msg = message("x@dest.test", "y@other.test")
    with db.transaction():
        claimed = enqueue_claimed(db, msg, node="a")
    assert sorted(c.recipient for c in claimed) == ["x@dest.test", "y@other.test"]
    first = next(c for c in claimed if c.recipient == "x@dest.test")
    assert message_data(db, first.message_id) == msg.data
    assert (first.queue_id, first.sender, first.attempts) == (msg.queue_id, msg.sender, 0)
    assert first.envelope_sender == "SRS0=xxxx=TT=sender.test=carol@mx.test0"
    assert {delivery(db, c.id)["lease_owner"] for c in claimed} == {"a"}  # type: ignore[index]

    # Nobody else takes them while node a holds the lease; if a dies, anyone does.
    assert claim_due(db, node="b", limit=10, now=T + LEASE_SECONDS - 1) == []
    again = claim_due(db, node="b", limit=10, now=T + LEASE_SECONDS)
    assert sorted(c.id for c in again) == sorted(c.id for c in claimed)
    # What the claim reads back is what the receiving node had in memory.
    assert sorted(again, key=lambda c: c.id) == sorted(claimed, key=lambda c: c.id)


def test_rows_not_yet_due_are_not_claimed(db: Database) -> None:
    put(db, "x@dest.test", received_at=T + 10)
    assert claim_due(db, node="a", limit=10, now=T) == []
    assert len(claim_due(db, node="a", limit=10, now=T + 10)) == 1


def test_claim_respects_limit_and_takes_the_oldest_first(db: Database) -> None:
    for n in range(5):
        put(db, f"r{n}@dest.test", received_at=T + n)
    batches = [claim_due(db, node="a", limit=2, now=T + 10) for _ in range(4)]
    assert [{c.recipient for c in b} for b in batches] == [
        {"r0@dest.test", "r1@dest.test"},
        {"r2@dest.test", "r3@dest.test"},
        {"r4@dest.test"},
        set(),
    ]


def test_claim_leaves_deliveries_to_excluded_domains_in_the_queue(db: Database) -> None:
    put(db, "a@busy.test", received_at=T)
    put(db, "b@other.test", received_at=T + 1)
    put(db, "c@third.test", received_at=T + 2)
    claimed = claim_due(
        db, node="a", limit=10, exclude_domains=["busy.test", "third.test"], now=T + 5
    )
    assert [c.recipient for c in claimed] == ["b@other.test"]
    assert [c.recipient for c in claim_due(db, node="a", limit=10, now=T + 5)] == [
        "a@busy.test",
        "c@third.test",
    ]


def test_a_failed_inner_transaction_undoes_only_itself(db: Database) -> None:
    with db.transaction():
        put(db, "kept@dest.test")
        with pytest.raises(ValueError), db.transaction():
            put(db, "undone@dest.test")
            raise ValueError("inner")
        put(db, "also-kept@dest.test")
    recipients = {row["recipient"] for row in db.all("SELECT recipient FROM deliveries")}
    assert recipients == {"kept@dest.test", "also-kept@dest.test"}


def test_smtputf8_flag_comes_back(db: Database) -> None:
    msg = message("jörg@dest.test")
    msg.smtputf8 = True
    with db.transaction():
        enqueue(db, msg)
    [claim] = claim_due(db, node="a", limit=1, now=T)
    assert claim.smtputf8 is True
    assert claim.recipient == "jörg@dest.test"


# -- leases -------------------------------------------------------------------


def test_release_leases_makes_this_nodes_rows_due_now(db: Database) -> None:
    for n in range(3):
        put(db, f"r{n}@dest.test")
    mine = claim_due(db, node="a", limit=2, now=T)
    theirs = claim_due(db, node="b", limit=2, now=T)
    assert (len(mine), len(theirs)) == (2, 1)

    assert release_leases(db, node="a", ids=[], now=T + 1) == 0
    assert release_leases(db, node="a", ids=[mine[0].id], now=T + 1) == 1
    assert release_leases(db, node="a", ids=[theirs[0].id], now=T + 1) == 0  # not ours
    assert release_leases(db, node="a", now=T + 1) == 1  # the rest of ours
    row = delivery(db, mine[1].id)
    assert row is not None
    assert (row["lease_owner"], row["next_attempt_at"]) == (None, T + 1)

    again = claim_due(db, node="c", limit=10, now=T + 1)
    assert sorted(c.id for c in again) == sorted(c.id for c in mine)


def test_renew_leases_keeps_rows_in_flight(db: Database) -> None:
    put(db, "x@dest.test")
    [claim] = claim_due(db, node="a", limit=1, now=T)
    renew_leases(db, node="a", ids=[], now=T + 80)  # nothing to do
    renew_leases(db, node="b", ids=[claim.id], now=T + 80)  # not b's: no effect
    assert delivery(db, claim.id)["next_attempt_at"] == T + LEASE_SECONDS  # type: ignore[index]
    renew_leases(db, node="a", ids=[claim.id], now=T + 80)
    assert claim_due(db, node="b", limit=1, now=T + 80 + LEASE_SECONDS - 1) == []
    assert len(claim_due(db, node="b", limit=1, now=T + 80 + LEASE_SECONDS)) == 1


# -- results ------------------------------------------------------------------


def test_delivered_removes_the_row_and_the_message_when_nothing_is_pending(db: Database) -> None:
    message_id = put(db, "x@dest.test", "y@dest.test")
    first, second = claim_due(db, node="a", limit=10, now=T)
    assert record(db, [result(first, "delivered")], now=T + 1) == []
    assert delivery(db, first.id) is None
    assert count(db, "attempts") == 0  # a finished delivery takes its attempts along
    assert message_data(db, message_id) is not None  # y is still pending

    record(db, [result(second, "delivered")], now=T + 2)
    assert count(db, "deliveries") == 0
    assert count(db, "messages") == 0


def test_deferred_sets_the_next_attempt_from_the_schedule(db: Database) -> None:
    put(db, "x@dest.test")
    now = T
    for attempt, delay in enumerate([60, 300, 3600, 3600], start=1):
        [claim] = claim_due(db, node="a", limit=1, now=now)
        assert claim.attempts == attempt - 1
        assert record(db, [result(claim, "deferred", 451, "4.3.0")], now=now + 5) == []
        row = delivery(db, claim.id)
        assert row is not None
        assert row["attempts"] == attempt
        assert row["next_attempt_at"] == now + 5 + delay
        assert row["lease_owner"] is None
        assert (row["last_code"], row["last_error"]) == (451, "451 4.3.0 reply")
        assert claim_due(db, node="a", limit=1, now=now + 5 + delay - 1) == []
        now += 5 + delay
    attempts = db.all("SELECT * FROM attempts ORDER BY id")
    assert [a["result"] for a in attempts] == ["deferred"] * 4
    assert {(a["code"], a["remote_host"], a["reply"]) for a in attempts} == {
        (451, "mx.dest.test", "451 4.3.0 reply")
    }

    [claim] = claim_due(db, node="a", limit=1, now=now)
    record(db, [result(claim, "delivered")], now=now + 1)  # the fifth attempt succeeds
    assert count(db, "deliveries") == count(db, "messages") == count(db, "attempts") == 0


def test_next_delay_repeats_the_last_step() -> None:
    assert [next_delay(SCHEDULE, n) for n in range(6)] == [60, 60, 300, 3600, 3600, 3600]


def test_deferred_beyond_the_lifetime_fails(db: Database) -> None:
    put(db, "x@dest.test", "y@dest.test")
    late = T + LIFETIME
    first, second = claim_due(db, node="a", limit=10, now=late)
    failed = record(
        db,
        [result(first, "deferred", 451, "4.4.1"), result(second, "deferred", None, "5.0.0")],
        now=late,
    )
    assert [(f.result, f.enhanced) for f in failed] == [("failed", "4.4.7"), ("failed", "5.0.0")]
    assert [f.delivery.id for f in failed] == [first.id, second.id]
    assert count(db, "deliveries") == count(db, "messages") == count(db, "attempts") == 0


def test_failed_is_returned_for_a_bounce_and_removed(db: Database) -> None:
    message_id = put(db, "x@dest.test", "y@dest.test")
    first, second = claim_due(db, node="a", limit=10, now=T)
    failed = record(
        db, [result(first, "failed", 550, "5.1.1"), result(second, "deferred", 451, "4.3.0")], now=T
    )
    assert [(f.delivery.id, f.result, f.code) for f in failed] == [(first.id, "failed", 550)]
    assert delivery(db, first.id) is None
    assert delivery(db, second.id) is not None
    assert message_data(db, message_id) is not None
    attempts = db.all("SELECT delivery_id, result, code FROM attempts")
    assert attempts == [{"delivery_id": second.id, "result": "deferred", "code": 451}]


def test_a_node_that_lost_its_lease_does_not_reschedule(db: Database) -> None:
    put(db, "x@dest.test")
    [stale] = claim_due(db, node="a", limit=1, now=T)
    [current] = claim_due(db, node="b", limit=1, now=T + LEASE_SECONDS)
    record(db, [result(stale, "deferred", 451, "4.3.0")], node="a", now=T + LEASE_SECONDS + 1)
    row = delivery(db, current.id)
    assert row is not None
    assert (row["lease_owner"], row["attempts"]) == ("b", 0)


def test_results_for_a_delivery_that_vanished_do_not_sink_the_others(db: Database) -> None:
    put(db, "x@dest.test")
    put(db, "y@dest.test")
    gone, kept = claim_due(db, node="a", limit=10, now=T)
    # An admin deleted the first message while it was in flight (`smtpy queue delete`).
    with db.transaction():
        db.execute("DELETE FROM deliveries WHERE id = :id", {"id": gone.id})
        db.execute("DELETE FROM messages WHERE id = :id", {"id": gone.message_id})
    failed = record(
        db, [result(gone, "failed", 550, "5.1.1"), result(kept, "delivered")], now=T + 1
    )
    assert failed == []  # nobody to bounce for: the delivery is gone
    assert count(db, "deliveries") == count(db, "messages") == count(db, "attempts") == 0

    put(db, "z@dest.test")
    [deferred] = claim_due(db, node="a", limit=10, now=T + 2)
    db.execute("DELETE FROM deliveries WHERE id = :id", {"id": deferred.id})
    assert record(db, [result(deferred, "deferred", 451, "4.3.0")], now=T + 3) == []
    assert count(db, "attempts") == 0


# -- several nodes ------------------------------------------------------------


def test_concurrent_claims_never_share_a_row(store_url: str, db: Database) -> None:
    """Two connections claim at once; each row goes to exactly one (SKIP LOCKED on PostgreSQL)."""
    total = 300
    with db.transaction():
        for n in range(total // 3):
            enqueue(db, message(*(f"r{n}-{k}@dest.test" for k in range(3))))
    start = threading.Barrier(3)
    claims: dict[str, list[int]] = {"a": [], "b": [], "c": []}
    errors: list[BaseException] = []

    def claimer(node: str) -> None:
        try:
            with Database(store_url) as conn:
                start.wait(timeout=10)
                empty = 0
                while empty < 3:
                    got = claim_due(conn, node=node, limit=7, now=T)
                    claims[node].extend(c.id for c in got)
                    empty = 0 if got else empty + 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(node,)) for node in claims]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    everything = [i for ids in claims.values() for i in ids]
    assert len(everything) == len(set(everything)) == total
    owners = db.all("SELECT id, lease_owner FROM deliveries")
    by_owner = {row["id"]: row["lease_owner"] for row in owners}
    for node, ids in claims.items():
        assert {by_owner[i] for i in ids} <= {node}


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
def test_claim_skips_rows_locked_by_another_node(store_url: str, db: Database) -> None:
    """While another node holds rows locked, a claim takes the others at once, never waits."""
    for n in range(4):
        put(db, f"r{n}@dest.test", received_at=T + n)
    with Database(store_url) as other:
        other.execute("SET statement_timeout = '5s'")  # waiting would fail instead of hang
        with db.transaction():
            db.all("SELECT id FROM deliveries ORDER BY next_attempt_at LIMIT 2 FOR UPDATE")
            got = claim_due(other, node="b", limit=10, now=T + 10)
            assert {c.recipient for c in got} == {"r2@dest.test", "r3@dest.test"}
        got = claim_due(other, node="b", limit=10, now=T + 10)
        assert {c.recipient for c in got} == {"r0@dest.test", "r1@dest.test"}
