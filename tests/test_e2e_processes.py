"""End-to-end: `smtpy serve` with SMTPY_PROCESSES=2, a supervisor and two serving processes."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Cli
from dnsserver import DNSServer
from mailpeers import (
    DOMAIN,
    SENDER,
    Forwarder,
    Serve,
    forwarding_world,
    free_port,
    make_message,
    message_id_counts,
    send,
)
from smtpy.store.db import SCHEMA_REVISION, Database
from test_e2e_queue import Stream
from test_metrics import samples, scrape, value
from waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

ALIAS = f"stream@{DOMAIN}"


@pytest.fixture
def forwarder(
    cli: Cli, cli_env: dict[str, str], dns_server: DNSServer, tmp_path: Path
) -> Iterator[Forwarder]:
    with forwarding_world(cli, cli_env, dns_server, tmp_path) as world:
        world.alias(ALIAS, "sink@dest1.test")
        yield world


def children(daemon: Serve) -> list[int]:
    assert daemon.proc is not None
    pid = daemon.proc.pid
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return sorted(int(p) for p in text.split())


def wait_for_children(
    daemon: Serve, count: int, *, other_than: frozenset[int] = frozenset(), timeout: float = 20
) -> list[int]:
    def found() -> list[int]:
        pids = children(daemon)
        return pids if len(pids) == count and not set(pids) & other_than else []

    try:
        return wait_until(found, f"{count} serving processes", timeout=timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}:\n{daemon.log_tail()}") from None


@pytest.mark.parametrize("store_url", ["sqlite", "postgresql"], indirect=True)
def test_two_processes_share_the_work_and_stop_cleanly(forwarder: Forwarder) -> None:
    daemon = forwarder.start(processes="2")
    assert len(wait_for_children(daemon, 2)) == 2
    started = daemon.wait_event("started", lambda e: e.get("processes") == 2)
    assert started["node"] == "node-0"
    assert {e["node"] for e in daemon.events("started") if "processes" not in e} == {
        "node-0.1",
        "node-0.2",
    }

    # Once the processes serve, the supervisor becomes a small program of its own (it
    # logs `started`, then replaces itself with the watcher: same pid, new image).
    assert daemon.proc is not None
    cmdline = Path(f"/proc/{daemon.proc.pid}/cmdline")
    wait_until(
        lambda: b"smtpy.runtime.watcher" in cmdline.read_bytes(),
        "the supervisor became the watcher",
        interval=0.02,
    )
    status = Path(f"/proc/{daemon.proc.pid}/status").read_text()
    rss_kb = int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])
    assert rss_kb < 30_000, f"the supervisor holds {rss_kb} kB"

    stream = Stream([daemon.port], count=80, threads=8).start()
    accepted = stream.join()
    assert len(accepted) == 80
    forwarder.peers.wait_for_ids(accepted)
    forwarder.wait_settled()
    counts = message_id_counts(forwarder.peers.received)
    assert {counts[mid] for mid in accepted} == {1}  # each delivered once

    daemon.signal(signal.SIGHUP)  # reaches every process
    wait_until(lambda: len(daemon.events("reloaded")) >= 2, "both processes reloaded", timeout=10)
    assert len(daemon.events("reloaded")) == 2
    assert daemon.stop() == 0
    assert len(daemon.events("stopped")) == 3  # two processes, then the supervisor


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_metrics_add_up_every_process(forwarder: Forwarder) -> None:
    metrics_port = free_port()
    daemon = forwarder.start(processes="2", metrics_listen=f"127.0.0.1:{metrics_port}")
    wait_for_children(daemon, 2)
    stream = Stream([daemon.port], count=40, threads=8).start()
    accepted = stream.join()
    forwarder.peers.wait_for_ids(accepted)
    by_process = {e.get("process") for e in daemon.events("received")}
    assert by_process == {1, 2}, "both processes should have taken connections"

    found = samples(scrape(metrics_port)[2])
    assert value(found, "smtpy_messages_total", result="received", reason="queued") == 40
    wait_until(
        lambda: (
            value(samples(scrape(metrics_port)[2]), "smtpy_deliveries_total", result="delivered")
            >= 40
        ),
        "deliveries added up to 40",
        timeout=10,
        interval=0.2,
    )
    assert daemon.stop() == 0


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_killed_process_is_replaced_and_nothing_is_lost(forwarder: Forwarder) -> None:
    forwarder.peers.data_delay = 0.2
    daemon = forwarder.start(processes="2")
    first = wait_for_children(daemon, 2)
    stream = Stream([daemon.port], count=60, threads=6).start()
    stream.wait_accepted(15)
    os.kill(first[0], signal.SIGKILL)
    replaced = wait_for_children(daemon, 2, other_than=frozenset({first[0]}))
    assert first[1] in replaced
    daemon.wait_event("process_died", lambda e: e.get("exit_code") == 1)

    accepted = stream.join()
    assert len(accepted) == 60  # senders retry what the killed process dropped
    forwarder.peers.wait_for_ids(accepted, timeout=60)  # duplicates allowed, losses not
    data = make_message(message_id="<after@sender.test>", to=ALIAS)
    assert send(daemon.port, SENDER, [ALIAS], data) == {}
    forwarder.peers.wait_for_ids(["<after@sender.test>"])
    assert daemon.stop() == 0


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_process_that_cannot_start_stops_the_daemon(forwarder: Forwarder, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    daemon = forwarder.serve(processes="2", tls_cert=str(missing), tls_key=str(missing))
    forwarder.daemons.remove(daemon)  # it never runs: nothing to stop at the end
    with pytest.raises(AssertionError, match="exited with 2 at start-up"):
        daemon.start()
    assert "SMTPY_TLS_CERT" in daemon.log_tail()


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_new_store_is_created_without_the_migration_tools(
    forwarder: Forwarder, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'new' / 'smtpy.db'}"
    daemon = forwarder.start(processes="2", database_url=url, fresh=True)
    pids = wait_for_children(daemon, 2)
    with Database(url, check_schema=False) as db:
        assert db.schema_revision() == SCHEMA_REVISION
    # The migrations ran in a process of their own: neither the supervisor nor
    # a serving process carries SQLAlchemy and Alembic (about 30 MB) for life.
    assert daemon.proc is not None
    for pid in (daemon.proc.pid, *pids):
        assert "/sqlalchemy/" not in Path(f"/proc/{pid}/maps").read_text()
    # Stopped at once, maybe before every process serves: still a clean stop.
    assert daemon.stop() == 0, daemon.log_tail()
