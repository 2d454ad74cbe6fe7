"""Where a prepared message goes: the `Target` protocol and what it answers.

The scheduler (`smtpy.queue.scheduler`) hands a Target one prepared message
(signed, sealed, ready for the wire) and the recipients that share it, and
gets back one `Outcome` per recipient, in the order given:

    outcomes = await target.deliver(sender=srs_sender, recipients=["bob@example.net"],
                                    message=wire, smtputf8=False)
    [Outcome(recipient="bob@example.net", status="delivered", code=250,
             reply="2.0.0 Ok: queued as 42", remote_host="mx.example.net[192.0.2.7]",
             enhanced="2.0.0")]

- delivered: the destination took responsibility; `reply` is what it said.
- deferred: try again later (the retry schedule decides when).
- failed: permanently; the queue sends the sender a DSN with `enhanced`.

A Target never raises for anything the destination or the network does:
every failure is an outcome, and a failure it does not understand is
"deferred" (never a bounce by accident). SMTP is one Target
(`smtpy.outbound.smtp_target`); an alias destination that is an https URL is
another (`smtpy.outbound.https_target`: the message posted as a signed
`message.received` event), chosen by `smtpy.outbound.deliver.Deliverer` by
the recipient's form. Both go through the same queue, retry schedule and
DSNs. `origin` tells a Target what the message was before forwarding (the
sender's own address, the alias it was sent to): SMTP does not need it, a
webhook destination does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = ["Origin", "Outcome", "Status", "Target"]

Status = Literal["delivered", "deferred", "failed"]


@dataclass(frozen=True)
class Outcome:
    """What happened to one recipient in one delivery attempt."""

    recipient: str
    status: Status
    code: int | None
    """The SMTP reply code; None for connection, DNS and local errors."""
    reply: str
    """The remote reply text (lines joined by spaces), or a description of the error."""
    remote_host: str | None
    """`mx1.example.test[127.0.0.2]`, or None when no host was reached."""
    enhanced: str
    """RFC 3463 status for DSNs: from the reply when it has one, derived otherwise."""
    retry_after: float | None = None
    """Seconds a deferring receiver asked to wait (an HTTP 429 or 503's Retry-After)."""


@dataclass(frozen=True)
class Origin:
    """The message as it arrived, for a Target that tells its receiver about it."""

    queue_id: str
    sender: str
    """The envelope sender as received (not rewritten by SRS); "" for a bounce."""
    aliases: tuple[str, ...]
    """The addresses the sender used, one per recipient given to the Target."""
    received_at: float
    auth_results: str | None = None
    """What this node's checks found on reception (an Authentication-Results value)."""


class Target(Protocol):
    """A kind of destination: delivers one prepared message to a group of its recipients."""

    async def deliver(
        self,
        *,
        sender: str,
        recipients: Sequence[str],
        message: bytes,
        smtputf8: bool = False,
        origin: Origin | None = None,
    ) -> list[Outcome]:
        """One outcome per recipient, in order; never raises for the remote side's doing."""
        ...

    async def close(self) -> None:
        """Let go of what is kept open between deliveries (at shutdown)."""
        ...
