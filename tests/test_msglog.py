"""The message log: rows built from pipeline decisions, batched writes, pruning, upkeep."""

from __future__ import annotations

import asyncio
import time

from smtpy.checks.recipients import Accepted
from smtpy.queue.message_log import (
    EventBuffer,
    LogEvent,
    delivery_events,
    prune,
    received_events,
    rejected_event,
    write_events,
)
from smtpy.queue.nodes import NodeInfo, claim, list_nodes
from smtpy.queue.queries import AttemptResult, Claimed
from smtpy.queue.writer import StoreThread
from smtpy.runtime.upkeep import Upkeep
from smtpy.store.db import Database


def claimed(n: int, *, received_at: float = 1000.0, alias: str = "team@example.org") -> Claimed:
    return Claimed(
        id=n,
        message_id=1,
        queue_id="Q1",
        original_recipient=alias,
        recipient=f"dest{n}@elsewhere.test",
        domain="elsewhere.test",
        envelope_sender="SRS0=x@mx.test",
        attempts=0,
        sender="alice@sender.test",
        received_at=received_at,
        smtputf8=False,
    )


def test_received_rows_one_per_recipient_and_discards_marked() -> None:
    accepted = [
        Accepted("team@example.org", "example.org", ("a@x.test", "b@y.test"), "exact", "team"),
        Accepted("spam@example.org", "example.org", (), "exact", "spam"),
    ]
    rows = received_events(
        queue_id="Q1", client_ip="192.0.2.1", sender="", size=1234, accepted=accepted, at=5.0
    )
    assert [(r.event, r.alias, r.recipient, r.reason) for r in rows] == [
        ("received", "team@example.org", "a@x.test, b@y.test", None),
        ("discarded", "spam@example.org", None, "alias_discard"),
    ]
    assert {(r.queue_id, r.client_ip, r.sender, r.size, r.domain, r.at) for r in rows} == {
        ("Q1", "192.0.2.1", "", 1234, "example.org", 5.0)
    }


def test_rejection_row_keeps_reason_code_and_normalized_recipient() -> None:
    row = rejected_event(
        reason="unknown_user",
        reply="550 5.1.1 Recipient address rejected: no such user here",
        client_ip="192.0.2.1",
        sender="<>",
        recipient="Nobody@BÜCHER.example",
        at=7.0,
    )
    assert (row.event, row.reason, row.code, row.sender) == ("rejected", "unknown_user", 550, "")
    assert (row.alias, row.domain) == ("Nobody@xn--bcher-kva.example", "xn--bcher-kva.example")
    garbage = rejected_event(
        reason="bad_address", reply="501 x", client_ip=None, sender=None, recipient="not an address"
    )
    assert (garbage.alias, garbage.domain) == ("not an address", None)


def test_delivery_rows_say_delivered_deferred_bounced_and_expired() -> None:
    delivered = AttemptResult(claimed(1), "delivered", 250, "2.0.0 Ok", "mx[192.0.2.9]", "2.0.0")
    deferred = AttemptResult(claimed(2), "deferred", 451, "4.2.0 busy", "mx", "4.2.0")
    failed = AttemptResult(claimed(3), "failed", 550, "5.1.1 unknown", "mx", "5.1.1")
    expired_try = AttemptResult(claimed(4), "deferred", 451, "4.2.0 busy", "mx", "4.2.0")
    expired = AttemptResult(claimed(4), "failed", 451, "4.2.0 busy", "mx", "4.4.7")
    rows = delivery_events([delivered, deferred, failed, expired_try], [failed, expired], at=1010.0)
    assert [(r.event, r.recipient, r.reason, r.delay) for r in rows] == [
        ("delivered", "dest1@elsewhere.test", None, 10.0),
        ("deferred", "dest2@elsewhere.test", None, None),
        ("bounced", "dest3@elsewhere.test", None, 10.0),
        ("bounced", "dest4@elsewhere.test", "expired", 10.0),
    ]
    assert rows[0].domain == "example.org"  # the served domain of the alias, not the destination's
    assert (rows[0].code, rows[0].remote_host, rows[0].queue_id) == (250, "mx[192.0.2.9]", "Q1")


def test_buffer_keeps_the_newest_rows_and_counts_what_it_dropped() -> None:
    full: list[int] = []
    buffer = EventBuffer(flush_rows=3, max_rows=4)
    buffer.on_full(lambda: full.append(len(buffer)))
    for n in range(6):
        buffer.add(LogEvent(at=float(n), event="rejected"))
    assert full == [3]
    assert buffer.dropped == 2
    rows = buffer.take()
    assert [r.at for r in rows] == [2.0, 3.0, 4.0, 5.0]
    assert len(buffer) == 0
    buffer.add(LogEvent(at=9.0, event="rejected"))
    buffer.put_back(rows[:2])
    assert [r.at for r in buffer.take()] == [2.0, 3.0, 9.0]


def test_write_and_prune_in_batches(db: Database) -> None:
    write_events(db, [LogEvent(at=float(n), event="received") for n in range(25)])
    assert db.scalar("SELECT count(*) FROM message_log") == 25
    assert prune(db, before=20.0, batch=8) == 8
    assert prune(db, before=20.0, batch=8) == 8
    assert prune(db, before=20.0, batch=8) == 4
    assert prune(db, before=20.0, batch=8) == 0
    assert [r["at"] for r in db.all("SELECT at FROM message_log ORDER BY at")] == [
        float(n) for n in range(20, 25)
    ]


def test_pruning_keeps_the_newest_row_so_sqlite_never_gives_an_id_again(db: Database) -> None:
    write_events(db, [LogEvent(at=float(n), event="received") for n in range(3)])
    newest = db.scalar("SELECT max(id) FROM message_log")
    assert prune(db, before=100.0) == 2  # all are old; the newest stays
    write_events(db, [LogEvent(at=200.0, event="received")])
    assert db.scalar("SELECT max(id) FROM message_log") == newest + 1


def test_upkeep_writes_buffered_rows_beats_and_prunes(store_url: str) -> None:
    now = time.time()

    async def scenario() -> None:
        store = StoreThread(store_url, name="writer")
        store.start()
        try:
            await store.call(
                lambda db: write_events(
                    db,
                    [LogEvent(at=now - 40 * 86400, event="received")] * 3
                    + [LogEvent(at=now - 86400, event="received")],
                )
            )
            node = NodeInfo("mx1", started_at=now)
            await store.call(lambda db: claim(db, node, now=now))
            upkeep = Upkeep(store, node=node, retention_days=30, flush_seconds=0.05)
            upkeep.events.add(LogEvent(at=now, event="rejected", reason="relay"))
            upkeep.start()
            for _ in range(100):  # bounded: 5 s
                if await store.call(lambda db: db.scalar("SELECT count(*) FROM message_log")) == 2:
                    break
                await asyncio.sleep(0.05)
            [node] = await store.call(list_nodes)
            assert (node["name"], node["stopped_at"]) == ("mx1", None)
            assert node["seen_at"] >= now
            upkeep.events.add(LogEvent(at=now, event="rejected", reason="unknown_user"))
            await upkeep.stop()
            rows = await store.call(
                lambda db: db.all("SELECT event, reason FROM message_log ORDER BY at, id")
            )
            assert rows == [
                {"event": "received", "reason": None},  # a day old: kept
                {"event": "rejected", "reason": "relay"},
                {"event": "rejected", "reason": "unknown_user"},  # written at stop
            ]
            [node] = await store.call(list_nodes)
            assert node["stopped_at"] is not None
        finally:
            store.stop()

    asyncio.run(scenario())
