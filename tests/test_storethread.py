"""The store thread (smtpy.queue.writer): group commit, isolation of bad messages, errors."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import POSTGRES_URL, postgres_admin
from smtpy.errors import Conflict, StoreError
from smtpy.queue.queries import NewDelivery, NewMessage, new_queue_id
from smtpy.queue.writer import StoreThread
from smtpy.store.db import Database


def message(n: int, *, queue_id: str | None = None, recipients: int = 2) -> NewMessage:
    return NewMessage(
        queue_id=queue_id or new_queue_id(),
        sender=f"sender{n}@sender.test",
        data=b"Subject: %d\r\n\r\nbody %d\r\n" % (n, n),
        deliveries=[
            NewDelivery(
                original_recipient=f"alias{n}@example.test",
                recipient=f"r{n}-{k}@dest.test",
                domain="dest.test",
                envelope_sender=f"SRS0=hash=TT=sender.test=sender{n}@mx.test",
            )
            for k in range(recipients)
        ],
    )


def counts(url: str) -> tuple[int, int]:
    """(messages, deliveries), read through a new connection."""
    with Database(url) as db:
        return (
            int(db.scalar("SELECT count(*) FROM messages")),
            int(db.scalar("SELECT count(*) FROM deliveries")),
        )


@pytest.fixture
def store(store_url: str) -> Iterator[StoreThread]:
    thread = StoreThread(store_url, name="test")
    thread.start()
    yield thread
    thread.stop()


async def held(store: StoreThread, *jobs: Awaitable[Any]) -> list[object]:
    """Run `jobs` while the store thread is busy, so they all wait in its queue together."""
    release = threading.Event()
    blocker = asyncio.ensure_future(store.call(lambda db: release.wait(10)))
    tasks = [asyncio.ensure_future(job) for job in jobs]
    for _ in range(3):
        await asyncio.sleep(0)  # every task has put its job in the queue
    release.set()
    await blocker
    results: list[object] = await asyncio.gather(*tasks, return_exceptions=True)
    return results


def test_concurrent_enqueues_are_durable_and_share_commits(
    store_url: str, store: StoreThread
) -> None:
    total = 200

    async def scenario() -> None:
        await asyncio.gather(*(store.enqueue(message(n)) for n in range(total)))

    asyncio.run(scenario())
    assert 1 <= store.commits < total // 4  # group commit: many messages per transaction
    store.stop()
    assert counts(store_url) == (total, 2 * total)


def test_messages_waiting_together_are_committed_in_one_transaction(
    store_url: str, store: StoreThread
) -> None:
    results = asyncio.run(held(store, *(store.enqueue(message(n)) for n in range(50))))
    assert results == [None] * 50
    assert store.commits == 1
    assert counts(store_url) == (50, 100)


def test_a_bad_message_fails_only_itself(store_url: str, store: StoreThread) -> None:
    taken = new_queue_id()
    messages = [message(n) for n in range(20)]
    messages[7] = message(7, queue_id=messages[3].queue_id)  # UNIQUE(queue_id) in the same batch
    messages[12] = message(12, queue_id=taken)

    async def scenario() -> list[object]:
        await store.enqueue(message(99, queue_id=taken))
        return await held(store, *(store.enqueue(m) for m in messages))

    results = asyncio.run(scenario())
    failed = [n for n, r in enumerate(results) if r is not None]
    assert failed == [7, 12]
    assert all(isinstance(results[n], Conflict) for n in failed), results
    assert counts(store_url) == (19, 38)
    with Database(store_url) as db:
        kept = db.scalar(
            "SELECT sender FROM messages WHERE queue_id = :q", {"q": messages[3].queue_id}
        )
    assert kept == "sender3@sender.test"  # the first one in, not the duplicate


def test_call_returns_results_and_propagates_exceptions(store: StoreThread) -> None:
    async def scenario() -> None:
        assert await store.call(lambda db: db.scalar("SELECT 40 + 2")) == 42
        with pytest.raises(StoreError, match="nope"):
            await store.call(lambda db: db.scalar("SELECT * FROM nope"))

        def boom(db: Database) -> None:
            raise ValueError("a bug in the caller")

        with pytest.raises(ValueError, match="a bug in the caller"):
            await store.call(boom)
        # The thread goes on serving.
        assert await store.call(lambda db: db.scalar("SELECT count(*) FROM messages")) == 0
        await store.enqueue(message(1))

    asyncio.run(scenario())


def test_calls_and_enqueues_interleave(store_url: str, store: StoreThread) -> None:
    async def scenario() -> list[object]:
        jobs = []
        for n in range(20):
            jobs.append(store.enqueue(message(n)))
            jobs.append(store.call(lambda db: db.scalar("SELECT 1")))
        return await held(store, *jobs)

    results = asyncio.run(scenario())
    assert results == [None, 1] * 20
    assert counts(store_url) == (20, 40)


def test_writes_waiting_together_share_one_commit_and_fail_alone(
    store_url: str, store: StoreThread
) -> None:
    def add(n: int) -> Any:
        def write(db: Database) -> int:
            db.execute(
                "INSERT INTO secrets (name, value, created_at) VALUES (:n, 'v', 0)", {"n": f"k{n}"}
            )
            if n == 3:
                raise ValueError("this write fails after its insert")
            return n

        return write

    results = asyncio.run(
        held(store, *(store.write(add(n)) for n in range(6)), store.enqueue(message(1)))
    )
    assert results[:3] + results[4:] == [0, 1, 2, 4, 5, None]
    assert isinstance(results[3], ValueError)
    assert store.commits == 1
    with Database(store_url) as db:
        names = {row["name"] for row in db.all("SELECT name FROM secrets")}
    assert names == {"k0", "k1", "k2", "k4", "k5"}  # the failed write left nothing behind
    assert counts(store_url) == (1, 2)


def test_enqueue_fails_while_the_schema_is_broken_and_works_again_after(
    store_url: str, store: StoreThread
) -> None:
    with Database(store_url) as admin:
        admin.execute("ALTER TABLE deliveries RENAME TO deliveries_away")

        async def scenario() -> list[object]:
            return await held(store, *(store.enqueue(message(n)) for n in range(5)))

        results = asyncio.run(scenario())
        assert all(isinstance(r, StoreError) for r in results), results
        admin.execute("ALTER TABLE deliveries_away RENAME TO deliveries")
    asyncio.run(store.enqueue(message(9)))
    assert counts(store_url) == (1, 2)  # nothing half-written from the failed ones


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
def test_reconnects_after_the_connection_broke(store_url: str, store: StoreThread) -> None:
    async def scenario() -> None:
        pid = await store.call(lambda db: db.scalar("SELECT pg_backend_pid()"))
        postgres_admin(POSTGRES_URL, f"SELECT pg_terminate_backend({int(pid)})")
        with pytest.raises(StoreError):
            await store.enqueue(message(1))
        # The next job finds a new connection.
        await store.enqueue(message(2))
        assert await store.call(lambda db: db.scalar("SELECT pg_backend_pid()")) != pid

    asyncio.run(scenario())
    assert counts(store_url) == (1, 2)


def test_stop_finishes_what_was_queued(store_url: str) -> None:
    store = StoreThread(store_url)
    store.start()

    async def scenario() -> None:
        tasks = [asyncio.ensure_future(store.enqueue(message(n))) for n in range(10)]
        await asyncio.sleep(0)
        await asyncio.to_thread(store.stop)
        await asyncio.gather(*tasks)

    asyncio.run(scenario())
    assert counts(store_url) == (10, 20)


def test_start_raises_when_the_store_cannot_be_opened(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError):
        StoreThread(f"sqlite:///{blocker}/sub/smtpy.db").start()
    if POSTGRES_URL:
        base = POSTGRES_URL.rpartition("/")[0]
        with pytest.raises(StoreError, match="PostgreSQL"):
            StoreThread(f"{base}/smtpy_no_such_database").start()
