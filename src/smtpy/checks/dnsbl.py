"""Optional DNS blocklist check at connect (off unless `SMTPY_DNSBL_ZONES` names zones).

A client 192.0.2.1 is listed in zone bl.example when 1.2.0.192.bl.example has
an A record in 127.0.0.0/8 (RFC 5782; IPv6 addresses by nibbles). Answers in
127.255.255.0/24 are the zones' error codes (Spamhaus: "you are querying
through a public resolver"), not listings, and are ignored. A lookup that
fails is no listing either: a broken blocklist must not stop the mail.

Lookups go through `smtpy.dns.Lookups`, which caches each answer for its TTL
(negative answers for the zone's negative TTL), so a client that reconnects
costs no new query.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Sequence

from smtpy import log
from smtpy.dns import DNSTemporaryError, Lookups
from smtpy.smtp.replies import blocklisted

logger = log.get(__name__)

_ERROR_CODES = ipaddress.ip_network("127.255.255.0/24")
_LISTED = ipaddress.ip_network("127.0.0.0/8")


def query_name(ip: str, zone: str) -> str:
    """The name to look up for `ip` in `zone` (RFC 5782 §2.1 and §2.4)."""
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if isinstance(address, ipaddress.IPv4Address):
        labels = reversed(str(address).split("."))
    else:
        labels = reversed(address.exploded.replace(":", ""))
    return ".".join([*labels, zone])


def is_listing(answer: str) -> bool:
    """Whether an A record a zone returned means "listed"."""
    try:
        address = ipaddress.ip_address(answer)
    except ValueError:
        return False
    return address in _LISTED and address not in _ERROR_CODES


class DNSBL:
    """The configured zones; `check(ip)` is the refusal for a listed client, or None.

    The connect-stage check (`smtpy.checks.stages.ConnectCheck`): the connection
    guard runs it while the client waits for the banner.
    """

    def __init__(self, lookups: Lookups, zones: Sequence[str]) -> None:
        self.lookups = lookups
        self.zones = tuple(zones)

    async def listed_in(self, ip: str) -> str | None:
        """The first zone (in configured order) that lists `ip`, or None."""
        try:
            names = [query_name(ip, zone) for zone in self.zones]
        except ValueError:
            return None
        results = await asyncio.gather(
            *(self.lookups.addresses(name) for name in names), return_exceptions=True
        )
        for zone, result in zip(self.zones, results, strict=True):
            if isinstance(result, DNSTemporaryError):
                logger.warning("dnsbl_failed", zone=zone, client=ip, error=str(result))
            elif isinstance(result, BaseException):
                logger.warning("dnsbl_failed", zone=zone, client=ip, error=repr(result)[:200])
            elif any(is_listing(answer) for answer in result):
                return zone
        return None

    async def check(self, ip: str) -> str | None:
        zone = await self.listed_in(ip)
        if zone is None:
            return None
        logger.info("dnsbl_listed", client=ip, zone=zone)
        return blocklisted(ip, zone)
