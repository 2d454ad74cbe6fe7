"""The Target `smtpy serve` delivers through: it picks the Target for each destination.

    deliverer = Deliverer.from_settings(settings, lookups)
    outcomes = await deliverer.deliver(sender=..., recipients=[...], message=wire)

Every destination today is a mail address, delivered over SMTP
(`smtpy.outbound.smtp_target`). A webhook destination (an https URL) will be
a second `Target` (`smtpy.outbound.target`), chosen here by the form of the
recipient; the scheduler goes on seeing one Target.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from smtpy.outbound.mx import Route
from smtpy.outbound.smtp_target import SmtpTarget
from smtpy.outbound.target import Outcome, Target
from smtpy.outbound.tls_policy import TlsPolicy

if TYPE_CHECKING:
    from smtpy.config import Settings
    from smtpy.dns import Lookups

__all__ = ["Deliverer"]


class Deliverer:
    """Sends each group of recipients through the Target for their kind of destination."""

    def __init__(self, smtp: SmtpTarget) -> None:
        self.smtp = smtp

    @classmethod
    def from_settings(cls, settings: Settings, lookups: Lookups) -> Deliverer:
        """The deliverer `smtpy serve` runs (and `smtpy route explain` consults)."""
        return cls(SmtpTarget.from_settings(settings, lookups))

    def target_for(self, recipient: str) -> Target:
        """The Target that delivers to `recipient`: SMTP for a mail address."""
        return self.smtp

    async def deliver(
        self,
        *,
        sender: str,
        recipients: Sequence[str],
        message: bytes,
        smtputf8: bool = False,
    ) -> list[Outcome]:
        """One outcome per recipient, in order (the recipients share one destination)."""
        if not recipients:
            return []
        target = self.target_for(recipients[0])
        return await target.deliver(
            sender=sender, recipients=recipients, message=message, smtputf8=smtputf8
        )

    async def close(self) -> None:
        await self.smtp.close()

    async def route(self, domain: str) -> Route:
        """Where mail for `domain` goes (for `smtpy route explain`)."""
        return await self.smtp.route(domain)

    async def tls_policy(self, domain: str) -> TlsPolicy:
        """The TLS policy mail to `domain` gets (for `smtpy route explain`)."""
        return await self.smtp.tls_policy(domain)
