"""The Target `smtpy serve` delivers through: it picks the Target for each destination.

    deliverer = Deliverer.from_settings(settings, lookups)
    outcomes = await deliverer.deliver(sender=..., recipients=[...], message=wire)

A mail address is delivered over SMTP (`smtpy.outbound.smtp_target`); an
alias destination that is a URL (`https://…`, or `http://…` where
SMTPY_WEBHOOK_ALLOW_PRIVATE allows it; otherwise the URL fails, saying why)
is posted as a signed `message.received` event
(`smtpy.outbound.https_target`). The Target is chosen here by the form of
the recipient; the scheduler goes on seeing one Target.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from smtpy.mail.parsed import is_url
from smtpy.outbound.https_target import HttpsTarget, SecretLookup
from smtpy.outbound.mx import Route
from smtpy.outbound.smtp_target import SmtpTarget
from smtpy.outbound.target import Origin, Outcome, Target
from smtpy.outbound.tls_policy import TlsPolicy

if TYPE_CHECKING:
    from smtpy.config import Settings
    from smtpy.dns import Lookups

__all__ = ["Deliverer"]


class Deliverer:
    """Sends each group of recipients through the Target for their kind of destination."""

    def __init__(self, smtp: SmtpTarget, https: HttpsTarget | None = None) -> None:
        self.smtp = smtp
        self.https = https

    @classmethod
    def from_settings(
        cls, settings: Settings, lookups: Lookups, *, secrets: SecretLookup | None = None
    ) -> Deliverer:
        """The deliverer `smtpy serve` runs (and `smtpy route explain` consults).

        `secrets` finds a URL destination's signing secret in the store; without
        it, deliveries to URLs are deferred, saying so.
        """
        return cls(
            SmtpTarget.from_settings(settings, lookups),
            HttpsTarget.from_settings(settings, secrets=secrets),
        )

    def target_for(self, recipient: str) -> Target:
        """The Target that delivers to `recipient`: HTTPS for a URL, SMTP for a mail address."""
        if is_url(recipient) and self.https is not None:
            return self.https
        return self.smtp

    async def deliver(
        self,
        *,
        sender: str,
        recipients: Sequence[str],
        message: bytes,
        smtputf8: bool = False,
        origin: Origin | None = None,
    ) -> list[Outcome]:
        """One outcome per recipient, in order (the recipients share one destination)."""
        if not recipients:
            return []
        target = self.target_for(recipients[0])
        if any(self.target_for(r) is not target for r in recipients):  # never mixed by the queue
            return [
                outcome
                for n, r in enumerate(recipients)
                for outcome in await self.deliver(
                    sender=sender,
                    recipients=[r],
                    message=message,
                    smtputf8=smtputf8,
                    origin=_one(origin, n),
                )
            ]
        return await target.deliver(
            sender=sender, recipients=recipients, message=message, smtputf8=smtputf8, origin=origin
        )

    async def close(self) -> None:
        await self.smtp.close()
        if self.https is not None:
            await self.https.close()

    async def route(self, domain: str) -> Route:
        """Where mail for `domain` goes (for `smtpy route explain`)."""
        return await self.smtp.route(domain)

    async def tls_policy(self, domain: str) -> TlsPolicy:
        """The TLS policy mail to `domain` gets (for `smtpy route explain`)."""
        return await self.smtp.tls_policy(domain)


def _one(origin: Origin | None, n: int) -> Origin | None:
    """`origin` for the `n`th recipient alone."""
    if origin is None:
        return None
    aliases = origin.aliases[n : n + 1]
    return Origin(origin.queue_id, origin.sender, aliases, origin.received_at, origin.auth_results)
