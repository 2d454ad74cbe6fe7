"""End-to-end: `smtpy queue …` against the queue of a running `smtpy serve`.

The retry schedule is an hour, so a deferred message that arrives anyway was
moved by the admin command, while the daemon ran. Destination MX hosts answer
451 (or 550) to scripted recipients. Every test runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Cli
from dnsserver import DNSServer
from mailpeers import (
    DEST1,
    DOMAIN,
    SENDER,
    SENDER_MX,
    Forwarder,
    forwarding_world,
    make_message,
    send,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

BUSY = "451 4.2.0 Mailbox busy, try later"


@pytest.fixture
def forwarder(
    cli: Cli, cli_env: dict[str, str], dns_server: DNSServer, tmp_path: Path
) -> Iterator[Forwarder]:
    with forwarding_world(cli, cli_env, dns_server, tmp_path, retry_schedule="3600") as world:
        yield world


def new_id() -> str:
    return f"<{uuid.uuid4().hex}@sender.test>"


def queue(forwarder: Forwarder, *args: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = json.loads(forwarder.run("queue", "list", "--json", *args))
    return result


def wait_deferred(forwarder: Forwarder, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
    """Until `count` messages wait in the queue, deferred after their first attempt."""
    deadline = time.monotonic() + timeout
    while True:
        listed = queue(forwarder, "--status", "deferred")
        if len(listed) >= count:
            return listed
        assert time.monotonic() < deadline, f"not deferred in time: {queue(forwarder)}"
        time.sleep(0.2)


def arrived(forwarder: Forwarder, message_id: str) -> bool:
    return any(r.message_id == message_id for r in forwarder.peers.received)


def test_list_show_hold_release_and_retry_while_the_daemon_runs(forwarder: Forwarder) -> None:
    forwarder.alias(f"ann@{DOMAIN}", "ann@dest1.test")
    forwarder.peers.script("ann@dest1.test", BUSY, BUSY)  # two attempts fail, the third passes
    daemon = forwarder.start()
    first = new_id()
    assert send(daemon.port, SENDER, [f"ann@{DOMAIN}"], make_message(message_id=first)) == {}

    [listed] = wait_deferred(forwarder, 1)
    queue_id = listed["queue_id"]
    assert (listed["state"], listed["sender"], listed["attempts"]) == ("deferred", SENDER, 1)
    assert listed["last_error"] == "4.2.0 Mailbox busy, try later"
    assert listed["next_attempt_at"] > time.time() + 3000
    assert [r["recipient"] for r in listed["recipients"]] == ["ann@dest1.test"]
    assert queue(forwarder, "--domain", "dest1.test") == [listed]
    assert queue(forwarder, "--domain", "dest2.test") == []
    assert queue(forwarder, "--older-than", "1h") == []
    assert [m["queue_id"] for m in queue(forwarder, "--older-than", "0s")] == [queue_id]
    assert queue(forwarder, "--status", "held") == []

    shown = json.loads(forwarder.run("queue", "show", queue_id, "--json"))
    [attempt] = shown["attempts"]
    assert (attempt["code"], attempt["result"], attempt["remote_host"]) == (
        451,
        "deferred",
        f"mx.dest1.test[{DEST1}]",
    )
    assert f"Message-ID: {first}" in shown["headers"]
    assert "Hello there." not in shown["headers"]
    raw = forwarder.cli("queue", "show", queue_id, "--raw")
    assert "Hello there." in raw.stdout
    table = forwarder.run("queue", "list")
    assert queue_id in table and "Mailbox busy" in table

    # Held: a retry does not move it, and the daemon leaves it alone.
    assert forwarder.run("queue", "hold", queue_id).strip() == "1 delivery held"
    assert [m["state"] for m in queue(forwarder)] == ["held"]
    assert forwarder.run("queue", "retry", queue_id).strip() == "0 deliveries due now"
    time.sleep(2.5)  # two polls of the worker
    assert [m["state"] for m in queue(forwarder)] == ["held"]

    # Released: due at once; the peer refuses once more, so it is deferred for an hour again.
    assert forwarder.run("queue", "release", queue_id).strip() == "1 delivery released"
    deadline = time.monotonic() + 20
    while queue(forwarder)[0]["attempts"] < 2:
        assert time.monotonic() < deadline, "a released message was not attempted"
        time.sleep(0.2)
    assert not arrived(forwarder, first)

    # Retried while the daemon runs: picked up at its next poll, not in an hour.
    started = time.monotonic()
    assert forwarder.run("queue", "retry", queue_id).strip() == "1 delivery due now"
    forwarder.peers.wait_for(lambda got: arrived(forwarder, first), timeout=15)
    print(f"retried message delivered {time.monotonic() - started:.2f}s after `queue retry`")
    assert queue(forwarder) == []

    missing = forwarder.cli("queue", "retry", queue_id)
    assert missing.code == 2
    assert f"no queued message has id {queue_id}" in missing.stderr


def test_bulk_operations_confirm_show_progress_and_log(forwarder: Forwarder) -> None:
    forwarder.alias(f"bob@{DOMAIN}", "bob@dest1.test")
    forwarder.peers.script("bob@dest1.test", BUSY, repeat=True)
    daemon = forwarder.start()
    ids = [new_id() for _ in range(4)]
    for message_id in ids:
        assert (
            send(daemon.port, SENDER, [f"bob@{DOMAIN}"], make_message(message_id=message_id)) == {}
        )
    listed = wait_deferred(forwarder, 4)
    queue_ids = [m["queue_id"] for m in listed]

    unconfirmed = forwarder.cli("queue", "hold", "--all")
    assert unconfirmed.code == 2
    assert "confirmation needed; add --yes" in unconfirmed.stderr
    assert {m["state"] for m in queue(forwarder)} == {"deferred"}
    both = forwarder.cli("queue", "hold", queue_ids[0], "--all")
    assert both.code == 2 and "not both" in both.stderr

    # On a terminal, a bulk operation draws a progress bar (on stderr).
    primary, secondary = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "smtpy", "queue", "hold", "--all", "--yes"],
            env=forwarder.env,
            stdout=subprocess.PIPE,
            stderr=secondary,
            stdin=subprocess.DEVNULL,
            timeout=60,
        )
        os.close(secondary)
        secondary = -1
        drawn = b""
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(primary)
        if secondary != -1:
            os.close(secondary)
    assert proc.returncode == 0
    assert proc.stdout.decode().strip() == "4 deliveries held"
    assert "hold…" in drawn.decode(errors="replace")
    assert "4/4" in drawn.decode(errors="replace")
    assert {m["state"] for m in queue(forwarder)} == {"held"}

    assert forwarder.run("queue", "delete", queue_ids[0]).strip() == "1 message deleted"
    bounced = forwarder.run("queue", "bounce", "--all", "--status", "held", "--yes")
    assert bounced.strip() == "3 messages bounced"
    # Each sender gets a DSN, sent by the daemon from the queue.
    forwarder.peers.wait_for(
        lambda got: len([r for r in got if r.host == SENDER_MX and r.mail_from == ""]) == 3
    )
    deadline = time.monotonic() + 20
    while queue(forwarder):  # the DSNs leave the queue once delivered
        assert time.monotonic() < deadline, queue(forwarder)
        time.sleep(0.2)

    logged = [json.loads(line) for line in forwarder.run("log", "--json").splitlines()]
    admin = sorted(
        (r["event"], r["reason"], r["queue_id"])
        for r in logged
        if r["reason"] and r["reason"].startswith("admin")
    )
    assert admin == sorted(
        [("discarded", "admin_delete", queue_ids[0])]
        + [("bounced", "admin_bounce", q) for q in queue_ids[1:]]
    )
