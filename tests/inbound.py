"""smtpy's SMTP server and handler in process, for tests of the receive path's guards.

`running(store_url, guard=..., scanner=...)` serves on 127.0.0.1 with a real
store thread; `Client` is a raw client that can talk out of turn, send any
bytes and see the server hang up.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from admin_store import add_alias, add_domain
from smtpy.admin.aliases import domain_rules
from smtpy.checks.limits import ConnectionGuard
from smtpy.checks.scanners import Scanner
from smtpy.queue.writer import StoreThread
from smtpy.route.aliases import DomainRules
from smtpy.route.srs import SRS
from smtpy.smtp.handler import Handler, Policy
from smtpy.smtp.server import server_factory

HOSTNAME = "mx.forwarder.test"
BANNER = f"220 {HOSTNAME} smtpy"


def serve_example(store_url: str) -> str:
    """Add example.test with alice@ -> alice@dest.test to the store; return its URL."""
    from smtpy.store.db import Database

    db = Database(store_url)
    try:
        add_domain(db, "example.test", key_algorithm="ed25519")
        add_alias(db, "alice@example.test", ["alice@dest.test"])
    finally:
        db.close()
    return store_url


@dataclass
class Running:
    port: int
    store: StoreThread


@contextlib.asynccontextmanager
async def running(
    store_url: str, *, guard: ConnectionGuard | None = None, scanner: Scanner | None = None
) -> AsyncIterator[Running]:
    """smtpy's SMTP server and handler on 127.0.0.1, with a store thread on `store_url`."""
    store = StoreThread(store_url, name="inbound-store")
    store.start()

    async def rules_for(domain: str) -> DomainRules | None:
        return await store.call(lambda db: domain_rules(db, domain))

    handler = Handler(
        policy=Policy(
            hostname=HOSTNAME, max_recipients=10, max_message_size=100_000, plus_separator="+"
        ),
        queue=store.enqueue,
        rules_for=rules_for,
        srs=SRS(secrets=(b"inbound test",), domain=HOSTNAME),
        guard=guard,
        scanner=scanner,
    )
    listener = await asyncio.get_running_loop().create_server(
        server_factory(
            handler,
            hostname=HOSTNAME,
            max_message_size=100_000,
            tls_context=lambda: None,
            timeout=guard.command_timeout if guard is not None else 300.0,
        ),
        "127.0.0.1",
        0,
    )
    try:
        yield Running(listener.sockets[0].getsockname()[1], store)
    finally:
        listener.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(listener.wait_closed(), 5)
        store.stop()


class Client:
    """A raw SMTP client that can talk out of turn and read until the server hangs up."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int, source: str = "127.0.0.1") -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        return cls(reader, writer)

    async def line(self) -> str:
        """The next reply line; "" once the server closed the connection."""
        data = await asyncio.wait_for(self.reader.readline(), 10)
        return data.decode("utf-8", "replace").rstrip("\r\n")

    async def reply(self) -> str:
        while True:
            line = await self.line()
            if line[3:4] != "-":
                return line

    async def command(self, text: bytes) -> str:
        self.writer.write(text + b"\r\n")
        await self.writer.drain()
        return await self.reply()

    async def closed(self) -> bool:
        """Whether the server hung up (reads to the end within 10 s)."""
        return await asyncio.wait_for(self.reader.read(), 10) == b""

    def close(self) -> None:
        self.writer.close()


def scenario(
    store_url: str,
    body: Callable[[Running], Awaitable[Any]],
    *,
    guard: ConnectionGuard | None = None,
    scanner: Scanner | None = None,
) -> Any:
    """Run `body(server)` on a fresh event loop against a running server; its result."""

    async def main() -> Any:
        async with running(store_url, guard=guard, scanner=scanner) as server:
            return await body(server)

    return asyncio.run(main())
