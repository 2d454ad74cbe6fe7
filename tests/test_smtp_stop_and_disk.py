"""Ending well: 421 4.3.2 to sessions still open when the daemon stops, 452 4.3.1 on a full store.

The stop is the real daemon's (`smtpy serve`, SIGTERM). The full store is a
real SQLite file whose writer connection may not grow past its current size
(`PRAGMA max_page_count`), which fails with SQLITE_FULL exactly as a full disk does.
"""

from __future__ import annotations

import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Cli
from dnsserver import DNSServer
from inbound import Client, Running, scenario, serve_example
from mailpeers import DOMAIN, Forwarder, forwarding_world, make_message
from smtpy.smtp.replies import SHUTTING_DOWN, STORAGE_FULL
from smtpy.store.db import Database


@pytest.fixture
def forwarder(
    cli: Cli, cli_env: dict[str, str], dns_server: DNSServer, tmp_path: Path
) -> Iterator[Forwarder]:
    with forwarding_world(cli, cli_env, dns_server, tmp_path) as world:
        world.alias(f"team@{DOMAIN}", "bob@dest1.test")
        yield world


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (30 s at most)."""
    sock.settimeout(30)
    received = b""
    for _ in range(1000):  # bounded: a closed connection reads b""
        chunk = sock.recv(4096)
        if not chunk:
            return received
        received += chunk
    raise AssertionError(f"the server kept talking: {received[-200:]!r}")


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_session_open_at_sigterm_gets_421_before_the_connection_closes(
    forwarder: Forwarder,
) -> None:
    daemon = forwarder.start()
    with (
        socket.create_connection(("127.0.0.1", daemon.port), timeout=30) as sock,
        sock.makefile("rb") as stream,
    ):
        assert stream.readline().startswith(b"220 ")
        sock.sendall(b"EHLO client.sender.test\r\n")
        for _ in range(50):  # the EHLO reply, up to its last line
            if stream.readline()[3:4] == b" ":
                break
        daemon.signal(signal.SIGTERM)
        assert read_until_closed(sock).decode() == SHUTTING_DOWN + "\r\n"
    assert daemon.proc is not None and daemon.proc.wait(30) == 0
    assert daemon.events("sessions_closed")


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_full_store_answers_452_and_the_client_keeps_the_message(store_url: str) -> None:
    url = serve_example(store_url)
    data = make_message(
        message_id="<full@sender.test>", to="alice@example.test", body=("x" * 70 + "\r\n") * 300
    )

    async def transaction(client: Client) -> list[str]:
        replies = [await client.command(b"EHLO client.sender.test")]
        replies.append(await client.command(b"MAIL FROM:<bob@sender.test>"))
        replies.append(await client.command(b"RCPT TO:<alice@example.test>"))
        replies.append(await client.command(b"DATA"))
        replies.append(await client.command(data + b"\r\n."))
        return replies

    async def body(server: Running) -> tuple[list[str], int, str]:
        pages = await server.store.call(lambda db: db.scalar("PRAGMA page_count"))
        # The writer may not grow the file: the next message finds no room.
        await server.store.call(lambda db: db.scalar(f"PRAGMA max_page_count = {int(pages)}"))
        client = await Client.connect(server.port)
        await client.line()  # the banner
        full = await transaction(client)
        kept = await server.store.call(lambda db: db.scalar("SELECT count(*) FROM messages"))
        # Space again: the client, which kept the message, sends it again and it is queued.
        await server.store.call(lambda db: db.scalar("PRAGMA max_page_count = 1000000"))
        await client.command(b"RSET")
        retried = (await transaction(client))[-1]
        client.close()
        return full, int(kept), retried

    full, kept, retried = scenario(url, body)
    assert [reply[:3] for reply in full] == ["250", "250", "250", "354", "452"]
    assert full[4] == STORAGE_FULL
    assert STORAGE_FULL.startswith("452 4.3.1 ")
    assert kept == 0  # nothing half-stored: the 452 means the client still has it
    assert retried.startswith("250 2.0.0 Ok: queued as ")
    with Database(url) as db:
        assert db.scalar("SELECT count(*) FROM messages") == 1
