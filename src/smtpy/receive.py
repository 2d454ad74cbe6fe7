"""Inbound SMTP: the aiosmtpd server and the handler that applies smtpy's policy.

The handler decides each recipient at RCPT time (`smtpy.recipients`), and at
the end of DATA makes every line end in CRLF, adds the Received header,
rewrites the envelope sender with SRS and hands the message to the store
thread. It answers 250 only after the commit returned; a store failure gives
451 and the client keeps the message. An unexpected error is a temporary
failure too, never a crash or a bounce.

Only CRLF.CRLF ends DATA (aiosmtpd reads lines up to CRLF): a bare LF or CR
never does, so no second message can be smuggled in after a fake end of data.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from smtpy import log
from smtpy.addresses import split_address
from smtpy.queue import NewDelivery, NewMessage, new_queue_id
from smtpy.recipients import Accepted, RulesFor, decide
from smtpy.rewrite import MAX_RECEIVED, count_received, protocol, received_header
from smtpy.srs import SRS, SRSError
from smtpy.storethread import StoreThread

logger = log.get("smtpy.receive")

# Replies, generic and tagged (RFC 3463); details go to the log.
OK_SENDER = "250 2.1.0 Sender OK"
OK_RECIPIENT = "250 2.1.5 Recipient OK"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
TOO_BIG = "552 5.3.4 Message size exceeds fixed limit"
LOOP = "554 5.4.6 Too many Received headers: mail loop detected"
TEMPORARY = "451 4.3.0 Temporary failure, please try again later"
BAD_SENDER = "501 5.1.7 Bad sender address syntax"

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
_LINE_ENDING = re.compile(rb"\r\n|\r|\n")


def with_enhanced_code(reply: str) -> str:
    """Add an RFC 3463 code to a reply that lacks one (greeting and EHLO excluded by the caller)."""
    if len(reply) < 4 or _HAS_ENHANCED.match(reply):
        return reply
    code, sep = reply[:3], reply[3]
    enhanced = _ENHANCED_BY_CODE.get(code)
    if enhanced is None or sep not in " -":
        return reply
    return f"{code}{sep}{enhanced} {reply[4:]}"


class SmtpServer(SMTP):
    """aiosmtpd's server with enhanced status codes and PIPELINING advertised.

    RFC 2034 puts a code on every 2xx, 4xx and 5xx reply except the greeting
    and the replies to HELO and EHLO. aiosmtpd echoes unknown commands in its
    replies: control characters a client sent are not sent back.
    """

    _greeted = False
    _in_hello = False

    async def push(self, status: Any) -> None:
        if isinstance(status, str):
            status = _UNPRINTABLE.sub("?", status)
            if not self._greeted:
                self._greeted = True
            elif not self._in_hello and not status.startswith("354"):
                status = with_enhanced_code(status)
        await super().push(status)

    async def smtp_HELO(self, hostname: str) -> None:
        self._in_hello = True
        try:
            await super().smtp_HELO(hostname)
        finally:
            self._in_hello = False

    async def smtp_EHLO(self, hostname: str) -> None:
        self._in_hello = True
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._in_hello = False


@dataclass
class Transaction:
    """What the handler learned about the current transaction."""

    accepted: list[Accepted] = field(default_factory=list)


@dataclass(frozen=True)
class Policy:
    hostname: str
    max_recipients: int
    max_message_size: int
    plus_separator: str


class Handler:
    """aiosmtpd hooks: RCPT decisions, durable queueing at DATA."""

    def __init__(
        self,
        *,
        policy: Policy,
        store: StoreThread,
        rules_for: RulesFor,
        srs: SRS,
        on_queued: Callable[[], None] = lambda: None,
    ) -> None:
        self.policy = policy
        self.store = store
        self.rules_for = rules_for
        self.srs = srs
        self.on_queued = on_queued

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
        if address != "<>":
            try:
                self.srs.forward(address)  # refuse now what DATA could not rewrite
            except SRSError:
                return BAD_SENDER
        for option in mail_options:
            name, _, value = option.partition("=")
            if name == "SIZE" and value.isdigit() and int(value) > self.policy.max_message_size:
                return TOO_BIG
        # The null sender stays "<>" in the envelope: aiosmtpd takes an empty
        # mail_from for "no MAIL yet" and would refuse every RCPT with 503.
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
        if len(envelope.rcpt_tos) >= self.policy.max_recipients:
            return TOO_MANY_RECIPIENTS
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
            return decision.reply
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
            return TOO_BIG
        content = crlf_line_endings(content)
        if count_received(content) > MAX_RECEIVED:
            logger.warning("rejected", client=client, sender=envelope.mail_from, reason="loop")
            return LOOP
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
            logger.info(
                "discarded",
                queue_id=queue_id,
                client=client,
                sender=sender,
                recipients=[a.original for a in txn.accepted],
                size=len(content),
            )
            return f"250 2.0.0 Ok: queued as {queue_id}"
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
        )
        try:
            await self.store.enqueue(message)
        except Exception as exc:
            logger.error("enqueue_failed", queue_id=queue_id, client=client, error=str(exc))
            return TEMPORARY
        self.on_queued()
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


def crlf_line_endings(data: bytes) -> bytes:
    """Bare CR and LF become CRLF, as the message will go on the wire (aiosmtplib
    converts them when sending): what is stored, signed and sent is then the same."""
    crlf = data.count(b"\r\n")
    if crlf == data.count(b"\r") == data.count(b"\n"):
        return data
    return _LINE_ENDING.sub(b"\r\n", data)


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
