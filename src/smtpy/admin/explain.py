"""`smtpy route explain`: what the daemon would do with one recipient, without sending anything.

Every answer comes from the code the daemon runs, never from a copy of it:

- the RCPT decision and its exact reply: `recipients.decide` (SRS reversal,
  served domain, alias rules, recursive expansion, loops, destinations awaiting
  their owner's confirmation);
- the rule that matched and how (exact, plus-tag, regex, catch-all):
  `route.resolve` on the recipient's domain;
- the envelope sender of the forwarded copies: `srs.SRS.forward` with the
  secret the daemon uses;
- From rewriting: the From domain's DMARC policy (`authcheck.dmarc`) and the
  rule of `authcheck.fromrewrite`, shown for both cases since whether an
  aligned DKIM signature survives is known only per message;
- where each destination domain's mail goes: `Deliverer.route` (MX hosts or
  the relay, through `Lookups` and SMTPY_DNS_NAMESERVERS) and the TLS policy
  `Deliverer.tls_policy` applies (opportunistic, required, MTA-STS).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from smtpy.checks.recipients import Accepted, RulesFor, decide
from smtpy.dns import DNSPermanentError, DNSTemporaryError, Lookups, NoSuchDomain, NullMX
from smtpy.errors import InvalidInput, SmtpyError
from smtpy.mail.addresses import parse_address, split_address
from smtpy.mail.parsed import is_url
from smtpy.outbound.tls_policy import TlsPolicy
from smtpy.route.aliases import Match, resolve
from smtpy.route.srs import SRS, SRSError

if TYPE_CHECKING:
    from smtpy.config import Settings
    from smtpy.outbound.deliver import Deliverer

__all__ = ["Explanation", "explain", "explain_route"]


@dataclass(frozen=True)
class RuleMatch:
    """The alias rule the recipient matched, and how."""

    alias: str
    how: str  # exact, plus, regex, catchall
    tag: str | None
    mode: str  # forward, reject, discard
    enabled: bool
    destinations: tuple[str, ...]  # the rule's own; the final ones are resolved further
    fallbacks: tuple[str, ...] = ()  # the rule's own, in order

    def public(self) -> dict[str, Any]:
        return {
            "alias": self.alias,
            "how": self.how,
            "tag": self.tag,
            "mode": self.mode,
            "enabled": self.enabled,
            "destinations": list(self.destinations),
            "fallbacks": list(self.fallbacks),
        }


@dataclass(frozen=True)
class MxHost:
    host: str
    port: int
    addresses: tuple[str, ...]
    error: str | None  # why it has no address
    allowed: bool  # by the TLS policy's mx patterns

    def public(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "addresses": list(self.addresses),
            "error": self.error,
            "allowed_by_policy": self.allowed,
        }


@dataclass(frozen=True)
class DestinationRoute:
    """Where mail for one destination domain goes, and with which TLS."""

    domain: str
    recipients: tuple[str, ...]
    via_relay: bool
    hosts: tuple[MxHost, ...]
    error: str | None  # the DNS answer that stops delivery (null MX, no such domain, ...)
    tls: TlsPolicy

    def public(self) -> dict[str, Any]:
        return {
            "domain": self.domain,
            "recipients": list(self.recipients),
            "via_relay": self.via_relay,
            "hosts": [h.public() for h in self.hosts],
            "error": self.error,
            "tls": self.tls.public(),
        }


@dataclass(frozen=True)
class FromRewrite:
    """What happens to the From header field of mail from this sender's domain."""

    from_domain: str
    enabled: bool  # SMTPY_FROM_REWRITE
    dmarc: str | None  # "p=reject (record at example.org)"; None: no policy
    dmarc_error: str | None  # the lookup failed
    with_aligned_dkim: str  # the decision when an aligned signature survives
    without_aligned_dkim: str

    def public(self) -> dict[str, Any]:
        return {
            "from_domain": self.from_domain,
            "enabled": self.enabled,
            "dmarc": self.dmarc,
            "dmarc_error": self.dmarc_error,
            "with_aligned_dkim": self.with_aligned_dkim,
            "without_aligned_dkim": self.without_aligned_dkim,
            "decided": "per message",
        }


@dataclass(frozen=True)
class Explanation:
    address: str
    sender: str | None
    accepted: bool
    reply: str  # the reply to RCPT TO (or to MAIL FROM when the sender is refused)
    reason: str | None  # the refusal's short key, as in the message log
    rule: RuleMatch | None
    srs_reversed: bool
    destinations: tuple[str, ...]
    envelope_sender: str | None  # None: no --from given
    from_rewrite: FromRewrite | None
    routes: tuple[DestinationRoute, ...] = field(default=())
    webhooks: tuple[str, ...] = field(default=())  # "webhook https://…" per URL destination
    fallbacks: tuple[str, ...] = ()  # in order, when a destination fails for good
    # Destinations awaiting their owner's confirmation: mail for them waits in the queue
    # (or, when no destination is confirmed, RCPT gets 450 4.2.1).
    awaiting_confirmation: tuple[str, ...] = field(default=())

    def public(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "sender": self.sender,
            "accepted": self.accepted,
            "reply": self.reply,
            "reason": self.reason,
            "rule": self.rule.public() if self.rule else None,
            "srs_reversed": self.srs_reversed,
            "destinations": list(self.destinations),
            "envelope_sender": self.envelope_sender,
            "from_rewrite": self.from_rewrite.public() if self.from_rewrite else None,
            "routes": [r.public() for r in self.routes],
            "webhooks": list(self.webhooks),
            "fallbacks": list(self.fallbacks),
            "awaiting_confirmation": list(self.awaiting_confirmation),
        }


async def explain(
    address: str,
    *,
    sender: str | None,
    settings: Settings,
    rules_for: RulesFor,
    srs: SRS,
    lookups: Lookups,
    deliverer: Deliverer,
) -> Explanation:
    """Explain what `smtpy serve` would do with mail from `sender` to `address`."""
    from smtpy.smtp.replies import BAD_SENDER, OK_RECIPIENT

    null_sender = sender is not None and sender.strip() in ("", "<>")
    if sender is not None and not null_sender:
        try:
            srs.forward(sender)
        except SRSError:
            return Explanation(
                address, sender, False, BAD_SENDER, "bad_sender", None, False, (), None, None
            )

    decision = await decide(
        address,
        rules_for=rules_for,
        srs=srs,
        srs_domain=settings.hostname,
        plus_separator=settings.plus_separator,
    )
    rule = await _matched_rule(address, rules_for, settings.plus_separator)
    if not isinstance(decision, Accepted):
        waiting = decision.detail.split(", ") if decision.reason == "unconfirmed" else []
        return Explanation(
            address,
            sender,
            False,
            decision.reply,
            decision.reason,
            rule,
            False,
            (),
            None,
            None,
            awaiting_confirmation=tuple(waiting),
        )

    envelope_sender: str | None = None
    if sender is not None:
        keep = null_sender or decision.srs_reversed
        envelope_sender = "" if null_sender else (sender if keep else srs.forward(sender))
    from_rewrite = None
    if sender is not None and not null_sender and not decision.srs_reversed:
        from_rewrite = await _from_rewrite(split_address(sender)[1], settings, lookups)
    routes = await _routes(decision.destinations, settings, deliverer, lookups)
    return Explanation(
        address=address,
        sender=sender,
        accepted=True,
        reply=OK_RECIPIENT,
        reason=None,
        rule=rule,
        srs_reversed=decision.srs_reversed,
        destinations=decision.destinations,
        envelope_sender=envelope_sender,
        from_rewrite=from_rewrite,
        routes=routes,
        webhooks=tuple(
            _webhook(d, settings.webhook_allow_private) for d in decision.destinations if is_url(d)
        ),
        fallbacks=decision.fallbacks,
        awaiting_confirmation=(
            *(d for d in decision.destinations if d in decision.held),
            *await fallbacks_awaiting_confirmation(address, decision.fallbacks, rules_for),
        ),
    )


async def fallbacks_awaiting_confirmation(
    address: str, fallbacks: tuple[str, ...], rules_for: RulesFor
) -> tuple[str, ...]:
    """The fallbacks the owner of `address`'s domain has not confirmed: a message handed
    to one waits in the queue until it is (`smtpy.queue.fallbacks`)."""
    if not fallbacks:
        return ()
    rules = await rules_for(split_address(address)[1])
    unconfirmed = rules.unconfirmed if rules is not None else frozenset()
    return tuple(f for f in fallbacks if not is_url(f) and parse_address(f).key in unconfirmed)


def _webhook(url: str, allow_private: bool) -> str:
    """How a URL destination is delivered: posted, not looked up in DNS for MX hosts."""
    from smtpy.events.sender import parse_url

    try:
        parse_url(url, allow_private=allow_private)
    except InvalidInput as exc:
        return f"webhook {url}: refused, the delivery fails ({exc.message})"
    return f"webhook {url} (message.received, signed with its destination secret)"


async def _matched_rule(address: str, rules_for: RulesFor, plus_separator: str) -> RuleMatch | None:
    try:
        parsed = parse_address(address)
    except InvalidInput:
        return None
    rules = await rules_for(parsed.domain)
    match: Match | None = None
    if rules is not None:
        match = resolve(parsed.local, rules, plus_separator=plus_separator)
    if match is None:
        return None
    rule = match.rule
    return RuleMatch(
        rule.address,
        match.how,
        match.tag,
        rule.mode,
        rule.enabled,
        rule.destinations,
        rule.fallbacks,
    )


async def _from_rewrite(from_domain: str, settings: Settings, lookups: Lookups) -> FromRewrite:
    from smtpy.checks.dmarc import lookup_policy
    from smtpy.checks.from_decision import decide as decide_from

    dmarc: str | None = None
    error: str | None = None
    disposition: str | None = None
    try:
        policy = await lookup_policy(lookups, from_domain)
    except DNSTemporaryError as exc:
        error = str(exc)
    else:
        if policy is not None:
            disposition = policy.disposition
            dmarc = f"p={policy.disposition} (record at _dmarc.{policy.record_domain})"

    def verdict(aligned: bool) -> str:
        if not settings.from_rewrite:
            return "kept: From rewriting is off (SMTPY_FROM_REWRITE)"
        if error is not None:
            return "decided per message (the DMARC policy could not be looked up now)"
        decided = decide_from(disposition=disposition, aligned_dkim=aligned, survives=aligned)
        return f"{'rewritten' if decided.rewrite else 'kept'}: {decided.reason}"

    return FromRewrite(
        from_domain=from_domain,
        enabled=settings.from_rewrite,
        dmarc=dmarc,
        dmarc_error=error,
        with_aligned_dkim=verdict(True),
        without_aligned_dkim=verdict(False),
    )


async def _routes(
    destinations: tuple[str, ...], settings: Settings, deliverer: Deliverer, lookups: Lookups
) -> tuple[DestinationRoute, ...]:
    by_domain: dict[str, list[str]] = {}
    for destination in destinations:
        if is_url(destination):  # posted: see Explanation.webhooks
            continue
        by_domain.setdefault(split_address(destination)[1], []).append(destination)
    return tuple(
        await asyncio.gather(
            *(
                _route(domain, tuple(recipients), settings, deliverer, lookups)
                for domain, recipients in by_domain.items()
            )
        )
    )


async def _route(
    domain: str,
    recipients: tuple[str, ...],
    settings: Settings,
    deliverer: Deliverer,
    lookups: Lookups,
) -> DestinationRoute:
    via_relay = settings.relay_host is not None
    if via_relay and settings.relay_tls:
        tls = TlsPolicy("required", "SMTPY_RELAY_TLS: the relay's certificate is verified")
    else:
        tls = await deliverer.tls_policy(domain)
    error: str | None = None
    hosts: list[MxHost] = []
    try:
        route = await deliverer.route(domain)
    except NullMX:
        error = f"{domain} accepts no mail (null MX): mail to it bounces (5.1.10)"
    except NoSuchDomain:
        error = f"{domain} does not exist: mail to it bounces (5.1.2)"
    except DNSPermanentError as exc:
        error = f"{exc}: mail to it bounces (5.4.4)"
    except DNSTemporaryError as exc:
        error = f"{exc}: mail waits in the queue (4.4.3)"
    except ValueError:
        error = f"bad domain literal {domain}"
    else:
        if not route.hosts:
            error = f"mail for {domain} loops back to this forwarder (5.4.6)"
        for host, port in route.hosts:
            hosts.append(await _mx_host(host, port, tls, lookups))
    return DestinationRoute(domain, recipients, via_relay, tuple(hosts), error, tls)


async def _mx_host(host: str, port: int, tls: TlsPolicy, lookups: Lookups) -> MxHost:
    import ipaddress

    try:
        return MxHost(host, port, (str(ipaddress.ip_address(host)),), None, True)
    except ValueError:
        pass
    addresses: tuple[str, ...] = ()
    error = None
    try:
        addresses = tuple(await lookups.addresses(host))
        if not addresses:
            error = "no A or AAAA record"
    except SmtpyError as exc:
        error = str(exc)
    return MxHost(host, port, addresses, error, tls.mx_allowed(host))


def explain_route(settings: Settings, address: str, *, sender: str | None = None) -> Explanation:
    """Open the store and DNS as the daemon would, and explain one route (blocking).

    An address that is not one (the daemon would answer 501) is `InvalidInput`:
    there is no route to explain.
    """
    from smtpy.admin.aliases import domain_rules
    from smtpy.admin.srs_secret import stored_srs_secret
    from smtpy.dns import make_resolver
    from smtpy.outbound.deliver import Deliverer
    from smtpy.store.db import Database

    parse_address(address)  # InvalidInput: "'x' is not a mail address: expected local@domain"
    with Database(settings.database_url, create=False) as db:
        secret = (
            settings.srs_secret.get_secret_value()
            if settings.srs_secret is not None
            else stored_srs_secret(db)
        )
        srs = SRS(secrets=(secret.encode(),), domain=settings.hostname)

        async def rules_for(domain: str) -> Any:
            return domain_rules(db, domain)

        async def run() -> Explanation:
            lookups = Lookups(make_resolver(settings.dns_nameservers, timeout=settings.dns_timeout))
            return await explain(
                address,
                sender=sender,
                settings=settings,
                rules_for=rules_for,
                srs=srs,
                lookups=lookups,
                deliverer=Deliverer.from_settings(settings, lookups),
            )

        return asyncio.run(run())
