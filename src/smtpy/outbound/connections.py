"""Outbound SMTP connections kept open briefly for the next message to the same host.

A new connection costs a TCP handshake, the greeting, EHLO (and STARTTLS with
a second EHLO) on both sides: more than the transaction itself for a small
message. After a delivery, a healthy connection waits here for up to
`idle_seconds` (Postfix's `smtp_connection_cache_time_limit` is 2 s); the next
delivery to the same address, port, server name and TLS level takes it and
starts with MAIL FROM (RFC 5321 §4.1.4: a completed transaction leaves the
session ready for the next one). A connection serves at most `max_uses`
transactions and lives at most `max_age` seconds, then QUITs.

The caller must be ready for a cached connection to have died while idle:
the server may have timed it out. `Deliverer` retries such a failure once on
a new connection, which is safe because it happens before DATA.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Hashable
from dataclasses import dataclass, field

import aiosmtplib
from aiosmtplib import SMTPException

QUIT_TIMEOUT = 5.0
"""Seconds to wait for the reply to QUIT; the message is settled by then."""


@dataclass(eq=False)
class Connection:
    """An open SMTP session and how much it has served."""

    smtp: aiosmtplib.SMTP
    opened: float  # loop time
    uses: int = 0
    expiry: asyncio.TimerHandle | None = field(default=None, repr=False)


class ConnectionCache:
    def __init__(
        self,
        *,
        idle_seconds: float = 2.0,
        max_uses: int = 100,
        max_age: float = 300.0,
        per_key: int = 10,
    ) -> None:
        self.idle_seconds = idle_seconds
        self.max_uses = max_uses
        self.max_age = max_age
        self.per_key = per_key
        self._idle: dict[Hashable, list[Connection]] = {}
        self._quitting: set[asyncio.Task[None]] = set()
        self.reused = 0  # transactions that skipped a connection set-up, for tests and stats

    def open(self, smtp: aiosmtplib.SMTP) -> Connection:
        """A newly opened connection, to be handed back with `give` after its transaction."""
        return Connection(smtp, asyncio.get_running_loop().time())

    def take(self, key: Hashable) -> Connection | None:
        """The most recently used idle connection for `key` that is still open, or None."""
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()
            if not idle:
                del self._idle[key]
            if connection.expiry is not None:
                connection.expiry.cancel()
            if connection.smtp.is_connected:
                self.reused += 1
                return connection
            connection.smtp.close()
        return None

    def give(self, key: Hashable, connection: Connection, *, reusable: bool) -> None:
        """Keep `connection` for the next transaction to `key`, or QUIT it in the background."""
        connection.uses += 1
        loop = asyncio.get_running_loop()
        idle = self._idle.setdefault(key, [])
        if (
            not reusable
            or not connection.smtp.is_connected
            or connection.uses >= self.max_uses
            or loop.time() - connection.opened >= self.max_age
            or len(idle) >= self.per_key
        ):
            if not idle:
                del self._idle[key]
            self._quit(connection)
            return
        idle.append(connection)
        connection.expiry = loop.call_later(self.idle_seconds, self._expire, key, connection)

    async def close(self) -> None:
        """QUIT every idle connection (at shutdown) and wait for those already quitting."""
        for idle in self._idle.values():
            for connection in idle:
                if connection.expiry is not None:
                    connection.expiry.cancel()
                self._quit(connection)
        self._idle.clear()
        if self._quitting:
            await asyncio.gather(*self._quitting, return_exceptions=True)

    def _expire(self, key: Hashable, connection: Connection) -> None:
        idle = self._idle.get(key)
        if idle is None or connection not in idle:
            return
        idle.remove(connection)
        if not idle:
            del self._idle[key]
        self._quit(connection)

    def _quit(self, connection: Connection) -> None:
        task = asyncio.get_running_loop().create_task(quit_politely(connection.smtp))
        self._quitting.add(task)
        task.add_done_callback(self._quitting.discard)


async def quit_politely(smtp: aiosmtplib.SMTP) -> None:
    """QUIT if still connected; always close."""
    try:
        if smtp.is_connected:
            await smtp.execute_command(b"QUIT", timeout=QUIT_TIMEOUT)
    except (SMTPException, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            smtp.close()
