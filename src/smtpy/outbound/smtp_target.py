"""The SMTP Target: one transaction per destination domain, to its MX hosts or the relay.

`SmtpTarget.deliver` takes a message and the recipients it has for one
destination domain (the caller groups them) and returns one `Outcome` per
recipient, in the order given. It never raises for anything the remote side or
the network does: every failure becomes an outcome the queue can act on.

How a delivery goes (RFC 5321 §5, RFC 7505, RFC 7435):

- Route (`smtpy.outbound.mx`): the MX hosts in preference order, the relay,
  or a domain literal; DNS answers that rule out any attempt (null MX, no
  such domain, a loop) give every recipient the same outcome.
- Each MX host, then each of its addresses (A, then AAAA), is tried until one
  takes the transaction. Connection refused or reset, timeouts, a greeting other
  than 220, EHLO and HELO both refused, a failed TLS handshake, a 421 or a lost
  connection before DATA: all move on to the next address. At most
  `MAX_ADDRESSES` addresses are tried per delivery. An MX host that does not
  resolve is skipped like an unreachable one. Every address unreachable →
  deferred (4.4.1 when nothing answered).
- TLS policy (`smtpy.outbound.tls_policy.TlsPolicies`): a domain in
  `tls_required_domains` or with an MTA-STS policy in mode enforce gets mail
  only over STARTTLS with a certificate valid for the MX host name (and, for
  MTA-STS, only at the MX hosts its policy names); anything less defers with
  4.7.4 and the reason, never a clear-text retry. Under MTA-STS "testing" the
  certificate is checked too, but a failure is only logged and the delivery
  goes on opportunistically. Otherwise a failed handshake is retried once on
  the same address in clear text. The session itself: `smtpy.outbound.smtp_session`.
- Any exception that is not about the remote side (a bug) → every recipient
  deferred with the error's type and text, logged; never a bounce by accident.

Connections are reused (`smtpy.outbound.connections`): after a transaction the
session stays open for two seconds, and the next delivery to the same address
with the same TLS requirements starts at MAIL FROM. One that died while idle
is replaced by a new connection, at once and without counting as a failure.

Concurrency: at most `per_domain_limit` deliveries run at once for one
destination domain, so a slow MX holds back only its own domain's mail.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING

from aiosmtplib import SMTPException

from smtpy import log
from smtpy.dns import Lookups
from smtpy.outbound.connections import ConnectionCache, quit_politely
from smtpy.outbound.mx import NoRoute, Route, Routes, is_ip
from smtpy.outbound.smtp_replies import HostFailed, outcomes
from smtpy.outbound.smtp_session import Envelope, SmtpClient, TlsLevel, TlsPlan
from smtpy.outbound.target import Origin, Outcome
from smtpy.outbound.tls_policy import OPPORTUNISTIC, TlsPolicies, TlsPolicy, verified_context

if TYPE_CHECKING:
    from smtpy.config import Settings

__all__ = ["MAX_ADDRESSES", "SmtpTarget"]

logger = log.get(__name__)

MAX_ADDRESSES = 10
"""At most this many MX addresses are tried in one delivery attempt."""


class SmtpTarget:
    """Sends messages to their destination MX hosts (or a relay) over SMTP."""

    def __init__(
        self,
        *,
        hostname: str,
        lookups: Lookups,
        port: int = 25,
        relay: tuple[str, int] | None = None,
        relay_username: str | None = None,
        relay_password: str | None = None,
        relay_tls: bool = False,
        connect_timeout: float = 30.0,
        command_timeout: float = 300.0,
        per_domain_limit: int = 10,
        tls_policies: TlsPolicies | None = None,
        tls_ca_file: str | None = None,
    ) -> None:
        if (relay_username is None) != (relay_password is None):
            raise ValueError("relay_username and relay_password go together")
        if relay is None and (relay_username is not None or relay_tls):
            raise ValueError("relay credentials and relay_tls need a relay")
        if per_domain_limit < 1:
            raise ValueError("per_domain_limit must be at least 1")
        self._routes = Routes(hostname=hostname, lookups=lookups, port=port, relay=relay)
        self._relay_tls = relay_tls
        self._per_domain_limit = per_domain_limit
        self._limits: dict[str, tuple[asyncio.Semaphore, int]] = {}
        self._connections = ConnectionCache(per_key=per_domain_limit)
        self._tls_policies = tls_policies if relay is None else None
        needs_verified = relay_tls or self._tls_policies is not None
        login = None
        if relay_username is not None and relay_password is not None:
            login = (relay_username, relay_password)
        self._client = SmtpClient(
            hostname=hostname,
            connect_timeout=connect_timeout,
            command_timeout=command_timeout,
            login=login,
            relay_tls=relay_tls,
            verified_tls=verified_context(tls_ca_file) if needs_verified else None,
        )

    @classmethod
    def from_settings(cls, settings: Settings, lookups: Lookups) -> SmtpTarget:
        """The SMTP target `smtpy serve` runs (and `smtpy route explain` consults)."""
        policies = TlsPolicies(
            lookups,
            required_domains=settings.tls_required_domains,
            mta_sts=settings.mta_sts,
            port=settings.mta_sts_port,
            ca_file=settings.tls_ca_file,
        )
        password = settings.relay_password
        return cls(
            hostname=settings.hostname,
            lookups=lookups,
            port=settings.delivery_port,
            relay=settings.relay_host,
            relay_username=settings.relay_username,
            relay_password=password.get_secret_value() if password is not None else None,
            relay_tls=settings.relay_tls,
            per_domain_limit=settings.destination_concurrency,
            tls_policies=policies,
            tls_ca_file=str(settings.tls_ca_file) if settings.tls_ca_file else None,
        )

    # -- the Target ----------------------------------------------------------------

    async def deliver(
        self,
        *,
        sender: str,
        recipients: Sequence[str],
        message: bytes,
        smtputf8: bool = False,
        origin: Origin | None = None,
    ) -> list[Outcome]:
        """Deliver `message` to `recipients` (all of one domain) in one transaction.

        Returns one outcome per recipient, in order. Raises ValueError only when
        the recipients do not share one domain (a bug in the caller).
        """
        if not recipients:
            return []
        domains = {r.rpartition("@")[2].lower() for r in recipients}
        if len(domains) != 1:
            raise ValueError(f"recipients span several domains: {sorted(domains)}")
        domain = domains.pop()
        utf8 = smtputf8 or not all(a.isascii() for a in (sender, *recipients))
        envelope = Envelope(sender, recipients, message, utf8)
        async with _DomainSlot(self._limits, domain, self._per_domain_limit):
            try:
                return await self._deliver(domain, envelope)
            except Exception as exc:
                logger.exception(
                    "delivery_crashed",
                    domain=domain,
                    error_type=type(exc).__name__,
                    error=str(exc)[:300],
                )
                text = f"internal error: {type(exc).__name__}: {exc}"
                return outcomes(recipients, "deferred", text, "4.3.0")

    async def close(self) -> None:
        """QUIT the connections kept open for reuse (at shutdown)."""
        await self._connections.close()

    # -- what `smtpy route explain` shows -------------------------------------------

    async def route(self, domain: str) -> Route:
        """Where mail for `domain` goes (see `smtpy.outbound.mx.Routes.route`)."""
        return await self._routes.route(domain)

    async def tls_policy(self, domain: str) -> TlsPolicy:
        """The TLS policy mail to `domain` gets (opportunistic via a relay or to a literal)."""
        if self._tls_policies is None or domain.startswith("["):
            return OPPORTUNISTIC
        return await self._tls_policies.for_domain(domain)

    # -- delivery ------------------------------------------------------------------

    async def _deliver(self, domain: str, envelope: Envelope) -> list[Outcome]:
        recipients = envelope.recipients
        route = await self._routes.find(domain)
        if isinstance(route, NoRoute):
            return outcomes(recipients, route.status, route.reply, route.enhanced)

        policy = await self.tls_policy(domain)
        hosts = route.hosts
        if policy.mx_patterns:
            allowed = [(host, port) for host, port in hosts if policy.mx_allowed(host)]
            if len(allowed) < len(hosts):
                logger.warning(
                    "mx_outside_mta_sts_policy",
                    domain=domain,
                    mode=policy.mode,
                    hosts=[h for h, _ in hosts if not policy.mx_allowed(h)],
                )
            if policy.mandatory:
                if not allowed:
                    text = (
                        f"no MX host of {domain} matches its MTA-STS policy "
                        f"(mx: {', '.join(policy.mx_patterns)}); not sent"
                    )
                    return outcomes(recipients, "deferred", text, "4.7.4")
                hosts = allowed

        last: HostFailed | None = None
        tried = 0
        for host, port in hosts:
            if tried >= MAX_ADDRESSES:
                break
            try:
                addresses = await self._routes.addresses(host)
            except HostFailed as failure:
                logger.info("mx_no_address", host=host, reason=failure.reply)
                last = failure
                continue
            for address in addresses:
                if tried >= MAX_ADDRESSES:
                    break
                tried += 1
                try:
                    return await self._try_address(host, address, port, envelope, policy)
                except HostFailed as failure:
                    last = failure
                    logger.info(
                        "mx_failed", remote=f"{host}[{address}]", domain=domain, reason=last.reply
                    )
        assert last is not None  # hosts is not empty
        return outcomes(
            recipients,
            "deferred",
            last.reply,
            last.enhanced,
            code=last.code,
            remote_host=last.remote_host,
        )

    def _plans(self, policy: TlsPolicy) -> list[TlsPlan]:
        """The TLS of each session tried on one address, stepping down only where allowed."""
        if self._relay_tls:
            return [TlsPlan("required", "SMTPY_RELAY_TLS")]
        if policy.mandatory:
            return [TlsPlan("required", policy.reason)]
        levels: tuple[TlsLevel, ...] = ("opportunistic", "none")
        if policy.verify:
            levels = ("verified", "opportunistic", "none")
        return [TlsPlan(level, policy.reason) for level in levels]

    async def _try_address(
        self, host: str, address: str, port: int, envelope: Envelope, policy: TlsPolicy
    ) -> list[Outcome]:
        """Deliver through one address, stepping down TLS only where the policy allows."""
        remote = f"{host}[{address}]"
        plans = self._plans(policy)
        for index, plan in enumerate(plans):
            try:
                return await self._session(host, address, port, envelope, plan)
            except HostFailed as failure:
                if not failure.tls or index == len(plans) - 1:
                    raise
                if plan.level == "verified":
                    logger.warning(
                        "tls_unverified",
                        remote=remote,
                        reason=failure.reply,
                        policy=plan.why,
                        note="would defer under enforce; going on",
                    )
                else:
                    logger.info(
                        "tls_fallback", remote=remote, reason=failure.reply, to="clear text"
                    )
        raise AssertionError("unreachable: the last plan raises")

    async def _session(
        self, host: str, address: str, port: int, envelope: Envelope, tls: TlsPlan
    ) -> list[Outcome]:
        """Run one transaction, on a kept connection or a new one; HostFailed: next address."""
        remote = f"{host}[{address}]"
        server_name = None if is_ip(host) else host
        key = (address, port, server_name, tls.level)
        cached = self._connections.take(key)
        if cached is not None:
            try:
                results = await self._client.transaction(cached.smtp, remote, envelope)
            except (HostFailed, SMTPException, OSError) as exc:
                # It died while idle (before DATA, so nothing was sent): open a new one.
                logger.info("cached_connection_failed", remote=remote, error=str(exc))
                cached.smtp.close()
            except BaseException:
                cached.smtp.close()
                raise
            else:
                self._connections.give(key, cached, reusable=_reusable(results))
                return results
        smtp = await self._client.open(host, address, port, server_name, tls)
        try:
            try:
                results = await self._client.transaction(smtp, remote, envelope)
            except HostFailed:
                raise
            except (SMTPException, OSError) as exc:
                raise self._client.failure(exc, remote, tls) from None
        except BaseException:
            await quit_politely(smtp)
            raise
        self._connections.give(key, self._connections.open(smtp), reusable=_reusable(results))
        return results


class _DomainSlot:
    """`async with`: hold one of the domain's delivery slots; forget idle domains."""

    def __init__(
        self, limits: dict[str, tuple[asyncio.Semaphore, int]], domain: str, limit: int
    ) -> None:
        self._limits = limits
        self._domain = domain
        semaphore, users = limits.get(domain, (asyncio.Semaphore(limit), 0))
        self._semaphore = semaphore
        limits[domain] = (semaphore, users + 1)

    async def __aenter__(self) -> None:
        try:
            await self._semaphore.acquire()
        except BaseException:
            self._leave()
            raise

    async def __aexit__(self, *exc: object) -> None:
        self._semaphore.release()
        self._leave()

    def _leave(self) -> None:
        semaphore, users = self._limits[self._domain]
        if users <= 1:
            del self._limits[self._domain]
        else:
            self._limits[self._domain] = (semaphore, users - 1)


def _reusable(results: Sequence[Outcome]) -> bool:
    """Whether the session may carry another transaction: the server did not say 421."""
    return all(o.code != 421 for o in results)
