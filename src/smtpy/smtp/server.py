"""The aiosmtpd server adaptation: what smtpy tunes in aiosmtpd's SMTP protocol.

- Enhanced status codes on every reply but the greeting and HELO/EHLO (RFC 2034),
  and control characters a client sent never echoed back.
- The connection guard (`smtpy.checks.limits`) at connect and before the banner:
  connection limits, the pregreet delay, the connect-stage checks (DNSBL).
- Timeouts: a short one until HELO/EHLO, RFC 5321's between commands, and
  during DATA between blocks, so a large message on a slow link is not cut off.
- DATA read in large chunks, not line by line (`smtpy.mail.framing`): only
  CRLF.CRLF ends it, so no second message can be smuggled in after a fake end.
- The factory keeps the open sessions, so a stopping daemon can tell each
  client `421 4.3.2` before it closes the connection (`Sessions.shut_down`).

The session handler, which runs smtpy's checks, is `smtpy.smtp.handler`.
"""

from __future__ import annotations

import asyncio
import collections
import re
import ssl
import time
from collections.abc import Callable
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, Session

from smtpy import log, metrics
from smtpy.checks.limits import ConnectionGuard
from smtpy.mail.framing import DataBuffer
from smtpy.smtp.replies import (
    COMMAND_TOO_LONG,
    DATA_SYNTAX,
    DATA_TOO_BIG,
    LINE_TOO_LONG,
    NEED_RCPT,
    OK,
    QUEUED_PREFIX,
    SHUTTING_DOWN,
    START_DATA,
    with_enhanced_code,
)

logger = log.get(__name__)

DATA_CHUNK = 256 * 1024  # bytes read from the socket at once during DATA
_AIOSMTPD_TOO_LONG = "500 Command line too long"  # aiosmtpd's reply, replaced by ours
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]")
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_SIMPLE_PATH = re.compile(rf"<({_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>")


class ScannedPerConnection:
    """`dir()` lists only the names aiosmtpd looks up, computed once per class.

    aiosmtpd builds its command, hook and AUTH tables for every connection
    from `dir()` and `inspect.getmembers()` of the server and the handler,
    which fetches every attribute: a fifth of a millisecond per connection,
    most of it spent on names it then ignores.
    """

    _aiosmtpd_prefixes: tuple[str, ...] = ()
    _names_by_class: dict[type, list[str]] = {}  # noqa: RUF012 (a cache, shared on purpose)

    def __dir__(self) -> list[str]:
        cls = type(self)
        names = self._names_by_class.get(cls)
        if names is None:
            names = [name for name in dir(cls) if name.startswith(self._aiosmtpd_prefixes)]
            self._names_by_class[cls] = names
        return list(names)


class SmtpServer(ScannedPerConnection, SMTP):
    """aiosmtpd's server with enhanced status codes and PIPELINING advertised.

    RFC 2034 puts a code on every 2xx, 4xx and 5xx reply except the greeting
    and the replies to HELO and EHLO. aiosmtpd echoes unknown commands in its
    replies: control characters a client sent are not sent back.
    """

    _aiosmtpd_prefixes = ("smtp_", "auth_")
    _greeted = False
    _in_hello = False
    _said_hello = False  # the first command timeout applies until HELO or EHLO
    _talked_early = False
    _counted = False  # by the guard's connection limits
    _refusal: str | None = None  # sent instead of the banner
    _in_data = False  # between 354 and the end of the data
    _data_timer_reset = 0.0  # loop time the timeout was last reset for data arriving
    _opened_at = 0.0
    _queued = 0  # messages this session got a 250 for
    _refused = 0  # 4xx and 5xx replies this session got
    _ended = False
    _sessions: set[SmtpServer] | None = None  # the factory's open sessions

    @property
    def in_transaction(self) -> bool:
        """Between MAIL FROM and the reply to the end of DATA."""
        envelope = self.envelope
        return self._in_data or (envelope is not None and envelope.mail_from is not None)

    def goodbye(self, reply: str = SHUTTING_DOWN) -> None:
        """Send `reply` (a 421) and close the connection; aiosmtpd's session task ends."""
        transport = self.transport
        if not isinstance(transport, asyncio.WriteTransport) or transport.is_closing():
            return
        transport.write(reply.encode("ascii") + b"\r\n")
        transport.close()  # after the reply: a transport flushes what it was given first

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """The address of MAIL FROM / RCPT TO and the rest of the line.

        `<local@domain>` with a dot-atom local part and a plain domain, nearly
        every path in practice, is taken as it is; anything else goes through
        aiosmtpd's RFC 5322 parser, which builds a class on each call.
        """
        simple = _SIMPLE_PATH.match(arg)
        if simple is not None:
            rest = arg[simple.end() :].lstrip(" \t")
            if not rest.startswith("("):  # a comment follows: the parser skips it
                address = simple.group(1)
                local_part = address.rpartition("@")[0]
                if self.local_part_limit and len(local_part) > self.local_part_limit:
                    return None, None
                return address, rest
        return super()._getaddr(arg)

    @property
    def _guard(self) -> ConnectionGuard | None:
        guard = getattr(self.event_handler, "guard", None)
        return guard if isinstance(guard, ConnectionGuard) else None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None  # not the TLS transport after STARTTLS
        if first:
            # aiosmtpd keeps these in a dict shared by every session, which EHLO raises
            # and each new connection resets: give each session its own.
            self.command_size_limits = collections.defaultdict(lambda: SMTP.command_size_limit)
        super().connection_made(transport)
        if first:
            self._opened_at = time.monotonic()
            metrics.session_opened()
        guard = self._guard
        if first and guard is not None:
            assert self.session is not None
            self._refusal = guard.open(client_ip(self.session))
            self._counted = self._refusal is None

    def connection_lost(self, error: Exception | None) -> None:
        if self._sessions is not None:
            self._sessions.discard(self)
        guard = self._guard
        if self._counted and guard is not None and self.session is not None:
            self._counted = False
            guard.close(client_ip(self.session))
        if not self._ended and self.session is not None:
            self._ended = True  # one event per session, whatever the transports
            logger.info(
                "session",
                client=client_ip(self.session),
                helo=self.session.host_name,
                tls=tls_description(self.session),
                queued=self._queued,
                refused=self._refused,
                seconds=round(time.monotonic() - self._opened_at, 3),
            )
        super().connection_lost(error)

    def data_received(self, data: bytes) -> None:
        if not self._greeted:
            self._talked_early = True
        elif self._in_data:
            # RFC 5321 §4.5.3.2.5: during DATA the timeout runs between blocks, so a large
            # message on a slow link is not cut off; reset at most once a second.
            now = self.loop.time()
            if now - self._data_timer_reset >= 1.0:
                self._data_timer_reset = now
                self._reset_timeout()
        super().data_received(data)

    def _reset_timeout(self, duration: float | None = None) -> None:
        guard = self._guard
        if duration is None and guard is not None:
            duration = guard.command_timeout if self._said_hello else guard.first_command_timeout
        super()._reset_timeout(duration)

    async def _greeting(self, banner: str) -> str:
        """The banner, once the guard let the client in; else refuse, close and end the session."""
        guard = self._guard
        if guard is None:
            return banner
        assert self.session is not None
        peer = client_ip(self.session)
        refusal = self._refusal or await guard.before_greeting(peer, lambda: self._talked_early)
        if refusal is None:
            return banner
        logger.info("refused", client=peer, reply=refusal)
        self._greeted = True
        await super().push(refusal)
        if self.transport is not None:
            self.transport.close()
        raise asyncio.CancelledError  # ends aiosmtpd's session task; nothing else to do

    async def push(self, status: Any) -> None:
        if isinstance(status, str):
            status = _UNPRINTABLE.sub("?", status)
            if not self._greeted:
                status = await self._greeting(status)
                self._greeted = True
            elif status == _AIOSMTPD_TOO_LONG:
                status = COMMAND_TOO_LONG
            elif not self._in_hello and not status.startswith("354"):
                status = with_enhanced_code(status)
            self._in_data = status.startswith("354")
            if status[:1] in "45":
                self._refused += 1
            elif status.startswith(QUEUED_PREFIX):
                self._queued += 1
        await super().push(status)

    async def smtp_HELO(self, hostname: str) -> None:
        self._in_hello = True
        try:
            await super().smtp_HELO(hostname)
        finally:
            self._in_hello = False
        self._hello_done()

    async def smtp_EHLO(self, hostname: str) -> None:
        self._in_hello = True
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._in_hello = False
        self._hello_done()

    def _hello_done(self) -> None:
        if not self._said_hello and self.session is not None and self.session.host_name:
            self._said_hello = True
            self._reset_timeout()

    async def smtp_DATA(self, arg: str) -> None:
        """DATA as aiosmtpd does it, but reading the content in large chunks, not by line.

        aiosmtpd awaits one `readuntil(CRLF)` per line, which costs more than
        everything else on a 100 KB message. What a pipelining client sent
        after the end of data goes back into the stream for the next command.
        """
        pending = getattr(self._reader, "_buffer", None)
        if not isinstance(pending, bytearray):  # not CPython's StreamReader: stay line by line
            await super().smtp_DATA(arg)
            return
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push(NEED_RCPT)
            return
        if arg:
            await self.push(DATA_SYNTAX)
            return
        await self.push(START_DATA)
        data = DataBuffer(self.data_size_limit)
        while not data.done:
            chunk = await self._reader.read(DATA_CHUNK)
            if not chunk:  # the client went away mid-DATA: nothing is kept
                self._writer.close()
                return
            rest = data.feed(chunk)
        if rest:
            pending[:0] = rest
        if data.too_big:
            await self.push(DATA_TOO_BIG)
        elif data.longest_line() > self.line_length_limit:
            await self.push(LINE_TOO_LONG)
        else:
            content = data.content()
            self.envelope.content = self.envelope.original_content = content
            status = await self._call_handler_hook("DATA")
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            await self.push(OK if status is MISSING else status)
            return
        self._set_post_data_state()  # type: ignore[no-untyped-call]


def printable(address: str) -> str:
    """An address fit for logs and the store: controls and invalid UTF-8 shown as escapes."""
    text = address.encode("utf-8", "backslashreplace").decode("utf-8")
    return _UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def client_ip(session: Session) -> str | None:
    peer = session.peer
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return None


def tls_description(session: Session) -> str | None:
    """`version=TLSv1.3 cipher=…` for a session after STARTTLS, None in clear."""
    extra = session.ssl
    if not extra:
        return None
    ssl_object = extra.get("ssl_object") if isinstance(extra, dict) else extra
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        return "TLS"
    cipher = ssl_object.cipher()
    return f"version={ssl_object.version()} cipher={cipher[0] if cipher else 'unknown'}"


class Sessions:
    """The protocol factory for `loop.create_server`, and the sessions it opened."""

    def __init__(self, make: Callable[[], SmtpServer]) -> None:
        self._make = make
        self.open: set[SmtpServer] = set()

    def __call__(self) -> SmtpServer:
        session = self._make()
        session._sessions = self.open
        self.open.add(session)
        return session

    async def shut_down(self, grace: float, *, poll: float = 0.05) -> int:
        """Let transactions under way end for up to `grace` seconds, then tell every
        client still connected `421 4.3.2` and close; the number told."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        # aiosmtpd signals no end of transaction to wait on: look every `poll` seconds.
        while any(s.in_transaction for s in self.open) and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(poll)
        told = list(self.open)
        for session in told:
            session.goodbye(SHUTTING_DOWN)
        if told:
            logger.info("sessions_closed", sessions=len(told), reply=SHUTTING_DOWN)
        return len(told)


def server_factory(
    handler: Any,
    *,
    hostname: str,
    max_message_size: int,
    tls_context: Callable[[], ssl.SSLContext | None],
    timeout: float = 300.0,
) -> Sessions:
    """A protocol factory for `loop.create_server`; each session takes the current TLS context.

    `handler` is the session handler (`smtpy.smtp.handler.Handler`); its `guard`, if
    any, applies the connection limits."""

    def factory() -> SmtpServer:
        return SmtpServer(
            handler,
            hostname=hostname,
            ident="smtpy",
            data_size_limit=max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            tls_context=tls_context(),
            require_starttls=False,
            timeout=timeout,
        )

    return Sessions(factory)
