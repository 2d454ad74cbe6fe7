"""End-to-end: the queue of the real `smtpy serve` through crashes, signals and two nodes.

Senders are smtplib clients in threads that behave like real MTAs: a message
whose session failed is sent again (to the other node when there are two)
until it gets its 250. Destination MX hosts are slowed down a little
(`MailPeers.data_delay`) so deliveries are in flight when a node is killed.
"""

from __future__ import annotations

import itertools
import signal
import smtplib
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from conftest import Cli
from dnsserver import DNSServer
from mailpeers import (
    DEST1,
    DOMAIN,
    SENDER,
    Forwarder,
    Serve,
    forwarding_world,
    make_message,
    message_id_counts,
    message_id_of,
    send,
    smtp_client,
)
from smtpy.store.db import Database

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

ALIAS = f"stream@{DOMAIN}"
DESTINATION = "sink@dest1.test"


@pytest.fixture
def forwarder(
    cli: Cli, cli_env: dict[str, str], dns_server: DNSServer, tmp_path: Path
) -> Iterator[Forwarder]:
    with forwarding_world(cli, cli_env, dns_server, tmp_path) as world:
        world.alias(ALIAS, DESTINATION)
        yield world


class Stream:
    """`count` messages sent by `threads` smtplib clients, each retried until it gets a 250.

    Message n goes to `ports[n % len(ports)]` first and to the next port when
    that fails, as an MTA tries the next MX. Everything stops at `deadline`.
    """

    def __init__(
        self, ports: Sequence[int], *, count: int, threads: int, deadline: float = 90.0
    ) -> None:
        self.ports = list(ports)
        self.count = count
        self.token = uuid.uuid4().hex[:8]
        self.accepted: dict[str, int] = {}  # Message-ID -> port that answered 250
        self.failures = 0
        self._lock = threading.Lock()
        self._next = itertools.count()
        self._deadline = time.monotonic() + deadline
        self._threads = [
            threading.Thread(target=self._sender, name=f"sender-{n}", daemon=True)
            for n in range(threads)
        ]

    def message_id(self, n: int) -> str:
        return f"<stream-{n}-{self.token}@sender.test>"

    def start(self) -> Stream:
        for thread in self._threads:
            thread.start()
        return self

    def _sender(self) -> None:
        while True:
            with self._lock:
                n = next(self._next)
            if n >= self.count:
                return
            message_id = self.message_id(n)
            data = make_message(message_id=message_id, to=ALIAS, subject=f"stream {n}")
            first = n % len(self.ports)
            ports = self.ports[first:] + self.ports[:first]
            for attempt in itertools.count():
                port = ports[attempt % len(ports)]
                if time.monotonic() > self._deadline:
                    return
                try:
                    with smtp_client(port, timeout=10) as client:
                        client.sendmail(SENDER, [ALIAS], data)
                except (OSError, smtplib.SMTPException):
                    with self._lock:
                        self.failures += 1
                    time.sleep(0.05)
                    continue
                with self._lock:
                    self.accepted[message_id] = port
                break

    def accepted_by(self, port: int) -> set[str]:
        with self._lock:
            return {mid for mid, p in self.accepted.items() if p == port}

    def wait_accepted(self, n: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.accepted) >= n:
                    return
            time.sleep(0.01)
        raise AssertionError(f"only {len(self.accepted)} of {n} messages accepted in {timeout}s")

    def join(self, timeout: float = 90.0) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self._threads), "senders still running"
        with self._lock:
            return dict(self.accepted)


def leased_message_ids(url: str, node: str) -> set[str]:
    """Message-IDs of the deliveries `node` held a lease on (read from the store)."""
    with Database(url) as db:
        rows = db.all(
            "SELECT m.data FROM deliveries d JOIN messages m ON m.id = d.message_id"
            " WHERE d.lease_owner = :node AND d.next_attempt_at > :now",
            {"node": node, "now": time.time()},
        )
    return {mid for row in rows if (mid := message_id_of(bytes(row["data"])))}


def wait_for_leases(url: str, node: str, count: int, timeout: float = 20.0) -> None:
    """Wait until `node` holds `count` deliveries in flight, so a kill -9 interrupts them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with Database(url) as db:
            held = db.scalar(
                "SELECT count(*) FROM deliveries WHERE lease_owner = :node AND next_attempt_at > :now",
                {"node": node, "now": time.time()},
            )
        if held >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"{node} never held {count} deliveries at once")


def kill_and_restart(forwarder: Forwarder, daemon: Serve) -> tuple[set[str], dict[str, int]]:
    """kill -9 `daemon`, note what it held and what had arrived, start it again."""
    daemon.kill()
    held = leased_message_ids(forwarder.database_url, daemon.env["SMTPY_NODE_NAME"])
    time.sleep(0.3)  # let the MX hosts notice the dead sessions
    counts = message_id_counts(forwarder.peers.received)
    daemon.start()
    return held, counts


def assert_redelivered_soon(forwarder: Forwarder, held: set[str], before: dict[str, int]) -> None:
    """Each message the dead node held arrives (again) within seconds of its restart.

    Call it right after the restart: without the restart releasing them, these
    deliveries would wait for their lease (`LEASE_SECONDS`, 90 s) to run out.
    """
    assert held, "the node held no delivery when it was killed: the crash tested nothing"
    forwarder.peers.wait_for(
        lambda got: all(message_id_counts(got).get(mid, 0) > before.get(mid, 0) for mid in held),
        timeout=15,
    )


# -- crash ---------------------------------------------------------------------------


def test_kill_9_during_a_stream_loses_nothing(forwarder: Forwarder) -> None:
    forwarder.peers.data_delay = 0.1
    daemon = forwarder.start()
    stream = Stream([daemon.port], count=300, threads=10).start()

    stream.wait_accepted(100)
    wait_for_leases(forwarder.database_url, "node-0", 5)
    held, before = kill_and_restart(forwarder, daemon)
    assert_redelivered_soon(forwarder, held, before)
    assert daemon.events("resumed"), "the restarted node did not release its leases"

    accepted = stream.join()
    assert len(accepted) == 300, f"senders gave up: {300 - len(accepted)} never accepted"
    assert stream.failures > 0, "the kill interrupted no session"
    forwarder.peers.wait_for_ids(accepted, timeout=60)  # duplicates allowed, losses not


# -- one slow destination ----------------------------------------------------------------


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_slow_destination_holds_back_only_its_own_mail(forwarder: Forwarder) -> None:
    forwarder.alias(f"slow@{DOMAIN}", "someone@dest1.test")
    forwarder.alias(f"fast@{DOMAIN}", "someone@dest2.test")
    forwarder.peers.delays[DEST1] = 2.0
    daemon = forwarder.start(delivery_concurrency="4", destination_concurrency="2")
    for n in range(8):
        data = make_message(message_id=f"<slow-{n}@sender.test>", to=f"slow@{DOMAIN}")
        assert send(daemon.port, SENDER, [f"slow@{DOMAIN}"], data) == {}
    forwarder.peers.wait_for(lambda got: len(forwarder.peers.replies) >= 2)
    sent = time.monotonic()
    data = make_message(message_id="<fast@sender.test>", to=f"fast@{DOMAIN}")
    assert send(daemon.port, SENDER, [f"fast@{DOMAIN}"], data) == {}
    forwarder.peers.wait_for_ids(["<fast@sender.test>"])
    assert time.monotonic() - sent < 1.5, "mail for a fast domain waited for a slow one"


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_busy_destination_gets_its_limit_and_every_message(forwarder: Forwarder) -> None:
    """Mail beyond a destination's limit waits for a free slot; none is sent twice or lost."""
    forwarder.alias(f"busy@{DOMAIN}", "someone@dest1.test")
    forwarder.peers.delays[DEST1] = 0.4
    daemon = forwarder.start(delivery_concurrency="4", destination_concurrency="2")
    ids = [f"<busy-{n}@sender.test>" for n in range(9)]
    for mid in ids:
        assert (
            send(
                daemon.port,
                SENDER,
                [f"busy@{DOMAIN}"],
                make_message(message_id=mid, to=f"busy@{DOMAIN}"),
            )
            == {}
        )
    forwarder.peers.wait_for_ids(ids)
    assert forwarder.peers.most_in_data[DEST1] == 2
    assert message_id_counts(forwarder.peers.received) == dict.fromkeys(ids, 1)


# -- two nodes on one PostgreSQL ---------------------------------------------------------


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
def test_two_nodes_share_one_queue(forwarder: Forwarder) -> None:
    node_a = forwarder.start()
    node_b = forwarder.start()

    # Without a crash, every message is delivered exactly once, whichever node took it.
    calm = Stream([node_a.port, node_b.port], count=60, threads=6).start()
    accepted = calm.join()
    assert len(accepted) == 60
    forwarder.peers.wait_for_ids(accepted)
    forwarder.wait_settled()  # no delivery left that a duplicate claim could repeat
    counts = message_id_counts(forwarder.peers.received)
    assert {counts[mid] for mid in accepted} == {1}, {m: c for m, c in counts.items() if c > 1}
    assert node_a.events("delivered") and node_b.events("delivered")

    # kill -9 one node mid-stream: the other takes the traffic and delivers it, and
    # the dead node's queued mail, meanwhile; after the restart nothing is lost.
    forwarder.peers.data_delay = 0.3
    stream = Stream([node_a.port, node_b.port], count=150, threads=6).start()
    stream.wait_accepted(40)
    wait_for_leases(forwarder.database_url, "node-0", 3)
    node_a.kill()
    held = leased_message_ids(forwarder.database_url, "node-0")
    at_kill = stream.accepted_by(node_a.port) | stream.accepted_by(node_b.port)
    stream.wait_accepted(len(at_kill) + 25)
    while_down = stream.accepted_by(node_b.port) - at_kill
    assert len(while_down) >= 25
    # What the dead node had queued but not in hand moves too: only its leases wait for it.
    orphans = (stream.accepted_by(node_a.port) & at_kill) - held
    forwarder.peers.wait_for_ids(while_down | orphans, timeout=30)
    assert not node_a.running

    time.sleep(0.3)
    before = message_id_counts(forwarder.peers.received)
    node_a.start()
    assert_redelivered_soon(forwarder, held, before)
    accepted_all = stream.join()
    assert len(accepted_all) == 150
    forwarder.peers.wait_for_ids(accepted_all, timeout=60)


# -- signals -------------------------------------------------------------------------


def test_sigterm_while_idle_exits_0(forwarder: Forwarder) -> None:
    daemon = forwarder.start()
    time.sleep(0.5)
    started = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - started < 5
    assert daemon.events("stopped")


def test_sighup_reloads_and_keeps_serving(forwarder: Forwarder) -> None:
    daemon = forwarder.start()
    with smtp_client(daemon.port) as client:
        client.ehlo()
        client.mail(SENDER)
        assert client.rcpt(f"new@{DOMAIN}")[0] == 550

    forwarder.alias(f"new@{DOMAIN}", "new@dest1.test")
    daemon.signal(signal.SIGHUP)
    daemon.wait_event("reloaded")
    assert daemon.running

    message_id = f"<{uuid.uuid4().hex}@sender.test>"
    data = make_message(message_id=message_id, to=f"new@{DOMAIN}")
    assert send(daemon.port, SENDER, [f"new@{DOMAIN}"], data) == {}
    [received] = forwarder.peers.wait_for(
        lambda got: [r for r in got if r.message_id == message_id]
    )
    assert received.rcpt_tos == ("new@dest1.test",)
