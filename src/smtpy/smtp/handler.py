"""Inbound SMTP: the aiosmtpd server and the handler that applies smtpy's policy.

The handler decides each recipient at RCPT time (`smtpy.checks.recipients`), and at
the end of DATA makes every line end in CRLF, adds the Received header,
rewrites the envelope sender with SRS and hands the message to the store
thread. It answers 250 only after the commit returned; a store failure gives
451 and the client keeps the message. An unexpected error is a temporary
failure too, never a crash or a bounce.

Only CRLF.CRLF ends DATA (`smtpy.mail.framing`): a bare LF or CR never does, so no
second message can be smuggled in after a fake end of data.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session

from smtpy import log, metrics
from smtpy.checks.limits import ConnectionGuard
from smtpy.checks.recipients import Accepted, RulesFor, decide
from smtpy.checks.scanners import Scanner
from smtpy.dkim.sign import split_fields
from smtpy.errors import InvalidInput
from smtpy.mail.addresses import split_address
from smtpy.mail.framing import DataBuffer, crlf_line_endings
from smtpy.mail.received import MAX_RECEIVED, count_received, protocol, received_header
from smtpy.queue.message_log import EventBuffer, received_events, rejected_event
from smtpy.queue.queries import NewDelivery, NewMessage, new_queue_id
from smtpy.route.srs import SRS, SRSError

if TYPE_CHECKING:
    from smtpy.checks.authentication import InboundChecker, SpfCheck

logger = log.get("smtpy.smtp.handler")
# aiosmtpd logs every command at INFO through the standard library: keep it quiet.
logging.getLogger("mail.log").setLevel(logging.WARNING)

# Replies, generic and tagged (RFC 3463); details go to the log.
OK_SENDER = "250 2.1.0 Sender OK"
OK_RECIPIENT = "250 2.1.5 Recipient OK"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
TOO_BIG = "552 5.3.4 Message size exceeds fixed limit"
LOOP = "554 5.4.6 Too many Received headers: mail loop detected"
TEMPORARY = "451 4.3.0 Temporary failure, please try again later"
BAD_SENDER = "501 5.1.7 Bad sender address syntax"
BAD_RECIPIENT = "501 5.1.3 Bad recipient address syntax"
BAD_HEADER = "554 5.6.0 Malformed message header: a line is not a header field"
COMMAND_TOO_LONG = "500 5.5.6 Command line too long"
OTHER_POLICY = "452 4.5.3 This recipient's domain has another policy: send it in another transaction"

DATA_CHUNK = 256 * 1024  # bytes read from the socket at once during DATA

# Enhanced status codes for aiosmtpd's own replies, which have none (RFC 2034).
_ENHANCED_BY_CODE = {
    "220": "2.0.0",
    "221": "2.0.0",
    "250": "2.0.0",
    "251": "2.1.5",
    "252": "2.5.0",
    "421": "4.3.2",
    "451": "4.3.0",
    "452": "4.5.3",
    "454": "4.7.0",
    "500": "5.5.2",
    "501": "5.5.4",
    "502": "5.5.1",
    "503": "5.5.1",
    "504": "5.5.4",
    "530": "5.7.0",
    "550": "5.0.0",
    "552": "5.3.4",
    "553": "5.1.3",
    "554": "5.0.0",
    "555": "5.5.4",
}
_HAS_ENHANCED = re.compile(r"^[245]\d\d[ -][245]\.\d{1,3}\.\d{1,3}\b")
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]")
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_SIMPLE_PATH = re.compile(rf"<({_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>")
# Control characters, and the lone surrogates aiosmtpd makes of invalid UTF-8.
_BAD_ADDRESS = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")


def with_enhanced_code(reply: str) -> str:
    """Add an RFC 3463 code to a reply that lacks one (greeting and EHLO excluded by the caller)."""
    if len(reply) < 4 or _HAS_ENHANCED.match(reply):
        return reply
    code, sep = reply[:3], reply[3]
    enhanced = _ENHANCED_BY_CODE.get(code)
    if enhanced is None or sep not in " -":
        return reply
    return f"{code}{sep}{enhanced} {reply[4:]}"


class _ScannedPerConnection:
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


class SmtpServer(_ScannedPerConnection, SMTP):
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
            self._refusal = guard.open(_peer(self.session))
            self._counted = self._refusal is None

    def connection_lost(self, error: Exception | None) -> None:
        guard = self._guard
        if self._counted and guard is not None and self.session is not None:
            self._counted = False
            guard.close(_peer(self.session))
        if not self._ended and self.session is not None:
            self._ended = True  # one event per session, whatever the transports
            logger.info(
                "session",
                client=_peer(self.session),
                helo=self.session.host_name,
                tls=_tls_description(self.session),
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
        peer = _peer(self.session)
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
            elif status == "500 Command line too long":
                status = COMMAND_TOO_LONG
            elif not self._in_hello and not status.startswith("354"):
                status = with_enhanced_code(status)
            self._in_data = status.startswith("354")
            if status[:1] in "45":
                self._refused += 1
            elif status.startswith("250 2.0.0 Ok: queued"):
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
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
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
            await self.push("552 Error: Too much mail data")
        elif data.longest_line() > self.line_length_limit:
            await self.push("500 Line too long (see RFC5321 4.5.3.1.6)")
        else:
            content = data.content()
            self.envelope.content = self.envelope.original_content = content
            status = await self._call_handler_hook("DATA")
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            await self.push("250 OK" if status is MISSING else status)
            return
        self._set_post_data_state()  # type: ignore[no-untyped-call]


@dataclass
class Transaction:
    """What the handler learned about the current transaction."""

    accepted: list[Accepted] = field(default_factory=list)
    rate_domains: set[str] = field(default_factory=set)  # recipient domains charged a token
    spf: asyncio.Task[SpfCheck] | None = None  # started at the first accepted recipient


@dataclass(frozen=True)
class Policy:
    hostname: str
    max_recipients: int
    max_message_size: int
    plus_separator: str


class Handler(_ScannedPerConnection):
    """aiosmtpd hooks: RCPT decisions, durable queueing at DATA."""

    _aiosmtpd_prefixes = ("handle_", "auth_")

    def __init__(
        self,
        *,
        policy: Policy,
        queue: Callable[[NewMessage], Awaitable[None]],
        rules_for: RulesFor,
        srs: SRS,
        guard: ConnectionGuard | None = None,
        scanner: Scanner | None = None,
        events: EventBuffer | None = None,
        authcheck: InboundChecker | None = None,
    ) -> None:
        self.policy = policy
        self.queue = queue  # durably, before the 250 (the delivery worker's `queue`)
        self.rules_for = rules_for
        self.srs = srs
        self.guard = guard  # connection and rate limits (smtpy.checks.limits)
        self.scanner = scanner  # virus and spam scanners (smtpy.checks.scanners)
        self.authcheck = authcheck  # SPF, DKIM, DMARC, ARC (smtpy.authcheck)
        # Message-log rows with no transaction to join; the daemon's upkeep writes them.
        self.events = events if events is not None else EventBuffer()

    def _refused(
        self,
        session: Session,
        envelope: Envelope,
        reply: str,
        reason: str,
        *,
        sender: str | None = None,
        **fields: Any,
    ) -> str:
        """Record a refusal in the message log (batched: no transaction now); return `reply`."""
        metrics.message_refused(reply, reason)
        self.events.add(
            rejected_event(
                reason=reason,
                reply=reply,
                client_ip=_peer(session),
                sender=envelope.mail_from if sender is None else sender,
                **fields,
            )
        )
        return reply

    @staticmethod
    def _txn(envelope: Envelope) -> Transaction:
        txn = getattr(envelope, "smtpy", None)
        if txn is None:
            txn = Transaction()
            setattr(envelope, "smtpy", txn)  # noqa: B010 - aiosmtpd envelopes take extra state
        assert isinstance(txn, Transaction)
        return txn

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        # No AUTH (aiosmtpd offers it after STARTTLS): a forwarder takes no logins.
        offered = [line for line in responses[:-1] if not line.startswith("250-AUTH")]
        # Insert before the final "250 HELP" line.
        return [*offered, "250-PIPELINING", "250-ENHANCEDSTATUSCODES", responses[-1]]

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if _BAD_ADDRESS.search(address):  # NUL, controls, invalid UTF-8: never deliverable
            return self._refused(
                session, envelope, BAD_SENDER, "bad_sender", sender=_printable(address)
            )
        if address != "<>":
            try:
                self.srs.forward(address)  # refuse now what DATA could not rewrite
            except SRSError:
                return self._refused(session, envelope, BAD_SENDER, "bad_sender", sender=address)
        for option in mail_options:
            name, _, value = option.partition("=")
            if name == "SIZE" and value.isdigit() and int(value) > self.policy.max_message_size:
                return self._refused(
                    session, envelope, TOO_BIG, "too_big", sender=address, size=int(value)
                )
        # The null sender stays "<>" in the envelope: aiosmtpd takes an empty
        # mail_from for "no MAIL yet" and would refuse every RCPT with 503.
        if self.guard is not None:
            refusal = self.guard.mail(_peer(session), address.rpartition("@")[2].lower() or None)
            if refusal is not None:
                logger.info("rate_limited", client=_peer(session), sender=address, reply=refusal)
                return self._refused(session, envelope, refusal, "rate_limit", sender=address)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        setattr(envelope, "smtpy", Transaction())  # noqa: B010
        return OK_SENDER

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        txn = self._txn(envelope)
        if _BAD_ADDRESS.search(address):
            return self._refused(
                session, envelope, BAD_RECIPIENT, "bad_recipient", recipient=_printable(address)
            )
        if len(envelope.rcpt_tos) >= self.policy.max_recipients:
            return self._refused(
                session, envelope, TOO_MANY_RECIPIENTS, "too_many_recipients", recipient=address
            )
        decision = await decide(
            address,
            rules_for=self.rules_for,
            srs=self.srs,
            srs_domain=self.policy.hostname,
            plus_separator=self.policy.plus_separator,
        )
        if not isinstance(decision, Accepted):
            logger.info(
                "rejected",
                client=_peer(session),
                sender=envelope.mail_from,
                recipient=address,
                reason=decision.reason,
                reply=decision.reply,
            )
            return self._refused(
                session, envelope, decision.reply, decision.reason, recipient=address
            )
        if (
            self.authcheck is not None
            and txn.accepted
            and self.authcheck.rejects_dmarc(decision.dmarc_reject)
            != self.authcheck.rejects_dmarc(txn.accepted[0].dmarc_reject)
        ):
            # One DATA gets one answer: a domain with another DMARC policy waits for
            # a transaction of its own (the client sends it right after this one).
            return self._refused(
                session, envelope, OTHER_POLICY, "policy_split", recipient=address
            )
        domain = address.rpartition("@")[2].lower()
        if self.guard is not None and domain not in txn.rate_domains:
            refusal = self.guard.recipient_domain(_peer(session), domain)
            if refusal is not None:
                logger.info("rate_limited", client=_peer(session), recipient=address, reply=refusal)
                return self._refused(session, envelope, refusal, "rate_limit", recipient=address)
            txn.rate_domains.add(domain)
        if self.authcheck is not None and txn.spf is None:  # its DNS overlaps DATA
            mail_from = envelope.mail_from or ""
            txn.spf = self.authcheck.start_spf(
                client_ip=_peer(session),
                helo=session.host_name,
                sender="" if mail_from == "<>" else mail_from,
            )
        txn.accepted.append(decision)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return OK_RECIPIENT

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        started = time.monotonic()
        txn = self._txn(envelope)
        content = envelope.original_content or b""
        client = _peer(session)
        if len(content) > self.policy.max_message_size:
            return self._refused(session, envelope, TOO_BIG, "too_big", size=len(content))
        content = crlf_line_endings(content)
        if count_received(content) > MAX_RECEIVED:
            logger.warning("rejected", client=client, sender=envelope.mail_from, reason="loop")
            return self._refused(session, envelope, LOOP, "loop", size=len(content))
        try:
            split_fields(content)  # what the signer cannot parse could never be forwarded
        except InvalidInput:
            return self._refused(session, envelope, BAD_HEADER, "bad_header", size=len(content))
        sender = envelope.mail_from or ""
        if sender == "<>":
            sender = ""
        queue_id = new_queue_id()
        deliveries: dict[str, NewDelivery] = {}
        for accepted in txn.accepted:
            # A reversed SRS address is a bounce on its way back: keep its sender as it is.
            envelope_sender = (
                sender if accepted.srs_reversed or not sender else self.srs.forward(sender)
            )
            for destination in accepted.destinations:
                if destination in deliveries:
                    continue
                deliveries[destination] = NewDelivery(
                    original_recipient=accepted.original,
                    recipient=destination,
                    domain=split_address(destination)[1],
                    envelope_sender=envelope_sender,
                )
        if not deliveries:
            metrics.message_discarded()
            logger.info(
                "discarded",
                queue_id=queue_id,
                client=client,
                sender=sender,
                recipients=[a.original for a in txn.accepted],
                size=len(content),
            )
            self.events.extend(
                received_events(
                    queue_id=queue_id,
                    client_ip=client,
                    sender=sender,
                    size=len(content),
                    accepted=txn.accepted,
                    at=time.time(),
                )
            )
            return f"250 2.0.0 Ok: queued as {queue_id}"
        if self.authcheck is not None:
            auth = await self.authcheck.check(
                content,
                spf=txn.spf,
                client_ip=client,
                helo=session.host_name,
                sender=sender,
                queue_id=queue_id,
                dmarc_reject=txn.accepted[0].dmarc_reject,
            )
            if auth.reply is not None:
                return self._refused(session, envelope, auth.reply, "dmarc", size=len(content))
            content = auth.headers + auth.message
        if self.scanner is not None:
            verdict = await self.scanner.scan(content)
            if verdict.reply is not None:
                logger.warning("scan_refused", client=client, sender=sender, detail=verdict.detail)
                return self._refused(
                    session, envelope, verdict.reply, verdict.reason, size=len(content)
                )
            content = verdict.headers + content
        tls = _tls_description(session)
        smtputf8 = bool(envelope.smtp_utf8)
        header = received_header(
            hostname=self.policy.hostname,
            helo=session.host_name,
            client_ip=client,
            queue_id=queue_id,
            with_protocol=protocol(
                esmtp=bool(session.extended_smtp), tls=tls is not None, smtputf8=smtputf8
            ),
            tls=tls,
            recipient=txn.accepted[0].original if len(txn.accepted) == 1 else None,
        )
        message = NewMessage(
            queue_id=queue_id,
            sender=sender,
            data=header + content,
            deliveries=list(deliveries.values()),
            client_ip=client,
            client_helo=(session.host_name or "")[:255] or None,
            smtputf8=smtputf8,
            log=received_events(
                queue_id=queue_id,
                client_ip=client,
                sender=sender,
                size=len(content),
                accepted=txn.accepted,
                at=time.time(),
            ),
        )
        try:
            await self.queue(message)
        except Exception as exc:
            logger.error("enqueue_failed", queue_id=queue_id, client=client, error=str(exc))
            return self._refused(session, envelope, TEMPORARY, "store_error", size=len(content))
        metrics.message_received()
        logger.info(
            "received",
            queue_id=queue_id,
            client=client,
            sender=sender,
            recipients=[a.original for a in txn.accepted],
            destinations=len(deliveries),
            size=len(content),
            ms=round((time.monotonic() - started) * 1000, 1),
        )
        return f"250 2.0.0 Ok: queued as {queue_id}"

    async def handle_exception(self, error: Exception) -> str:
        logger.error("session_error", error_type=type(error).__name__, error=str(error)[:200])
        return "451 4.3.0 Temporary failure, please try again later"


def _printable(address: str) -> str:
    """An address fit for logs and the store: controls and invalid UTF-8 shown as escapes."""
    text = address.encode("utf-8", "backslashreplace").decode("utf-8")
    return _UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _peer(session: Session) -> str | None:
    peer = session.peer
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return None


def _tls_description(session: Session) -> str | None:
    """`version=TLSv1.3 cipher=…` for a session after STARTTLS, None in clear."""
    extra = session.ssl
    if not extra:
        return None
    ssl_object = extra.get("ssl_object") if isinstance(extra, dict) else extra
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        return "TLS"
    cipher = ssl_object.cipher()
    return f"version={ssl_object.version()} cipher={cipher[0] if cipher else 'unknown'}"


def server_factory(
    handler: Handler,
    *,
    hostname: str,
    max_message_size: int,
    tls_context: Callable[[], ssl.SSLContext | None],
    timeout: float = 300.0,
) -> Callable[[], asyncio.Protocol]:
    """A protocol factory for `loop.create_server`; each session takes the current TLS context."""

    def factory() -> asyncio.Protocol:
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

    return factory
