"""Outbound delivery: one SMTP transaction per destination domain.

`Deliverer.deliver` takes a message and the recipients it has for one
destination domain (the caller groups them) and returns one `Outcome` per
recipient, in the order given. It never raises for anything the remote side or
the network does: every failure becomes an outcome the queue can act on.

How a delivery goes (RFC 5321 §5, RFC 7505, RFC 7435):

- Route: the domain's MX hosts in preference order (implicit MX when there is
  none, from `Lookups`), or the configured relay (smarthost), or the address of
  a domain literal (`user@[192.0.2.1]`). MX hosts that name this forwarder, and
  every host of equal or lower preference, are dropped (RFC 5321 §5.1); if none
  is left the mail "loops back to myself" (5.4.6, failed).
- Each MX host, then each of its addresses (A, then AAAA), is tried until one
  takes the transaction. Connection refused or reset, timeouts, a greeting other
  than 220, EHLO and HELO both refused, a failed TLS handshake, a 421 or a lost
  connection before DATA: all move on to the next address. At most
  `MAX_ADDRESSES` addresses are tried per delivery.
- Opportunistic STARTTLS: used whenever offered, certificates not verified
  (RFC 7435: encryption against passive listeners, never worse than clear text).
  A failed handshake is retried once on the same address in clear text.
- TLS policy (`smtpy.outbound.tls_policy.TlsPolicies`): a domain in `tls_required_domains`
  or with an MTA-STS policy in mode enforce gets mail only over STARTTLS with
  a certificate valid for the MX host name (and, for MTA-STS, only at the MX
  hosts its policy names); anything less defers with 4.7.4 and the reason,
  never a clear-text retry. Under MTA-STS "testing" the certificate is checked
  too, but a failure is only logged and the delivery goes on opportunistically.
- Relay mode: `relay_username` logs in after STARTTLS. With `relay_tls`, TLS is
  mandatory and the relay's certificate is verified against the system trust
  store (implicit TLS on port 465, required STARTTLS otherwise); there is no
  clear-text fallback, so credentials never travel unencrypted by surprise.
- MAIL FROM carries SMTPUTF8 when the caller asks for it or when an envelope
  address is not ASCII; a server without SMTPUTF8 then fails the recipients
  with 5.6.7 (RFC 6531 §3.2; no downgrade). BODY=8BITMIME is added when the
  message has 8-bit bytes and the server offers it; a server without 8BITMIME
  still gets the bytes unchanged (converting would break DKIM signatures).
  SIZE is declared when offered.
- Replies map to statuses per recipient: RCPT 2xx then DATA 2xx → delivered,
  4xx → deferred, 5xx → failed. A MAIL FROM or DATA reply applies to every
  recipient it covers. A connection lost after the message was sent is
  "deferred": a retry may duplicate, which beats losing mail.
- DNS: null MX → failed 5.1.10 (RFC 7505 §4.2), no such domain → failed 5.1.2,
  no MX, A or AAAA → failed 5.4.4, temporary DNS failure → deferred 4.4.3. An
  MX host that does not resolve is skipped like an unreachable one. Every
  address unreachable → deferred (4.4.1 when nothing answered).
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
import contextlib
import ipaddress
import logging
import re
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import aiosmtplib
from aiosmtplib import (
    SMTPConnectResponseError,
    SMTPException,
    SMTPHeloError,
    SMTPResponse,
    SMTPResponseException,
    SMTPServerDisconnected,
)

from smtpy.dns import DNSPermanentError, DNSTemporaryError, Lookups, NoSuchDomain, NullMX
from smtpy.mail.framing import data_block
from smtpy.outbound.connections import QUIT_TIMEOUT, ConnectionCache, quit_politely
from smtpy.outbound.tls_policy import OPPORTUNISTIC, TlsPolicies, TlsPolicy, verified_context

if TYPE_CHECKING:
    from smtpy.config import Settings

__all__ = ["MAX_ADDRESSES", "Deliverer", "Outcome", "Route", "Status"]

log = logging.getLogger(__name__)

Status = Literal["delivered", "deferred", "failed"]
_TlsLevel = Literal["required", "verified", "opportunistic", "none"]
"""required: verified TLS or nothing; verified: checked, failure only logged (MTA-STS
testing); opportunistic: STARTTLS when offered, unchecked; none: clear text."""

MAX_ADDRESSES = 10
"""At most this many MX addresses are tried in one delivery attempt."""

SMTPS_PORT = 465
"""A relay on this port with `relay_tls` speaks implicit TLS (RFC 8314)."""

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)")
_QUOTED_LOCAL = re.compile(r'^"(?:[^"\\]|\\.)*"')
_FORBIDDEN_IN_PATH = re.compile(r"[\x00-\x20\x7f<>]")


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


@dataclass(frozen=True)
class Route:
    """Where mail for one domain goes: hosts to try in order, with their port."""

    hosts: list[tuple[str, int]]


class _HostFailed(Exception):
    """This address did not take the transaction; try the next one."""

    def __init__(
        self,
        reply: str,
        *,
        code: int | None = None,
        enhanced: str = "4.4.1",
        remote_host: str | None = None,
        tls: bool = False,
    ) -> None:
        super().__init__(reply)
        self.reply = reply
        self.code = code
        self.enhanced = enhanced
        self.remote_host = remote_host
        self.tls = tls


@dataclass(frozen=True)
class _TlsPlan:
    level: _TlsLevel
    why: str  # the policy that asks for it, for replies and logs


@dataclass(frozen=True)
class _Envelope:
    sender: str
    recipients: Sequence[str]
    message: bytes
    utf8: bool


class Deliverer:
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
        self._hostname = hostname
        self._lookups = lookups
        self._port = port
        self._relay = relay
        self._relay_username = relay_username
        self._relay_password = relay_password
        self._relay_tls = relay_tls
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._per_domain_limit = per_domain_limit
        self._limits: dict[str, tuple[asyncio.Semaphore, int]] = {}
        self._connections = ConnectionCache(per_key=per_domain_limit)
        # RFC 7435: opportunistic TLS authenticates nobody, so verifies nothing.
        self._opportunistic_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self._opportunistic_tls.check_hostname = False
        self._opportunistic_tls.verify_mode = ssl.CERT_NONE
        self._tls_policies = tls_policies if relay is None else None
        needs_verified = relay_tls or self._tls_policies is not None
        self._verified_tls = verified_context(tls_ca_file) if needs_verified else None

    @classmethod
    def from_settings(cls, settings: Settings, lookups: Lookups) -> Deliverer:
        """The deliverer `smtpy serve` runs (and `smtpy route explain` consults)."""
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

    # -- public ------------------------------------------------------------

    async def deliver(
        self,
        *,
        sender: str,
        recipients: Sequence[str],
        message: bytes,
        smtputf8: bool = False,
    ) -> list[Outcome]:
        """Deliver `message` to `recipients` (all of one domain) in one transaction.

        Returns one outcome per recipient, in order. Raises ValueError only when
        the recipients do not share one domain (a bug in the caller).
        """
        if not recipients:
            return []
        domains = {_domain_of(r).lower() for r in recipients}
        if len(domains) != 1:
            raise ValueError(f"recipients span several domains: {sorted(domains)}")
        domain = domains.pop()
        utf8 = smtputf8 or not all(a.isascii() for a in (sender, *recipients))
        envelope = _Envelope(sender, recipients, message, utf8)
        async with self._domain_slot(domain):
            try:
                return await self._deliver(domain, envelope)
            except Exception as exc:
                log.exception("delivery to %s failed unexpectedly", domain)
                text = f"internal error: {type(exc).__name__}: {exc}"
                return [_outcome(r, "deferred", None, text, None, "4.3.0") for r in recipients]

    async def close(self) -> None:
        """QUIT the connections kept open for reuse (at shutdown)."""
        await self._connections.close()

    async def route(self, domain: str) -> Route:
        """Where mail for `domain` goes: the relay, a domain literal, or its MX hosts.

        Raises DNSPermanentError (NullMX, NoSuchDomain, NoMailHost),
        DNSTemporaryError, and ValueError for a malformed domain literal. An
        empty route means every MX is this forwarder or less preferred.
        """
        if self._relay is not None:
            return Route([self._relay])
        if domain.startswith("[") and domain.endswith("]"):
            literal = domain[1:-1]
            if literal.lower().startswith("ipv6:"):
                literal = literal[5:]
            return Route([(str(ipaddress.ip_address(literal)), self._port)])
        mx_hosts = await self._lookups.mx_hosts(domain)
        myself = _norm_host(self._hostname)
        hosts: list[tuple[str, int]] = []
        for mx in mx_hosts:
            if _norm_host(mx.host) == myself:
                break  # RFC 5321 §5.1: ignore it and every less preferred MX
            hosts.append((mx.host, self._port))
        return Route(hosts)

    async def tls_policy(self, domain: str) -> TlsPolicy:
        """The TLS policy mail to `domain` gets (opportunistic via a relay or to a literal)."""
        if self._tls_policies is None or domain.startswith("["):
            return OPPORTUNISTIC
        return await self._tls_policies.for_domain(domain)

    # -- delivery ------------------------------------------------------------

    def _domain_slot(self, domain: str) -> _DomainSlot:
        return _DomainSlot(self._limits, domain, self._per_domain_limit)

    async def _deliver(self, domain: str, envelope: _Envelope) -> list[Outcome]:
        recipients = envelope.recipients
        try:
            route = await self.route(domain)
        except NullMX:
            text = f"domain {domain} does not accept mail (null MX)"
            return [_outcome(r, "failed", None, text, None, "5.1.10") for r in recipients]
        except NoSuchDomain:
            text = f"domain {domain} does not exist"
            return [_outcome(r, "failed", None, text, None, "5.1.2") for r in recipients]
        except DNSPermanentError as exc:  # NoMailHost: no MX, A or AAAA
            text = f"no mail host for {domain}: {exc}"
            return [_outcome(r, "failed", None, text, None, "5.4.4") for r in recipients]
        except DNSTemporaryError as exc:
            text = f"temporary DNS failure looking up MX for {domain}: {exc}"
            return [_outcome(r, "deferred", None, text, None, "4.4.3") for r in recipients]
        except ValueError:
            text = f"bad domain literal {domain}"
            return [_outcome(r, "failed", None, text, None, "5.1.2") for r in recipients]
        if not route.hosts:
            text = f"mail for {domain} loops back to myself"
            return [_outcome(r, "failed", None, text, None, "5.4.6") for r in recipients]

        policy = await self.tls_policy(domain)
        hosts = route.hosts
        if policy.mx_patterns:
            allowed = [(host, port) for host, port in hosts if policy.mx_allowed(host)]
            if len(allowed) < len(hosts):
                log.warning(
                    "MX hosts of %s outside its MTA-STS policy (%s): %s",
                    domain,
                    policy.mode,
                    ", ".join(h for h, _ in hosts if not policy.mx_allowed(h)),
                )
            if policy.mandatory:
                if not allowed:
                    text = (
                        f"no MX host of {domain} matches its MTA-STS policy "
                        f"(mx: {', '.join(policy.mx_patterns)}); not sent"
                    )
                    return [_outcome(r, "deferred", None, text, None, "4.7.4") for r in recipients]
                hosts = allowed

        last: _HostFailed | None = None
        tried = 0
        for host, port in hosts:
            if tried >= MAX_ADDRESSES:
                break
            try:
                addresses = await self._addresses(host)
            except _HostFailed as failure:
                log.info("no address for %s: %s", host, failure.reply)
                last = failure
                continue
            for address in addresses:
                if tried >= MAX_ADDRESSES:
                    break
                tried += 1
                remote = f"{host}[{address}]"
                try:
                    return await self._try_address(host, address, port, envelope, policy)
                except _HostFailed as failure:
                    last = failure
                    log.info("%s did not take mail for %s: %s", remote, domain, last.reply)
        assert last is not None  # hosts is not empty
        return [
            _outcome(r, "deferred", last.code, last.reply, last.remote_host, last.enhanced)
            for r in recipients
        ]

    async def _try_address(
        self, host: str, address: str, port: int, envelope: _Envelope, policy: TlsPolicy
    ) -> list[Outcome]:
        """Deliver through one address, stepping down TLS only where the policy allows."""
        remote = f"{host}[{address}]"
        plans: list[_TlsPlan]
        if self._relay_tls:
            plans = [_TlsPlan("required", "SMTPY_RELAY_TLS")]
        elif policy.mandatory:
            plans = [_TlsPlan("required", policy.reason)]
        elif policy.verify:
            levels: tuple[_TlsLevel, ...] = ("verified", "opportunistic", "none")
            plans = [_TlsPlan(level, policy.reason) for level in levels]
        else:
            plans = [_TlsPlan("opportunistic", policy.reason), _TlsPlan("none", policy.reason)]
        for index, plan in enumerate(plans):
            try:
                return await self._session(host, address, port, envelope, plan)
            except _HostFailed as failure:
                if not failure.tls or index == len(plans) - 1:
                    raise
                if plan.level == "verified":
                    log.warning(
                        "%s: %s; would defer under enforce, going on (%s)",
                        remote,
                        failure.reply,
                        plan.why,
                    )
                else:
                    log.info("%s: TLS failed (%s), retrying in clear", remote, failure.reply)
        raise AssertionError("unreachable: the last plan raises")

    async def _addresses(self, host: str) -> list[str]:
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            pass
        try:
            addresses = await self._lookups.addresses(host)
        except DNSTemporaryError as exc:
            raise _HostFailed(
                f"temporary DNS failure looking up {host}: {exc}", enhanced="4.4.3"
            ) from None
        except DNSPermanentError:
            raise _HostFailed(f"host {host} not found", enhanced="4.4.4") from None
        if not addresses:
            raise _HostFailed(f"host {host} has no address", enhanced="4.4.4")
        return addresses

    async def _session(
        self, host: str, address: str, port: int, envelope: _Envelope, tls: _TlsPlan
    ) -> list[Outcome]:
        """Run one SMTP session; raise _HostFailed if this address should be skipped."""
        remote = f"{host}[{address}]"
        server_name = None if _is_ip(host) else host
        key = (address, port, server_name, tls.level)
        cached = self._connections.take(key)
        if cached is not None:
            try:
                outcomes = await self._transaction(cached.smtp, remote, envelope)
            except (_HostFailed, SMTPException, OSError) as exc:
                # It died while idle (before DATA, so nothing was sent): open a new one.
                log.info("%s: cached connection failed (%s); reconnecting", remote, exc)
                cached.smtp.close()
            except BaseException:
                cached.smtp.close()
                raise
            else:
                self._connections.give(key, cached, reusable=_reusable(outcomes))
                return outcomes
        implicit_tls = self._relay_tls and port == SMTPS_PORT
        smtp: aiosmtplib.SMTP | None = None
        try:
            try:
                if implicit_tls:
                    # Connect to the address we resolved, but verify the name.
                    sock = await self._open_socket(address, port, remote)
                    smtp = aiosmtplib.SMTP(
                        hostname=server_name or address,
                        sock=sock,
                        local_hostname=self._hostname,
                        timeout=self._command_timeout,
                        use_tls=True,
                        start_tls=False,
                        tls_context=self._verified_tls,
                    )
                else:
                    smtp = aiosmtplib.SMTP(
                        hostname=address,
                        port=port,
                        local_hostname=self._hostname,
                        timeout=self._command_timeout,
                        start_tls=False,
                    )
                await self._connect(smtp, remote)
                await self._hello(smtp, remote)
                if not implicit_tls:
                    await self._starttls(smtp, remote, server_name, tls)
                if self._relay_username is not None:
                    await self._login(smtp, remote)
                outcomes = await self._transaction(smtp, remote, envelope)
            except _HostFailed:
                raise
            except (SMTPException, OSError) as exc:
                raise self._network_failure(
                    exc, remote, connected=True, tls_required=tls.level == "required"
                ) from None
        except BaseException:
            if smtp is not None:
                await quit_politely(smtp)
            raise
        self._connections.give(key, self._connections.open(smtp), reusable=_reusable(outcomes))
        return outcomes

    async def _open_socket(self, address: str, port: int, remote: str) -> socket.socket:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            loop = asyncio.get_running_loop()
            await asyncio.wait_for(loop.sock_connect(sock, (address, port)), self._connect_timeout)
        except BaseException as exc:
            sock.close()
            if isinstance(exc, OSError):
                raise self._network_failure(exc, remote, connected=False) from None
            raise
        return sock

    async def _connect(self, smtp: aiosmtplib.SMTP, remote: str) -> None:
        try:
            await smtp.connect(timeout=self._connect_timeout)
        except SMTPConnectResponseError as exc:
            raise _HostFailed(
                f"{remote} greeted with: {exc.code} {_one_line(exc.message)}",
                code=exc.code,
                enhanced=_temporary(_enhanced(exc.code, exc.message)),
                remote_host=remote,
            ) from None
        except (SMTPException, OSError) as exc:
            raise self._network_failure(exc, remote, connected=False) from None

    def _network_failure(
        self, exc: BaseException, remote: str, *, connected: bool, tls_required: bool = False
    ) -> _HostFailed:
        """What a network or protocol error means: 4.4.1 no answer, 4.4.2 bad connection."""
        if isinstance(exc, ssl.SSLError) or isinstance(exc.__cause__, ssl.SSLError):
            return _HostFailed(
                f"TLS with {remote} failed: {_error_text(exc)}",
                enhanced="4.7.4" if self._relay_tls or tls_required else "4.4.2",
                remote_host=remote,
                tls=True,
            )
        return _HostFailed(
            _describe(exc, remote),
            enhanced="4.4.2" if connected else "4.4.1",
            remote_host=remote,
        )

    async def _hello(self, smtp: aiosmtplib.SMTP, remote: str) -> None:
        try:
            await smtp.ehlo(hostname=self._hostname)
            return
        except SMTPHeloError as exc:
            if exc.code == 421 or not smtp.is_connected:
                raise _refused(remote, "EHLO", exc) from None
        try:
            await smtp.helo(hostname=self._hostname)
        except SMTPHeloError as exc:
            raise _refused(remote, "HELO", exc) from None

    async def _starttls(
        self, smtp: aiosmtplib.SMTP, remote: str, server_name: str | None, tls: _TlsPlan
    ) -> None:
        offered = smtp.supports_extension("starttls")
        required = tls.level == "required"
        if tls.level == "none":
            return
        if not offered:
            if required:
                raise _HostFailed(
                    f"TLS is required ({tls.why}), but {remote} does not offer STARTTLS",
                    enhanced="4.7.4",
                    remote_host=remote,
                )
            if tls.level == "verified":
                log.warning(
                    "%s does not offer STARTTLS; would defer under enforce (%s)", remote, tls.why
                )
            return
        context = self._opportunistic_tls
        if tls.level in ("required", "verified"):
            assert self._verified_tls is not None
            context = self._verified_tls
        try:
            await smtp.starttls(
                tls_context=context, server_hostname=server_name, timeout=self._connect_timeout
            )
        except SMTPResponseException as exc:
            if exc.code != 421 and not required and smtp.is_connected:
                log.info("%s refused STARTTLS (%s); going on in clear", remote, exc.code)
                return
            raise _refused(remote, "STARTTLS", exc) from None
        except (SMTPException, OSError) as exc:
            reason = f" ({tls.why}); not sent in clear" if required else ""
            raise _HostFailed(
                f"TLS with {remote} failed: {_error_text(exc)}{reason}",
                enhanced="4.7.4" if required else "4.4.2",
                remote_host=remote,
                tls=True,
            ) from None
        await self._hello(smtp, remote)

    async def _login(self, smtp: aiosmtplib.SMTP, remote: str) -> None:
        assert self._relay_username is not None and self._relay_password is not None
        try:
            await smtp.login(self._relay_username, self._relay_password)
        except SMTPResponseException as exc:
            raise _refused(remote, "AUTH", exc) from None
        except SMTPException as exc:
            if not smtp.is_connected:
                raise
            raise _HostFailed(
                f"cannot log in to {remote}: {exc}", enhanced="4.7.0", remote_host=remote
            ) from None

    async def _transaction(
        self, smtp: aiosmtplib.SMTP, remote: str, envelope: _Envelope
    ) -> list[Outcome]:
        recipients = envelope.recipients
        message = envelope.message
        if envelope.utf8 and not smtp.supports_extension("smtputf8"):
            text = f"{remote} does not support SMTPUTF8, which this message requires"
            return [_outcome(r, "failed", None, text, remote, "5.6.7") for r in recipients]

        params: list[bytes] = []
        if envelope.utf8:
            params.append(b"SMTPUTF8")
        if not message.isascii() and smtp.supports_extension("8bitmime"):
            params.append(b"BODY=8BITMIME")
        if smtp.supports_extension("size"):
            params.append(b"SIZE=%d" % len(message))
        encoding = "utf-8" if envelope.utf8 else "ascii"

        try:
            sender_path = _path(envelope.sender, encoding)
        except ValueError:
            text = f"bad sender address {envelope.sender!r}"
            return [_outcome(r, "failed", None, text, remote, "5.1.7") for r in recipients]
        reply = await smtp.execute_command(b"MAIL", b"FROM:" + sender_path, *params)
        if reply.code == 421:
            raise _refused(remote, "MAIL FROM", reply)
        if reply.code != 250:
            return [_from_reply(r, reply, remote) for r in recipients]

        outcomes: list[Outcome | None] = []
        accepted: list[int] = []
        for index, recipient in enumerate(recipients):
            try:
                path = _path(recipient, encoding)
            except ValueError:
                text = f"bad recipient address {recipient!r}"
                outcomes.append(_outcome(recipient, "failed", None, text, remote, "5.1.3"))
                continue
            reply = await smtp.execute_command(b"RCPT", b"TO:" + path)
            if reply.code == 421:
                raise _refused(remote, "RCPT TO", reply)
            if reply.code in (250, 251):
                accepted.append(index)
                outcomes.append(None)
            else:
                outcomes.append(_from_reply(recipient, reply, remote))

        if not accepted:
            await _rset(smtp)
            return [o for o in outcomes if o is not None]

        try:
            reply = await _data(smtp, message, seconds=self._command_timeout)
        except SMTPResponseException as exc:
            reply = SMTPResponse(exc.code, exc.message)
        except (SMTPException, OSError) as exc:
            # The message may or may not have arrived: retry later (a duplicate
            # at worst), never elsewhere at once. The session is in an unknown state.
            smtp.close()
            text = f"lost connection with {remote} while sending the message: {exc}"
            for index in accepted:
                outcomes[index] = _outcome(
                    recipients[index], "deferred", None, text, remote, "4.4.2"
                )
            return [o for o in outcomes if o is not None]
        for index in accepted:
            outcomes[index] = _from_reply(recipients[index], reply, remote)
        log.info("%s: DATA %d for %d recipient(s)", remote, reply.code, len(accepted))
        return [o for o in outcomes if o is not None]


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


# -- helpers -----------------------------------------------------------------


def _outcome(
    recipient: str,
    status: Status,
    code: int | None,
    reply: str,
    remote_host: str | None,
    enhanced: str,
) -> Outcome:
    return Outcome(recipient, status, code, reply, remote_host, enhanced)


def _from_reply(recipient: str, reply: SMTPResponse, remote: str) -> Outcome:
    """The outcome a reply code means: 2xx delivered, 5xx failed, else deferred."""
    status: Status
    if 200 <= reply.code < 300:
        status = "delivered"
    elif 500 <= reply.code < 600:
        status = "failed"
    else:
        status = "deferred"
    enhanced = _enhanced(reply.code, reply.message)
    if status == "deferred":
        enhanced = _temporary(enhanced)
    return _outcome(recipient, status, reply.code, _one_line(reply.message), remote, enhanced)


def _enhanced(code: int, text: str) -> str:
    """The RFC 3463 status in a reply's text, or `X.0.0` from the reply code."""
    klass = str(code)[:1]
    match = _ENHANCED.match(text.strip())
    if match and match.group(1) == klass:
        return match.group(0)
    return f"{klass}.0.0" if klass in ("2", "4", "5") else "4.0.0"


def _temporary(enhanced: str) -> str:
    """The same status detail, as a temporary failure."""
    return "4" + enhanced[1:]


def _refused(remote: str, command: str, reply: SMTPResponseException | SMTPResponse) -> _HostFailed:
    code, message = (reply.code, reply.message)
    return _HostFailed(
        f"{remote} refused {command}: {code} {_one_line(message)}",
        code=code,
        enhanced=_temporary(_enhanced(code, message)),
        remote_host=remote,
    )


def _one_line(text: str) -> str:
    """A reply's lines joined by spaces, undecodable bytes replaced."""
    clean = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return " ".join(line.strip() for line in clean.splitlines() if line.strip())


def _describe(exc: BaseException, remote: str) -> str:
    """A short description of a network error, naming the remote host."""
    causes = (exc, exc.__cause__)
    if any(isinstance(e, ConnectionRefusedError) for e in causes):
        return f"connection refused by {remote}"
    if any(isinstance(e, TimeoutError) for e in causes):
        return f"no answer from {remote} (timed out)"
    if any(isinstance(e, ConnectionResetError) for e in causes):
        return f"connection reset by {remote}"
    return f"{remote}: {_error_text(exc)}"


def _error_text(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return _one_line(str(text))


def _path(address: str, encoding: str) -> bytes:
    """`<address>` for MAIL FROM / RCPT TO; ValueError if it cannot be sent safely."""
    unquoted = _QUOTED_LOCAL.sub("", address, count=1)
    if _FORBIDDEN_IN_PATH.search(unquoted) or any(ord(c) < 0x20 for c in address):
        raise ValueError(address)
    return b"<" + address.encode(encoding) + b">"


def _domain_of(address: str) -> str:
    return address.rpartition("@")[2]


def _norm_host(host: str) -> str:
    return host.strip().rstrip(".").lower()


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def _data(smtp: aiosmtplib.SMTP, message: bytes, *, seconds: float) -> SMTPResponse:
    """DATA, then the message; the reply to the message (2xx, 4xx or 5xx alike).

    aiosmtplib's `data()` rewrites line endings and dot-stuffs with two
    regular expressions over the whole message (1.3 ms for 100 KB), where
    `data_block` counts line endings and makes one replace, the message being
    in CRLF form already. Each reply is awaited at most `seconds`. The session
    belongs to this delivery alone, so the reply read after the write can only
    be the reply to it.
    """
    start = await smtp.execute_command(b"DATA", timeout=seconds)
    if start.code != 354:
        raise SMTPResponseException(start.code, start.message)
    protocol = smtp.protocol
    if protocol is None:
        raise SMTPServerDisconnected("connection lost after DATA")
    protocol.write(data_block(message))
    return await protocol.read_response(timeout=seconds)


async def _rset(smtp: aiosmtplib.SMTP) -> None:
    with contextlib.suppress(SMTPException, OSError):
        await smtp.execute_command(b"RSET", timeout=QUIT_TIMEOUT)


def _reusable(outcomes: Sequence[Outcome]) -> bool:
    """Whether the session may carry another transaction: the server did not say 421."""
    return all(o.code != 421 for o in outcomes)
