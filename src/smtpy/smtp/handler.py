"""The session handler: aiosmtpd's hooks, running smtpy's checks and handing mail to the queue.

    MAIL FROM    the address parses and SRS can rewrite it, SIZE= fits; then the
                 MAIL checks (rates)
    RCPT TO      the address parses, the transaction has room; `checks.recipients`
                 routes it (or refuses it); then the RCPT checks (DMARC policy
                 split, recipient-domain rate, SPF started early)
    end of DATA  the message fits, has no mail loop and a parseable header; then
                 the DATA checks (authentication, scanners), the Received header,
                 and the queue: 250 only once the store committed the message

The checks of each stage are objects with one method (`smtpy.checks.stages`),
run in order until one refuses. A store failure gives 451 (452 when the store
is full) and the client keeps the message; an unexpected error is a temporary
failure too, never a crash or a bounce. Replies are `smtpy.smtp.replies`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from smtpy import log, metrics
from smtpy.checks.limits import ConnectionGuard, RecipientDomainRate, SenderRate
from smtpy.checks.quota import MessageQuota, PlanSize, QuotaCheck
from smtpy.checks.recipients import Accepted, RulesFor, decide
from smtpy.checks.scanners import Scan, Scanner
from smtpy.checks.stages import (
    Client,
    DataCheck,
    MailCheck,
    Message,
    RcptCheck,
    Refusal,
    Transaction,
)
from smtpy.dkim.sign import split_fields
from smtpy.errors import InvalidInput, StorageFull
from smtpy.mail.framing import crlf_line_endings
from smtpy.mail.parsed import destination_domain
from smtpy.mail.received import MAX_RECEIVED, count_received, protocol, received_header
from smtpy.queue.message_log import EventBuffer, received_events, rejected_event
from smtpy.queue.queries import NewDelivery, NewMessage, new_queue_id
from smtpy.route.srs import SRS, SRSError
from smtpy.smtp import replies
from smtpy.smtp.server import ScannedPerConnection, client_ip, printable, tls_description
from smtpy.store.db import is_storage_full

if TYPE_CHECKING:
    from smtpy.checks.authentication import InboundChecker, OurNames

__all__ = ["Handler", "Policy"]

logger = log.get(__name__)

# Control characters, and the lone surrogates aiosmtpd makes of invalid UTF-8.
_BAD_ADDRESS = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")


@dataclass(frozen=True)
class Policy:
    hostname: str
    max_recipients: int
    max_message_size: int
    plus_separator: str


class Handler(ScannedPerConnection):
    """aiosmtpd hooks: the checks of each stage, durable queueing at DATA.

    The checks come from what is configured: `guard` (rates at MAIL and RCPT),
    `authcheck` (SPF, DKIM, DMARC, ARC; `names` are the node names whose
    results are forged when a client sends them), `scanner` (clamd, spamd).
    """

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
        names: OurNames | None = None,
        quota: MessageQuota | None = None,
    ) -> None:
        self.policy = policy
        self.queue = queue  # durably, before the 250 (the delivery worker's `queue`)
        self.rules_for = rules_for
        self.srs = srs
        self.guard = guard  # the server asks it at connect (smtpy.smtp.server)
        self.quota = quota  # the organizations' monthly message quotas (billing)
        # Message-log rows with no transaction to join; the daemon's upkeep writes them.
        self.events = events if events is not None else EventBuffer()
        checker = authcheck
        if checker is not None:  # its modules load only when the checks are on
            from smtpy.checks.authentication import (
                Authenticate,
                OnePolicyPerTransaction,
                StartSpf,
            )
        # The checks of each stage, in the order they run.
        self.mail_checks: list[MailCheck] = [SenderRate(guard)] if guard is not None else []
        self.rcpt_checks: list[RcptCheck] = [
            check
            for check in (
                QuotaCheck(quota) if quota is not None else None,
                OnePolicyPerTransaction(checker) if checker is not None else None,
                RecipientDomainRate(guard) if guard is not None else None,
                StartSpf(checker) if checker is not None else None,  # its DNS overlaps DATA
            )
            if check is not None
        ]
        self.data_checks: list[DataCheck] = [
            check
            for check in (
                PlanSize(quota) if quota is not None else None,
                Authenticate(checker, names) if checker is not None else None,
                Scan(scanner) if scanner is not None else None,
            )
            if check is not None
        ]

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
                client_ip=client_ip(session),
                sender=envelope.mail_from if sender is None else sender,
                **fields,
            )
        )
        return reply

    def _check_refused(
        self, session: Session, envelope: Envelope, refusal: Refusal, **fields: Any
    ) -> str:
        """A check's refusal: logged with its details, recorded, answered."""
        logger.info(
            "rejected",
            client=client_ip(session),
            sender=fields.get("sender", envelope.mail_from),
            reason=refusal.reason,
            reply=refusal.reply,
            detail=refusal.detail or None,
            **{k: v for k, v in fields.items() if k != "sender"},
        )
        return self._refused(session, envelope, refusal.reply, refusal.reason, **fields)

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
                session, envelope, replies.BAD_SENDER, "bad_sender", sender=printable(address)
            )
        if address != "<>":
            try:
                self.srs.forward(address)  # refuse now what DATA could not rewrite
            except SRSError:
                return self._refused(
                    session, envelope, replies.BAD_SENDER, "bad_sender", sender=address
                )
        for option in mail_options:
            name, _, value = option.partition("=")
            if name == "SIZE" and value.isdigit() and int(value) > self.policy.max_message_size:
                return self._refused(
                    session, envelope, replies.TOO_BIG, "too_big", sender=address, size=int(value)
                )
        txn = Transaction(sender="" if address == "<>" else address)
        client = _client(session)
        for check in self.mail_checks:
            refusal = await check.check_mail(client, txn, address, mail_options)
            if refusal is not None:
                return self._check_refused(session, envelope, refusal, sender=address)
        # The null sender stays "<>" in the envelope: aiosmtpd takes an empty
        # mail_from for "no MAIL yet" and would refuse every RCPT with 503.
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        setattr(envelope, "smtpy", txn)  # noqa: B010
        return replies.OK_SENDER

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
                session,
                envelope,
                replies.BAD_RECIPIENT,
                "bad_recipient",
                recipient=printable(address),
            )
        if len(envelope.rcpt_tos) >= self.policy.max_recipients:
            return self._refused(
                session,
                envelope,
                replies.TOO_MANY_RECIPIENTS,
                "too_many_recipients",
                recipient=address,
            )
        decision = await decide(
            address,
            rules_for=self.rules_for,
            srs=self.srs,
            srs_domain=self.policy.hostname,
            plus_separator=self.policy.plus_separator,
        )
        if not isinstance(decision, Accepted):
            return self._check_refused(session, envelope, decision, recipient=address)
        client = _client(session)
        for check in self.rcpt_checks:
            refusal = await check.check_rcpt(client, txn, decision)
            if refusal is not None:
                return self._check_refused(session, envelope, refusal, recipient=address)
        txn.accepted.append(decision)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return replies.OK_RECIPIENT

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        started = time.monotonic()
        txn = self._txn(envelope)
        content = envelope.original_content or b""
        if len(content) > self.policy.max_message_size:
            return self._refused(session, envelope, replies.TOO_BIG, "too_big", size=len(content))
        content = crlf_line_endings(content)
        refusal = _unacceptable(content)
        if refusal is not None:
            return self._check_refused(session, envelope, refusal, size=len(content))
        message = Message(new_queue_id(), content)
        deliveries = self._deliveries(txn)
        if not deliveries:  # every recipient discards: nothing to check or keep
            return self._discarded(session, txn, message)
        client = _client(session)
        for check in self.data_checks:
            refusal = await check.check_data(client, txn, message)
            if refusal is not None:
                return self._check_refused(session, envelope, refusal, size=len(message.content))
        return await self._hand_off(session, envelope, txn, message, deliveries, started)

    async def _hand_off(
        self,
        session: Session,
        envelope: Envelope,
        txn: Transaction,
        message: Message,
        deliveries: list[NewDelivery],
        started: float,
    ) -> str:
        """Queue the message: 250 once the store committed it, else 451 (452 when full)."""
        size = len(message.content)
        try:
            await self.queue(self._new_message(session, envelope, txn, message, deliveries))
        except Exception as exc:
            full = isinstance(exc, StorageFull) or is_storage_full(exc)
            logger.error(
                "enqueue_failed",
                queue_id=message.queue_id,
                client=client_ip(session),
                error=str(exc),
            )
            reply = replies.STORAGE_FULL if full else replies.TEMPORARY
            reason = "store_full" if full else "store_error"
            return self._refused(session, envelope, reply, reason, size=size)
        metrics.message_received()
        if self.quota is not None:
            self.quota.count(a.alias_domain for a in txn.accepted)
        logger.info(
            "received",
            queue_id=message.queue_id,
            client=client_ip(session),
            sender=txn.sender,
            recipients=[a.original for a in txn.accepted],
            destinations=len(deliveries),
            size=size,
            ms=round((time.monotonic() - started) * 1000, 1),
        )
        return replies.queued(message.queue_id)

    def _deliveries(self, txn: Transaction) -> list[NewDelivery]:
        """One delivery per distinct destination, with the envelope sender SRS gives it."""
        deliveries: dict[str, NewDelivery] = {}
        sender = txn.sender
        for accepted in txn.accepted:
            # A reversed SRS address is a bounce on its way back: keep its sender as it is.
            envelope_sender = (
                sender if accepted.srs_reversed or not sender else self.srs.forward(sender)
            )
            for destination in accepted.destinations:
                held = destination in accepted.held  # waits in the queue, never sent yet
                if destination not in deliveries:
                    deliveries[destination] = NewDelivery(
                        original_recipient=accepted.original,
                        recipient=destination,
                        domain=destination_domain(destination),
                        envelope_sender=envelope_sender,
                        fallbacks=accepted.fallbacks,
                        unconfirmed=held,
                    )
                elif held:
                    deliveries[destination] = replace(deliveries[destination], unconfirmed=True)
        return list(deliveries.values())

    def _discarded(self, session: Session, txn: Transaction, message: Message) -> str:
        """250 for a message whose every recipient discards it; only the message log keeps it."""
        metrics.message_discarded()
        logger.info(
            "discarded",
            queue_id=message.queue_id,
            client=client_ip(session),
            sender=txn.sender,
            recipients=[a.original for a in txn.accepted],
            size=len(message.content),
        )
        self.events.extend(
            received_events(
                queue_id=message.queue_id,
                client_ip=client_ip(session),
                sender=txn.sender,
                size=len(message.content),
                accepted=txn.accepted,
                at=time.time(),
            )
        )
        return replies.queued(message.queue_id)

    def _new_message(
        self,
        session: Session,
        envelope: Envelope,
        txn: Transaction,
        message: Message,
        deliveries: list[NewDelivery],
    ) -> NewMessage:
        """What the queue stores: the message under our Received header, its deliveries."""
        client = client_ip(session)
        tls = tls_description(session)
        smtputf8 = bool(envelope.smtp_utf8)
        header = received_header(
            hostname=self.policy.hostname,
            helo=session.host_name,
            client_ip=client,
            queue_id=message.queue_id,
            with_protocol=protocol(
                esmtp=bool(session.extended_smtp), tls=tls is not None, smtputf8=smtputf8
            ),
            tls=tls,
            recipient=txn.accepted[0].original if len(txn.accepted) == 1 else None,
        )
        return NewMessage(
            queue_id=message.queue_id,
            sender=txn.sender,
            data=header + message.content,
            deliveries=deliveries,
            client_ip=client,
            client_helo=(session.host_name or "")[:255] or None,
            smtputf8=smtputf8,
            auth_results=message.auth_results,
            log=received_events(
                queue_id=message.queue_id,
                client_ip=client,
                sender=txn.sender,
                size=len(message.content),
                accepted=txn.accepted,
                at=time.time(),
            ),
        )

    async def handle_exception(self, error: Exception) -> str:
        logger.error("session_error", error_type=type(error).__name__, error=str(error)[:200])
        return replies.TEMPORARY


def _client(session: Session) -> Client:
    return Client(client_ip(session), session.host_name)


def _unacceptable(content: bytes) -> Refusal | None:
    """A message no check needs to see: a mail loop, or a header the signer cannot parse."""
    if count_received(content) > MAX_RECEIVED:
        return Refusal(replies.LOOP, "loop")
    try:
        split_fields(content)  # what the signer cannot parse could never be forwarded
    except InvalidInput:
        return Refusal(replies.BAD_HEADER, "bad_header")
    return None
