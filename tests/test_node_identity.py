"""Node names in the store: who holds one, when it is free, and whose leases a start releases.

Store-level: real SQLite files and the real PostgreSQL server, real processes
as the holders that run or died on this machine. The end-to-end cases (real
`smtpy serve` processes) are in test_e2e_nodes.py.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from smtpy.errors import ConfigError
from smtpy.queue.nodes import (
    NodeInfo,
    claim,
    heartbeat,
    holds_name,
    list_nodes,
    process_fingerprint,
    stopped,
)
from smtpy.queue.queries import NewDelivery, NewMessage, enqueue_claimed, release_node
from smtpy.queue.writer import StoreThread
from smtpy.runtime.supervisor import PRELOAD, import_all
from smtpy.runtime.upkeep import Upkeep
from smtpy.store.db import Database

T = 1_800_000_000.0


def elsewhere(name: str, *, at: float = T, beat: float = 10.0) -> NodeInfo:
    """A node on another machine: nothing here can see its process, only its heartbeat."""
    return NodeInfo(name, started_at=at, process=None, heartbeat_seconds=beat)


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A real process on this machine, to play a node's holder."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(10)


def held_by(proc: subprocess.Popen[bytes], name: str) -> NodeInfo:
    fingerprint = process_fingerprint(proc.pid)
    assert fingerprint is not None, "this machine cannot tell processes apart"
    return NodeInfo(name, started_at=T, pid=proc.pid, process=fingerprint)


def test_a_name_held_by_a_live_node_elsewhere_is_refused_until_its_heartbeat_is_stale(
    db: Database,
) -> None:
    first = elsewhere("vm")
    assert claim(db, first, now=T) is None
    with pytest.raises(ConfigError) as refused:
        claim(db, elsewhere("vm"), now=T + 29)
    message = str(refused.value)
    assert "\n" not in message
    assert "'vm' is in use" in message and "SMTPY_NODE_NAME" in message
    [row] = list_nodes(db)
    assert row["pid"] == first.pid and row["seen_at"] == T  # the refusal changed nothing

    heartbeat(db, first, now=T + 20)
    with pytest.raises(ConfigError):
        claim(db, elsewhere("vm"), now=T + 49)
    second = elsewhere("vm", at=T + 51)
    previous = claim(db, second, now=T + 51)  # three heartbeats missed: stale
    assert previous is not None and previous["instance"] == first.instance
    # The old start learns it at its next beat; the new one holds the name.
    assert heartbeat(db, first, now=T + 52) is False
    assert heartbeat(db, second, now=T + 52) is True


def test_a_stopped_node_frees_its_name_at_once(db: Database) -> None:
    first = elsewhere("mx1")
    claim(db, first, now=T)
    stopped(db, first, now=T + 1)
    assert claim(db, elsewhere("mx1"), now=T + 2) is not None


def test_a_slower_heartbeat_counts_for_its_own_node(db: Database) -> None:
    claim(db, elsewhere("mx1", beat=60.0), now=T)
    with pytest.raises(ConfigError):  # 100 s without a beat is fine for a 60 s heartbeat
        claim(db, elsewhere("mx1"), now=T + 100)
    assert claim(db, elsewhere("mx1"), now=T + 181) is not None


def test_a_holder_that_died_on_this_machine_frees_the_name_at_once(
    db: Database, sleeper: subprocess.Popen[bytes]
) -> None:
    holder = held_by(sleeper, "vm")
    claim(db, holder, now=time.time())
    with pytest.raises(ConfigError, match="still runs on this machine"):
        claim(db, NodeInfo("vm", started_at=T), now=time.time())
    # Still running with a heartbeat long stale (hung, stopped): it keeps its name.
    with pytest.raises(ConfigError):
        claim(db, NodeInfo("vm", started_at=T), now=time.time() + 3600)
    sleeper.kill()
    sleeper.wait(10)
    # kill -9 a moment ago, heartbeat fresh: the name is free all the same.
    assert claim(db, NodeInfo("vm", started_at=T), now=time.time()) is not None


def test_a_reused_pid_is_not_the_holder(db: Database, sleeper: subprocess.Popen[bytes]) -> None:
    holder = held_by(sleeper, "vm")
    machine, pid, ticks = holder.process.rsplit("/", 2)  # type: ignore[union-attr]
    earlier = f"{machine}/{pid}/{int(ticks) - 1}"  # the same pid, an earlier process
    claim(db, NodeInfo("vm", started_at=T, pid=sleeper.pid, process=earlier), now=time.time())
    [row] = list_nodes(db)
    assert holds_name(row, now=time.time()) is False


def contend(store_url: str, now: float) -> tuple[list[NodeInfo], list[str]]:
    """Two starts claim "vm" at the same moment, each on its own connection."""
    barrier = threading.Barrier(2)
    won: list[NodeInfo] = []
    refused: list[str] = []

    def start() -> None:
        node = elsewhere("vm", at=now)
        with Database(store_url) as db:
            barrier.wait(10)
            try:
                claim(db, node, now=now)
            except ConfigError as exc:
                refused.append(str(exc))
            else:
                won.append(node)

    threads = [threading.Thread(target=start) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return won, refused


def test_two_starts_racing_for_a_stale_name_never_both_win(store_url: str) -> None:
    with Database(store_url) as db:
        claim(db, elsewhere("vm"), now=T)
    for round_ in range(10):  # bounded
        now = T + 1000 * (round_ + 1)  # the holder of the round before is stale by now
        won, refused = contend(store_url, now)
        assert len(won) == 1 and len(refused) == 1, (won, refused)
        with Database(store_url) as db:
            assert [row["name"] for row in list_nodes(db)] == ["vm"]
            assert db.scalar("SELECT instance FROM nodes") == won[0].instance
            assert heartbeat(db, won[0], now=now)


def test_a_node_whose_name_was_taken_over_learns_it_at_its_next_heartbeat(store_url: str) -> None:
    async def scenario() -> None:
        store = StoreThread(store_url, name="writer")
        store.start()
        try:
            node = NodeInfo("vm", started_at=time.time(), process=None, heartbeat_seconds=1.0)
            await store.call(lambda db: claim(db, node, now=time.time()))
            lost = asyncio.Event()
            upkeep = Upkeep(store, node=node, retention_days=0, on_lost=lost.set)
            upkeep.start()
            # Another start, once this node's heartbeat looks stale (a hang, a clock jump).
            usurper = elsewhere("vm", at=time.time() + 60)
            await store.call(lambda db: claim(db, usurper, now=time.time() + 60))
            await asyncio.wait_for(lost.wait(), 30)  # bounded; told at the next beat
            await upkeep.stop()
            [row] = await store.call(list_nodes)
            assert row["stopped_at"] is None  # its stop did not mark the new holder stopped
            assert await store.call(lambda db: heartbeat(db, usurper, now=time.time() + 61))
        finally:
            store.stop()

    asyncio.run(scenario())


def test_old_per_process_rows_go_when_their_node_starts(db: Database) -> None:
    for name in ("vm.1", "vm.2", "vm.example.net"):  # as daemons before node identity wrote them
        db.execute(
            "INSERT INTO nodes (name, hostname, pid, version, started_at, seen_at)"
            " VALUES (:name, 'vm', 1, '0', :t, :t)",
            {"name": name, "t": T},
        )
    claim(db, elsewhere("vm"), now=T + 100)
    assert [row["name"] for row in list_nodes(db)] == ["vm", "vm.example.net"]


# -- whose leases a start releases ----------------------------------------------------------


def lease(db: Database, owner: str, n: int) -> int:
    [claimed] = enqueue_claimed(
        db,
        NewMessage(
            queue_id=f"Q{n}",
            sender="a@sender.test",
            data=b"Subject: x\r\n\r\nbody\r\n",
            deliveries=[NewDelivery("a@one.test", f"r{n}@x.test", "x.test", "")],
            received_at=T,
        ),
        node=owner,
    )
    return claimed.id


def test_a_node_releases_exactly_its_own_leases_and_its_processes(db: Database) -> None:
    claim(db, elsewhere("mx1.2"), now=T)  # a node of its own that happens to be called so
    owners = [
        "mx1",
        "mx1.1",
        "mx1.12",
        "mx1.example.net",
        "mx1.example.net.1",
        "mx10",
        "mx1.x",
        "mx1.2",
        "mx1.",
    ]
    ids = {owner: lease(db, owner, n) for n, owner in enumerate(owners)}
    assert release_node(db, node="mx1", now=T + 1) == 3
    rows = {
        row["id"]: row["lease_owner"] for row in db.all("SELECT id, lease_owner FROM deliveries")
    }
    assert {owner for owner, id_ in ids.items() if rows[id_] is None} == {"mx1", "mx1.1", "mx1.12"}


# -- issue 13: the preload list ------------------------------------------------------------


def test_every_preloaded_module_imports() -> None:
    import_all(PRELOAD)  # raises on a name that no longer exists


def test_a_missing_preload_module_fails_loudly() -> None:
    from smtpy.errors import SmtpyError

    with pytest.raises(SmtpyError, match=r"cannot import smtpy\.no_such_module"):
        import_all(["smtpy.dns", "smtpy.no_such_module"])
