"""Limits that hold under abuse: connection counts, message rates, connect-time checks.

Pure bookkeeping, no I/O of its own (the DNSBL lookup is `smtpy.checks.dnsbl`'s):

    ConnectionLimits   connections at once, in total and per client IP
    RateLimiter        token buckets per client IP, sender domain and recipient domain
    ConnectionGuard    what `smtpy.smtp.server` asks at connect and before the banner,
                       and the rates; it answers with a reply to send, or None
    SenderRate         the MAIL FROM check (`smtpy.checks.stages`): client IP and
                       sender domain rates
    RecipientDomainRate  the RCPT TO check: the recipient domain's rate, once a
                       transaction

A token bucket holds up to `rate` tokens (one minute's worth) and refills at
`rate / 60` tokens a second; every message takes one. A sender that stays
under the rate never waits, a burst of a full minute's worth passes at once,
and a flood is cut down to the rate. Buckets that have refilled completely
carry no information and are forgotten, so memory stays bounded by the
clients of the last minute or so.

Clients in `exempt` networks (loopback by default, as Postfix exempts
$mynetworks from its anvil limits) are not counted per IP, not rate limited,
not delayed before the banner and not looked up in DNSBLs. This is no trust
for relaying, SPF or DMARC: those rules do not look at it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from smtpy import log
from smtpy.checks.stages import Client, Refusal, Transaction
from smtpy.config import parse_networks
from smtpy.smtp.replies import (
    EARLY_TALKER,
    RATE_IP,
    RATE_RECIPIENT_DOMAIN,
    RATE_SENDER_DOMAIN,
    TOO_MANY_CONNECTIONS,
    TOO_MANY_FROM_IP,
)

if TYPE_CHECKING:
    from smtpy.checks.recipients import Accepted
    from smtpy.config import Settings
    from smtpy.dns import Lookups
    from smtpy.store.db import Database

logger = log.get(__name__)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Kind = Literal["ip", "sender_domain", "recipient_domain"]

_RATE_REPLIES: dict[Kind, str] = {
    "ip": RATE_IP,
    "sender_domain": RATE_SENDER_DOMAIN,
    "recipient_domain": RATE_RECIPIENT_DOMAIN,
}


@functools.lru_cache(maxsize=4096)  # asked at every connection, MAIL and RCPT
def in_networks(ip: str | None, networks: tuple[IPNetwork, ...]) -> bool:
    """Whether the client address `ip` lies in one of `networks` (never for no address)."""
    if ip is None or not networks:
        return False
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


# -- connections at once ---------------------------------------------------------


class ConnectionLimits:
    """Open connections in total and per client IP; `open` refuses over either limit."""

    def __init__(self, *, total: int, per_ip: int) -> None:
        self.total = total
        self.per_ip = per_ip
        self.open_total = 0
        self._per_ip: dict[str, int] = {}

    def open(self, ip: str | None, *, count_ip: bool = True) -> str | None:
        """Count a new connection; return the refusal to send instead, or None."""
        if self.total and self.open_total >= self.total:
            return TOO_MANY_CONNECTIONS
        if count_ip and ip is not None:
            current = self._per_ip.get(ip, 0)
            if self.per_ip and current >= self.per_ip:
                return TOO_MANY_FROM_IP
            self._per_ip[ip] = current + 1
        self.open_total += 1
        return None

    def close(self, ip: str | None, *, count_ip: bool = True) -> None:
        """Forget a connection that `open` counted."""
        self.open_total = max(0, self.open_total - 1)
        if count_ip and ip is not None:
            current = self._per_ip.get(ip, 0) - 1
            if current > 0:
                self._per_ip[ip] = current
            else:
                self._per_ip.pop(ip, None)

    def from_ip(self, ip: str) -> int:
        return self._per_ip.get(ip, 0)


# -- message rates ---------------------------------------------------------------


@dataclass(slots=True)
class TokenBucket:
    """`capacity` tokens at most, refilled at `per_second`; `take` spends one if there is one."""

    capacity: float
    per_second: float
    tokens: float
    updated: float

    def level(self, now: float) -> float:
        """Tokens available at `now`."""
        elapsed = max(0.0, now - self.updated)
        return min(self.capacity, self.tokens + elapsed * self.per_second)

    def take(self, now: float, count: float = 1.0) -> bool:
        self.tokens = self.level(now)
        self.updated = max(self.updated, now)
        if self.tokens < count:
            return False
        self.tokens -= count
        return True


@dataclass
class RateLimiter:
    """Token buckets per (kind, key); `per_minute[kind]` of 0 turns that kind off.

    `clock` is injectable for tests. At most `max_keys` buckets are kept: when
    there are more, full ones are dropped (they mean nothing), and if that is
    not enough the oldest go — which can only favour a client, never refuse one.
    """

    per_minute: dict[Kind, int]
    clock: Callable[[], float] = time.monotonic
    max_keys: int = 100_000
    shared: bool = False  # record what is spent, for `RateSync`
    _buckets: dict[tuple[Kind, str], TokenBucket] = field(default_factory=dict)
    _spent: dict[tuple[Kind, str], float] = field(default_factory=dict)

    def allow(self, kind: Kind, key: str) -> bool:
        """Spend one token of `key`'s bucket; False when it is empty."""
        rate = self.per_minute.get(kind, 0)
        if rate <= 0:
            return True
        now = self.clock()
        bucket = self._buckets.get((kind, key))
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._prune(now)
            bucket = TokenBucket(float(rate), rate / 60.0, float(rate), now)
            self._buckets[(kind, key)] = bucket
        if not bucket.take(now):
            return False
        if self.shared:
            self._spent[(kind, key)] = self._spent.get((kind, key), 0.0) + 1.0
        return True

    def take_spent(self) -> dict[tuple[Kind, str], float]:
        """What was spent since the last call (only when `shared`), and start counting anew."""
        spent, self._spent = self._spent, {}
        return spent

    def give_back(self, spent: dict[tuple[Kind, str], float]) -> None:
        """Count `spent` again for the next sync (the last one failed)."""
        for key, count in spent.items():
            self._spent[key] = self._spent.get(key, 0.0) + count

    def apply_shared(self, levels: dict[tuple[Kind, str], float]) -> None:
        """Take the levels all nodes reached together: tokens left = capacity - level.

        What this node spent since the levels were read still counts against it.
        """
        now = self.clock()
        for key, used in levels.items():
            bucket = self._buckets.get(key)
            if bucket is not None:
                bucket.tokens = bucket.capacity - used - self._spent.get(key, 0.0)
                bucket.updated = now

    def per_second(self, kind: Kind) -> float:
        return self.per_minute.get(kind, 0) / 60.0

    def tokens(self, kind: Kind, key: str) -> float:
        """Tokens left for `key` (the full rate for an unknown key)."""
        bucket = self._buckets.get((kind, key))
        if bucket is None:
            return float(self.per_minute.get(kind, 0))
        return bucket.level(self.clock())

    def __len__(self) -> int:
        return len(self._buckets)

    def _prune(self, now: float) -> None:
        full = [k for k, b in self._buckets.items() if b.level(now) >= b.capacity]
        for key in full:
            del self._buckets[key]
        # Still too many (a flood of distinct keys): drop the oldest half.
        if len(self._buckets) >= self.max_keys:
            for key in list(self._buckets)[: len(self._buckets) // 2]:
                del self._buckets[key]


# -- what the SMTP server asks ------------------------------------------------------


Blocklist = Callable[[str], Awaitable[str | None]]  # a ConnectCheck's `check`


@dataclass
class ConnectionGuard:
    """The session-level limits of one daemon, shared by all its connections.

    `blocklist(ip)` (optional, the connect-stage check `smtpy.checks.dnsbl.DNSBL.check`)
    returns the refusal for a listed client or None; it runs during the pregreet delay. Timeouts are in seconds: `first_command_timeout`
    until the client said HELO or EHLO, `command_timeout` after that (RFC 5321
    §4.5.3.2.7: the server waits 5 minutes for a command).
    """

    connections: ConnectionLimits
    rates: RateLimiter
    exempt: tuple[IPNetwork, ...] = ()
    pregreet_delay: float = 0.0
    first_command_timeout: float = 30.0
    command_timeout: float = 300.0
    blocklist: Blocklist | None = None

    def is_exempt(self, ip: str | None) -> bool:
        return in_networks(ip, self.exempt)

    def open(self, ip: str | None) -> str | None:
        """A new connection: the refusal to send instead of the banner, or None."""
        return self.connections.open(ip, count_ip=not self.is_exempt(ip))

    def close(self, ip: str | None) -> None:
        self.connections.close(ip, count_ip=not self.is_exempt(ip))

    async def before_greeting(self, ip: str | None, talked: Callable[[], bool]) -> str | None:
        """Wait the pregreet delay, look the client up; the refusal, or None for the banner.

        `talked()` tells whether the client sent anything yet: a client that
        talks before the banner is no conforming SMTP client (RFC 5321 §3.1).
        """
        if self.is_exempt(ip) or ip is None:
            return EARLY_TALKER if talked() else None
        lookup = asyncio.ensure_future(self.blocklist(ip)) if self.blocklist is not None else None
        try:
            if self.pregreet_delay > 0:
                await asyncio.sleep(self.pregreet_delay)
            if talked():
                return EARLY_TALKER
            listed = await lookup if lookup is not None else None
        finally:
            if lookup is not None and not lookup.done():
                lookup.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await lookup
        if listed is not None:
            return listed
        return EARLY_TALKER if talked() else None

    def mail(self, ip: str | None, sender_domain: str | None) -> str | None:
        """MAIL FROM: one message from this client and sender domain; the refusal, or None."""
        if not self.is_exempt(ip):
            if ip is not None and not self.rates.allow("ip", ip):
                return _RATE_REPLIES["ip"]
            if sender_domain and not self.rates.allow("sender_domain", sender_domain):
                return _RATE_REPLIES["sender_domain"]
        return None

    def recipient_domain(self, ip: str | None, domain: str) -> str | None:
        """The first RCPT of a transaction for `domain`: the refusal, or None."""
        if self.is_exempt(ip) or self.rates.allow("recipient_domain", domain):
            return None
        return _RATE_REPLIES["recipient_domain"]


@dataclass(frozen=True)
class SenderRate:
    """MAIL FROM: one message from this client IP and this sender domain."""

    guard: ConnectionGuard

    async def check_mail(
        self, client: Client, txn: Transaction, sender: str, options: list[str]
    ) -> Refusal | None:
        # The null sender "<>" has no domain: only the IP is counted.
        refusal = self.guard.mail(client.ip, sender.rpartition("@")[2].lower() or None)
        return None if refusal is None else Refusal(refusal, "rate_limit")


@dataclass(frozen=True)
class RecipientDomainRate:
    """RCPT TO: one message for the recipient's domain, charged once a transaction."""

    guard: ConnectionGuard

    async def check_rcpt(
        self, client: Client, txn: Transaction, recipient: Accepted
    ) -> Refusal | None:
        domain = recipient.alias_domain
        if domain in txn.rate_domains:
            return None
        refusal = self.guard.recipient_domain(client.ip, domain)
        if refusal is not None:
            return Refusal(refusal, "rate_limit")
        txn.rate_domains.add(domain)
        return None


def guard_from_settings(settings: Settings, lookups: Lookups) -> ConnectionGuard:
    """The daemon's guard: limits, exemptions and timeouts from the settings."""
    blocklist: Blocklist | None = None
    if settings.dnsbl_zones:
        from smtpy.checks.dnsbl import DNSBL

        blocklist = DNSBL(lookups, settings.dnsbl_zones).check
    return ConnectionGuard(
        connections=ConnectionLimits(
            total=settings.max_connections, per_ip=settings.max_connections_per_ip
        ),
        rates=RateLimiter(
            {
                "ip": settings.ip_rate_limit,
                "sender_domain": settings.sender_domain_rate_limit,
                "recipient_domain": settings.recipient_domain_rate_limit,
            }
        ),
        exempt=parse_networks(settings.limit_exempt_networks),
        pregreet_delay=settings.pregreet_delay,
        first_command_timeout=settings.first_command_timeout,
        command_timeout=settings.command_timeout,
        blocklist=blocklist,
    )


class RateSync:
    """Shares a node's `RateLimiter` with the other nodes through the store.

    Every `interval` seconds, what the node spent is added to the shared rows
    in ONE transaction (`smtpy.store.rates.add_usage`), and each bucket takes
    the level all nodes reached. Between syncs a node decides alone, so the
    nodes together may let through up to one interval's worth more than the
    rate. A failed sync is retried with the next one; limits stay per node
    meanwhile.
    """

    PRUNE_EVERY = 60.0

    def __init__(
        self,
        rates: RateLimiter,
        call: Callable[[Callable[[Database], dict[str, float]]], Awaitable[dict[str, float]]],
        *,
        interval: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.rates = rates
        self.rates.shared = True
        self._call = call
        self.interval = interval
        self._clock = clock
        self._pruned = 0.0

    async def run(self) -> None:
        """Sync until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            await self.sync()

    async def sync(self) -> int:
        """One sync; the number of keys written."""
        spent = self.rates.take_spent()
        if not spent:
            return 0
        names = {f"{kind}:{key}": (kind, key) for kind, key in spent}
        usage = [
            (name, spent[pair], self.rates.per_second(pair[0])) for name, pair in names.items()
        ]
        now = self._clock()
        prune_before = None
        if now - self._pruned >= self.PRUNE_EVERY:
            self._pruned = now
            # A bucket holds one minute's worth: after two minutes a row means nothing.
            prune_before = now - 120.0

        def write(db: Database) -> dict[str, float]:
            from smtpy.store.rates import add_usage

            return add_usage(db, usage, now=now, prune_before=prune_before)

        try:
            levels = await self._call(write)
        except Exception as exc:
            logger.warning("rate_sync_failed", keys=len(usage), error=str(exc)[:200])
            self.rates.give_back(spent)
            return 0
        self.rates.apply_shared({names[name]: level for name, level in levels.items()})
        return len(usage)


def start_rate_sync(
    guard: ConnectionGuard,
    call: Callable[[Callable[[Database], dict[str, float]]], Awaitable[dict[str, float]]],
    interval: float,
) -> asyncio.Task[None] | None:
    """Share the guard's rate buckets through the store every `interval` s (0: never)."""
    if interval <= 0:
        return None
    return asyncio.create_task(RateSync(guard.rates, call, interval=interval).run())
