"""The stages of an SMTP session a check can act at, one small protocol each.

    connect      ConnectCheck.check(client_ip)                  before the banner
    MAIL FROM    MailCheck.check_mail(client, txn, sender, options)
    RCPT TO      RcptCheck.check_rcpt(client, txn, recipient)   recipient: routed
    end of DATA  DataCheck.check_data(client, txn, message)

A check answers a `Refusal` (the reply, a short reason for the message log
and the metrics, details for the log) or None to let the client go on. An end
of DATA check may also amend the message: add header fields on top, replace
what it found forged. A connect check answers the reply alone: the connection
guard (`smtpy.checks.limits`) runs it during the pregreet delay, sends the
reply instead of the banner and ends the session. The SMTP handler (`smtpy.smtp.handler`) runs the
configured checks of each stage in order and stops at the first refusal; a
new check is a new file with a class that has one of these methods (as in
Maddy's `check` modules).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from smtpy.checks.authentication import SpfCheck
    from smtpy.checks.recipients import Accepted

__all__ = [
    "Client",
    "ConnectCheck",
    "DataCheck",
    "MailCheck",
    "Message",
    "RcptCheck",
    "Refusal",
    "Transaction",
]


@dataclass(frozen=True, slots=True)
class Refusal:
    reply: str  # an `smtpy.smtp.replies` reply
    reason: str  # a short key for the message log and the metrics
    detail: str = ""  # for the log only


@dataclass(frozen=True, slots=True)
class Client:
    """What the checks know of the SMTP client."""

    ip: str | None
    helo: str | None


@dataclass(slots=True)
class Transaction:
    """One MAIL FROM .. end of DATA: what the stages found so far.

    `sender` is the MAIL FROM address, "" for the null sender.
    """

    sender: str = ""
    accepted: list[Accepted] = field(default_factory=list)
    rate_domains: set[str] = field(default_factory=set)  # recipient domains charged a token
    spf: asyncio.Task[SpfCheck] | None = None  # started at the first accepted recipient


@dataclass(slots=True)
class Message:
    """The message at the end of DATA, as the checks amend it (CRLF line endings)."""

    queue_id: str
    content: bytes
    # The Authentication-Results value this node computed (authserv-id first), kept
    # with the message so the ARC seal uses it whichever node delivers.
    auth_results: str | None = None


class ConnectCheck(Protocol):
    async def check(self, client_ip: str) -> str | None: ...


class MailCheck(Protocol):
    async def check_mail(
        self, client: Client, txn: Transaction, sender: str, options: list[str]
    ) -> Refusal | None: ...


class RcptCheck(Protocol):
    async def check_rcpt(
        self, client: Client, txn: Transaction, recipient: Accepted
    ) -> Refusal | None: ...


class DataCheck(Protocol):
    async def check_data(
        self, client: Client, txn: Transaction, message: Message
    ) -> Refusal | None: ...
