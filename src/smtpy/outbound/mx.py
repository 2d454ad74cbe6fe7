"""Where mail for a domain goes: MX hosts, a domain literal, or the relay (RFC 5321 §5).

- The relay (smarthost, SMTPY_RELAY_HOST) takes everything when it is set.
- A domain literal (`user@[192.0.2.1]`, `user@[IPv6:2001:db8::1]`) goes to
  that address.
- Otherwise the domain's MX hosts in preference order (the implicit MX when
  there is none, from `Lookups`). MX hosts that name this forwarder, and every
  host of equal or lower preference, are dropped (§5.1); if none is left the
  mail "loops back to myself".

`Routes.find` turns what DNS says into either a `Route` or a `NoRoute` with
the status every recipient gets: null MX → failed 5.1.10 (RFC 7505 §4.2), no
such domain → failed 5.1.2, no MX, A or AAAA → failed 5.4.4, temporary DNS
failure → deferred 4.4.3, a looping MX → failed 5.4.6.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from smtpy.dns import DNSPermanentError, DNSTemporaryError, Lookups, NoSuchDomain, NullMX
from smtpy.outbound.smtp_replies import HostFailed
from smtpy.outbound.target import Status

__all__ = ["NoRoute", "Route", "Routes", "is_ip"]


@dataclass(frozen=True)
class Route:
    """Where mail for one domain goes: hosts to try in order, with their port."""

    hosts: list[tuple[str, int]]


@dataclass(frozen=True)
class NoRoute:
    """Why mail for a domain is not tried at all, as every recipient's outcome."""

    status: Status
    reply: str
    enhanced: str


class Routes:
    """Finds the hosts mail for a domain goes to, and their addresses."""

    def __init__(
        self,
        *,
        hostname: str,
        lookups: Lookups,
        port: int = 25,
        relay: tuple[str, int] | None = None,
    ) -> None:
        self._myself = _norm_host(hostname)
        self._lookups = lookups
        self._port = port
        self.relay = relay

    async def route(self, domain: str) -> Route:
        """Where mail for `domain` goes: the relay, a domain literal, or its MX hosts.

        Raises DNSPermanentError (NullMX, NoSuchDomain, NoMailHost),
        DNSTemporaryError, and ValueError for a malformed domain literal. An
        empty route means every MX is this forwarder or less preferred.
        """
        if self.relay is not None:
            return Route([self.relay])
        if domain.startswith("[") and domain.endswith("]"):
            literal = domain[1:-1]
            if literal.lower().startswith("ipv6:"):
                literal = literal[5:]
            return Route([(str(ipaddress.ip_address(literal)), self._port)])
        mx_hosts = await self._lookups.mx_hosts(domain)
        hosts: list[tuple[str, int]] = []
        for mx in mx_hosts:
            if _norm_host(mx.host) == self._myself:
                break  # RFC 5321 §5.1: ignore it and every less preferred MX
            hosts.append((mx.host, self._port))
        return Route(hosts)

    async def find(self, domain: str) -> Route | NoRoute:
        """The route for `domain`, or why there is none (for every recipient's outcome)."""
        try:
            route = await self.route(domain)
        except NullMX:
            return NoRoute("failed", f"domain {domain} does not accept mail (null MX)", "5.1.10")
        except NoSuchDomain:
            return NoRoute("failed", f"domain {domain} does not exist", "5.1.2")
        except DNSPermanentError as exc:  # NoMailHost: no MX, A or AAAA
            return NoRoute("failed", f"no mail host for {domain}: {exc}", "5.4.4")
        except DNSTemporaryError as exc:
            text = f"temporary DNS failure looking up MX for {domain}: {exc}"
            return NoRoute("deferred", text, "4.4.3")
        except ValueError:
            return NoRoute("failed", f"bad domain literal {domain}", "5.1.2")
        if not route.hosts:
            return NoRoute("failed", f"mail for {domain} loops back to myself", "5.4.6")
        return route

    async def addresses(self, host: str) -> list[str]:
        """The addresses of an MX host (A, then AAAA); HostFailed if it has none."""
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            pass
        try:
            addresses = await self._lookups.addresses(host)
        except DNSTemporaryError as exc:
            raise HostFailed(
                f"temporary DNS failure looking up {host}: {exc}", enhanced="4.4.3"
            ) from None
        except DNSPermanentError:
            raise HostFailed(f"host {host} not found", enhanced="4.4.4") from None
        if not addresses:
            raise HostFailed(f"host {host} has no address", enhanced="4.4.4")
        return addresses


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _norm_host(host: str) -> str:
    return host.strip().rstrip(".").lower()
