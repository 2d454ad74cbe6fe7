"""The Prometheus endpoint of the real `smtpy serve`, read with prometheus_client's own parser.

The daemon forwards real traffic between real SMTP peers on loopback; the
scrape must show what happened: sessions, messages by result and reason,
deliveries by result, the queue by state, the latency histograms.
"""

from __future__ import annotations

import http.client
import json
import smtplib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import Cli
from dnsserver import DNSServer
from mailpeers import DOMAIN, SENDER, Forwarder, forwarding_world, free_port, make_message, send

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.fixture
def forwarder(
    cli: Cli, cli_env: dict[str, str], dns_server: DNSServer, tmp_path: Path
) -> Iterator[Forwarder]:
    with forwarding_world(cli, cli_env, dns_server, tmp_path) as world:
        yield world


def scrape(port: int, path: str = "/metrics") -> tuple[int, str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read().decode()
    finally:
        conn.close()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def wait_until_deferred(forwarder: Forwarder, timeout: float = 20.0) -> None:
    """Until the queue holds one message, deferred (its attempt recorded), as `queue list` says."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        queued = json.loads(forwarder.run("queue", "list", "--json"))
        if [m["state"] for m in queued] == ["deferred"]:
            return
        time.sleep(0.2)
    raise AssertionError(f"the queue never showed one deferred message: {queued}")


def test_scrape_after_real_traffic_matches_it(forwarder: Forwarder) -> None:
    forwarder.alias(f"team@{DOMAIN}", "bob@dest1.test", "carol@dest2.test")
    forwarder.alias(f"slow@{DOMAIN}", "dave@dest1.test")
    forwarder.alias(f"spam@{DOMAIN}", mode="discard")
    forwarder.peers.script("dave@dest1.test", "451 4.3.0 Try later", repeat=True)
    metrics_port = free_port()
    daemon = forwarder.start(metrics_listen=f"127.0.0.1:{metrics_port}", retry_schedule="3600")

    ids = [f"<{uuid.uuid4().hex}@sender.test>" for _ in range(2)]
    for message_id in ids:
        assert (
            send(daemon.port, SENDER, [f"team@{DOMAIN}"], make_message(message_id=message_id)) == {}
        )
    assert (
        send(daemon.port, SENDER, [f"slow@{DOMAIN}"], make_message(message_id="<s@x.test>")) == {}
    )
    assert (
        send(daemon.port, SENDER, [f"spam@{DOMAIN}"], make_message(message_id="<d@x.test>")) == {}
    )
    for recipient in (f"nobody@{DOMAIN}", "someone@elsewhere.test"):
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            send(daemon.port, SENDER, [recipient], make_message(message_id="<r@x.test>"))
    sessions = 6

    forwarder.peers.wait_for_ids(ids)
    wait_until_deferred(forwarder)

    status, content_type, text = scrape(metrics_port)
    assert status == 200
    assert content_type.startswith("text/plain; version=")
    found = samples(text)
    # One more session than we opened: the test harness's readiness probe.
    assert value(found, "smtpy_smtp_sessions_total") == sessions + 1
    assert value(found, "smtpy_messages_total", result="received", reason="queued") == 3
    assert value(found, "smtpy_messages_total", result="discarded", reason="discard_rule") == 1
    assert value(found, "smtpy_messages_total", result="rejected", reason="unknown_user") == 1
    assert value(found, "smtpy_messages_total", result="rejected", reason="relay") == 1
    assert value(found, "smtpy_deliveries_total", result="delivered") == 4
    assert value(found, "smtpy_deliveries_total", result="deferred") == 1
    assert value(found, "smtpy_deliveries_total", result="failed") == 0
    # One transaction per message and destination domain: 2 x 2, and the deferred one.
    assert value(found, "smtpy_delivery_duration_seconds_count") == 5
    assert value(found, "smtpy_delivery_duration_seconds_bucket", le="+Inf") == 5
    assert value(found, "smtpy_dns_lookup_duration_seconds_count", type="MX") >= 2
    assert value(found, "smtpy_queue_deliveries", state="deferred") == 1
    assert value(found, "smtpy_queue_deliveries", state="active") == 0
    assert value(found, "smtpy_queue_deliveries", state="held") == 0
    assert 0 < value(found, "smtpy_queue_oldest_age_seconds") < 120


def test_queue_gauges_are_queried_at_most_once_per_cache_window() -> None:
    """A scrape reuses the queue snapshot for QUEUE_CACHE_SECONDS; the next one queries again."""
    from prometheus_client import CollectorRegistry, generate_latest

    from smtpy.runtime.metrics_server import QueueCollector, QueueSnapshot

    now = [1000.0]
    queries: list[float] = []

    def query(at: float) -> QueueSnapshot:
        queries.append(at)
        return QueueSnapshot({"deferred": len(queries)}, at - 30, at)

    registry = CollectorRegistry()
    registry.register(QueueCollector(query, cache_seconds=5, clock=lambda: now[0]))
    assert queries == []  # registering does not touch the store
    first = samples(generate_latest(registry).decode())
    now[0] += 4
    second = samples(generate_latest(registry).decode())
    now[0] += 1
    third = samples(generate_latest(registry).decode())
    assert queries == [1000.0, 1005.0]
    assert [
        value(s, "smtpy_queue_deliveries", state="deferred") for s in (first, second, third)
    ] == [
        1,
        1,
        2,
    ]
    assert value(first, "smtpy_queue_oldest_age_seconds") == 30


def test_a_failed_queue_query_leaves_the_scrape_without_queue_gauges() -> None:
    from prometheus_client import CollectorRegistry, Counter, generate_latest

    from smtpy.runtime.metrics_server import QueueCollector, QueueSnapshot

    def query(at: float) -> QueueSnapshot:
        raise TimeoutError("the store did not answer")

    registry = CollectorRegistry()
    Counter("smtpy_test_things", "Things.", registry=registry).inc()
    registry.register(QueueCollector(query))
    found = samples(generate_latest(registry).decode())
    assert value(found, "smtpy_test_things_total") == 1
    assert not any(name.startswith("smtpy_queue_") for name, _ in found)
