"""End-to-end: ARC across two nodes on one PostgreSQL store, and forged results under their names.

Two real `smtpy serve` nodes with their own SMTPY_HOSTNAME and SMTPY_NODE_NAME
share one queue. A message received by node a is delivered by node b (a stops
gracefully while the destination MX is down, so its delivery goes back to the
queue; then b delivers): it carries a valid ARC set (dkimpy's `arc_verify`)
whose ARC-Authentication-Results are the results node a computed. A client's
Authentication-Results claiming either node's name never reaches a seal, and
is gone from what is forwarded.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from email import message_from_bytes, policy
from pathlib import Path

import dkim
import pytest

from authworld import dnsfunc_for, make_key, message
from conftest import POSTGRES_URL, Cli
from dnsserver import DNSServer
from mailpeers import DEST1, DOMAIN, Forwarder, Received, Serve, forwarding_world, smtp_client
from smtpy.store.db import Database

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(240),
    pytest.mark.parametrize("store_url", ["postgresql"], indirect=True),
    pytest.mark.skipif(not POSTGRES_URL, reason="SMTPY_TEST_POSTGRES_URL is not set"),
]

HOST_A, HOST_B = "mx-a.forwarder.test", "mx-b.forwarder.test"
ALIAS = f"team@{DOMAIN}"
FORGED = "dkim=pass header.d=bank.example; dmarc=pass header.from=bank.example"


@pytest.fixture
def forwarder(
    cli: Cli, cli_env: dict[str, str], dns_server: DNSServer, tmp_path: Path
) -> Iterator[Forwarder]:
    with forwarding_world(cli, cli_env, dns_server, tmp_path) as world:
        world.alias(ALIAS, "bob@dest1.test")
        dns = world.dns
        dns.add("sender.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")
        dns.add("_dmarc.sender.test", "TXT", "v=DMARC1; p=reject")
        yield world


def node(forwarder: Forwarder, hostname: str, name: str) -> Serve:
    daemon = forwarder.serve(hostname=hostname, node_name=name)
    daemon.start()
    return daemon


def wait_for_node(url: str, name: str) -> None:
    """Until the node's first heartbeat is in the store (the other nodes read its name there);
    its serving processes are `name.1`, `name.2` …"""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with Database(url) as db:
            names = [row["name"] for row in db.all("SELECT name FROM nodes")]
            if any(n == name or n.startswith(f"{name}.") for n in names):
                return
        time.sleep(0.2)
    raise AssertionError(f"no heartbeat of {name} within 30 s")


def send(port: int, data: bytes) -> str:
    """Send `data` to `ALIAS`; the queue id of the 250."""
    with smtp_client(port) as client:
        assert client.ehlo()[0] == 250
        assert client.mail("alice@sender.test")[0] == 250
        assert client.rcpt(ALIAS)[0] == 250
        code, text = client.data(data)
    assert code == 250, text
    return text.decode().rpartition(" ")[2]


def arrived(forwarder: Forwarder, message_id: str) -> Received:
    forwarder.peers.wait_for_ids([message_id], timeout=60)
    [got] = [r for r in forwarder.peers.received if r.message_id == message_id]
    return got


def authserv_ids(data: bytes) -> list[str]:
    parsed = message_from_bytes(data, policy=policy.default)
    values = parsed.get_all("Authentication-Results") or []
    return [str(v).split(";", 1)[0].strip() for v in values]


def sealed_results(forwarder: Forwarder, data: bytes) -> str:
    """The ARC-Authentication-Results of a chain dkimpy verifies, unfolded."""
    cv, sets, reason = dkim.arc_verify(data, dnsfunc=dnsfunc_for(forwarder.dns))
    assert cv == b"pass", reason
    assert [s["as-domain"] for s in sets] == [DOMAIN.encode()]
    parsed = message_from_bytes(data, policy=policy.default)
    return " ".join(str(parsed["ARC-Authentication-Results"]).split())


def test_mail_received_by_one_node_and_delivered_by_the_other_is_sealed_with_its_results(
    forwarder: Forwarder,
) -> None:
    author = make_key("sender.test", "s2026")
    author.publish(forwarder.dns)
    node_a = node(forwarder, HOST_A, "node-a")
    wait_for_node(forwarder.database_url, "node-a")
    node_b = node(forwarder, HOST_B, "node-b")
    wait_for_node(forwarder.database_url, "node-b")
    forwarder.peers.down(DEST1)  # nothing can be delivered yet

    # To node a: a good message, with results forged under node b's name.
    id_a = f"<{uuid.uuid4().hex}@sender.test>"
    forged_b = f"Authentication-Results: {HOST_B}; {FORGED}"
    queue_a = send(node_a.port, author.sign(message(extra=(forged_b,), message_id=id_a)))
    # To node b: results forged under node a's name.
    id_b = f"<{uuid.uuid4().hex}@sender.test>"
    forged_a = f"Authentication-Results: {HOST_A}; {FORGED}"
    send(node_b.port, author.sign(message(extra=(forged_a,), message_id=id_b)))

    node_a.wait_event("deferred", lambda e: e.get("queue_id") == queue_a, timeout=30)
    assert node_a.stop() == 0  # its deliveries go back to the queue
    forwarder.peers.up(DEST1)

    got_a = arrived(forwarder, id_a)
    assert node_b.wait_event("delivered", lambda e: e.get("queue_id") == queue_a)
    assert not [e for e in node_a.events("delivered") if e.get("queue_id") == queue_a]
    results_a = sealed_results(forwarder, got_a.data)
    assert results_a.startswith(f"i=1; {HOST_A}; spf=pass"), results_a
    assert "dkim=pass header.d=sender.test" in results_a
    assert "dmarc=pass (p=reject) header.from=sender.test" in results_a
    assert "bank.example" not in results_a
    assert authserv_ids(got_a.data) == [HOST_A]  # the forgery naming node b is gone

    got_b = arrived(forwarder, id_b)
    results_b = sealed_results(forwarder, got_b.data)
    assert results_b.startswith(f"i=1; {HOST_B}; spf=pass"), results_b
    assert "bank.example" not in results_b
    assert authserv_ids(got_b.data) == [HOST_B]  # the forgery naming node a is gone
