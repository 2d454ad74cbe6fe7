"""SPF (RFC 7208): `check_host()` evaluated asynchronously over `smtpy.dns.Lookups`.

    result = await check_host(lookups, ip="192.0.2.1", domain="example.org",
                              sender="alice@example.org", helo="mail.example.org")
    result.result   # "pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"

Every DNS query goes through the daemon's cached resolver, so nothing blocks
the event loop and repeated senders cost no query at all. The limits of
RFC 7208 §4.6.4 hold across includes and redirects: at most 10 mechanisms and
modifiers that query DNS (include, a, mx, ptr, exists, redirect), at most 10
names per "mx" and "ptr", and at most 2 void lookups (an empty answer or
NXDOMAIN); exceeding one is a permerror. A DNS timeout or SERVFAIL is a
temperror. The "exp" modifier is parsed but not expanded (smtpy never sends
the explanation to anyone), and %{p} expands to "unknown" (RFC 7208 §7.3
allows it; validating a PTR costs queries for no gain).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Literal

from smtpy.dns import DNSTemporaryError, Lookups, NoSuchDomain

__all__ = ["SpfResult", "check_host"]

Result = Literal["pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"]

MAX_DNS_MECHANISMS = 10
MAX_VOID_LOOKUPS = 2
MAX_NAMES_PER_LOOKUP = 10

_QUALIFIERS: dict[str, Result] = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
_MECHANISMS = frozenset({"all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"})
_MODIFIER = re.compile(r"^([a-zA-Z][a-zA-Z0-9_.-]*)=(.*)$")
_DUAL_CIDR = re.compile(r"^(.*?)(?:/(\d+))?(?://(\d+))?$")
_MACRO = re.compile(r"%(?:\{([slodiphcrtvSLODIPHCRTV])(\d*)(r?)([.\-+,/_=]*)\}|(.))")
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")


@dataclass(frozen=True)
class SpfResult:
    """The outcome of one check: the result, the domain checked and why."""

    result: Result
    domain: str
    reason: str


class _PermError(Exception):
    pass


class _TempError(Exception):
    pass


@dataclass
class _State:
    """What one check_host() evaluation shares across includes and redirects."""

    lookups: Lookups
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    sender: str
    helo: str
    dns_mechanisms: int = 0
    void_lookups: int = 0
    seen: list[str] = field(default_factory=list)

    def count_mechanism(self) -> None:
        self.dns_mechanisms += 1
        if self.dns_mechanisms > MAX_DNS_MECHANISMS:
            raise _PermError(f"more than {MAX_DNS_MECHANISMS} DNS-querying mechanisms")

    async def query(self, name: str, rtype: str) -> list[str]:
        try:
            if rtype == "TXT":
                answer = await self.lookups.txt(name)
            else:
                answer = await self.lookups.records(name, rtype)
        except NoSuchDomain:
            answer = []  # an invalid name: as good as NXDOMAIN
        except DNSTemporaryError as exc:
            raise _TempError(str(exc)) from None
        if not answer:
            self.void_lookups += 1
            if self.void_lookups > MAX_VOID_LOOKUPS:
                raise _PermError(f"more than {MAX_VOID_LOOKUPS} void DNS lookups")
        return answer

    async def addresses(self, name: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        rtype = "A" if self.ip.version == 4 else "AAAA"
        found = []
        for text in await self.query(name, rtype):
            try:
                found.append(ipaddress.ip_address(text))
            except ValueError:
                continue
        return found


async def check_host(
    lookups: Lookups, *, ip: str, domain: str, sender: str, helo: str
) -> SpfResult:
    """Evaluate the SPF record of `domain` for a client at `ip` (RFC 7208 §4).

    `sender` is the MAIL FROM address (`postmaster@HELO` for the null sender
    or the HELO check), `helo` the HELO/EHLO name. Never raises.
    """
    domain = domain.strip().rstrip(".").lower()
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return SpfResult("none", domain, f"client address {ip!r} is not an IP address")
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if not _valid_domain(domain):
        return SpfResult("none", domain, "not a fully qualified domain name")
    state = _State(lookups, address, sender, helo)
    try:
        result = await _check(state, domain)
    except _TempError as exc:
        return SpfResult("temperror", domain, str(exc))
    except _PermError as exc:
        return SpfResult("permerror", domain, str(exc))
    return SpfResult(result[0], domain, result[1])


def _valid_domain(domain: str) -> bool:
    labels = domain.split(".")
    return len(domain) <= 253 and len(labels) >= 2 and all(_LABEL.match(x) for x in labels)


async def _record(state: _State, domain: str) -> str | None:
    """The one SPF record of `domain`, None without one; permerror for two."""
    try:
        texts = await state.lookups.txt(domain)
    except NoSuchDomain:
        return None
    except DNSTemporaryError as exc:
        raise _TempError(str(exc)) from None
    records = [t for t in texts if t.lower() == "v=spf1" or t.lower().startswith("v=spf1 ")]
    if len(records) > 1:
        raise _PermError(f"{domain} publishes {len(records)} SPF records")
    return records[0] if records else None


async def _check(state: _State, domain: str) -> tuple[Result, str]:
    record = await _record(state, domain)
    if record is None:
        return "none", f"{domain} publishes no SPF record"
    terms = record.split()[1:]
    redirect: str | None = None
    directives: list[tuple[Result, str, str]] = []
    for term in terms:
        modifier = _MODIFIER.match(term)
        if modifier and modifier.group(1).lower() not in _MECHANISMS:
            name = modifier.group(1).lower()
            if name == "redirect":
                if redirect is not None:
                    raise _PermError(f"{domain}: more than one redirect modifier")
                redirect = modifier.group(2)
            # exp= and unknown modifiers are ignored (RFC 7208 §6).
            continue
        qualifier: Result = "pass"
        if term[:1] in _QUALIFIERS:
            qualifier, term = _QUALIFIERS[term[0]], term[1:]
        name, sep, argument = term.partition(":")
        if not sep:
            name, slash, cidr = term.partition("/")
            argument = f"/{cidr}" if slash else ""
        name = name.lower()
        if name not in _MECHANISMS:
            raise _PermError(f"{domain}: unknown mechanism {term!r}")
        directives.append((qualifier, name, argument))
    for qualifier, name, argument in directives:
        if await _matches(state, domain, name, argument):
            return qualifier, f"{domain} matched {name}{':' + argument if argument else ''}"
    if redirect is not None:
        state.count_mechanism()
        target = _expand(state, redirect, domain).rstrip(".").lower()
        if not _valid_domain(target):
            raise _PermError(f"{domain}: redirect to an invalid domain {target!r}")
        result, reason = await _check(state, target)
        if result == "none":
            raise _PermError(f"{domain}: redirect to {target}, which has no SPF record")
        return result, reason
    return "neutral", f"{domain}: no mechanism matched"


async def _matches(state: _State, domain: str, name: str, argument: str) -> bool:
    if name == "all":
        return True
    if name in ("ip4", "ip6"):
        return _ip_matches(state.ip, name, argument, domain)
    state.count_mechanism()
    if name == "include":
        target = _target(state, argument, domain, required=True)
        result, _reason = await _check(state, target)
        if result == "none":
            raise _PermError(f"{domain}: include:{target} has no SPF record")
        return result == "pass"
    if name == "exists":
        target = _target(state, argument, domain, required=True)
        return bool(await state.query(target, "A"))
    spec, v4, v6 = _dual_cidr(argument, domain)
    target = _target(state, spec, domain, required=False)
    prefix = v4 if state.ip.version == 4 else v6
    if name == "a":
        return any(_in_network(state.ip, host, prefix) for host in await state.addresses(target))
    if name == "mx":
        exchanges = [text.split(" ", 1)[-1] for text in await state.query(target, "MX")]
        if len(exchanges) > MAX_NAMES_PER_LOOKUP:
            raise _PermError(f"{target}: more than {MAX_NAMES_PER_LOOKUP} MX names")
        for exchange in exchanges:
            if exchange == ".":
                continue
            if any(_in_network(state.ip, h, prefix) for h in await state.addresses(exchange)):
                return True
        return False
    # ptr (RFC 7208 §5.5, "do not use"): validated names under the target domain.
    reverse = ipaddress.ip_address(state.ip).reverse_pointer
    names = (await state.query(reverse, "PTR"))[:MAX_NAMES_PER_LOOKUP]
    for host in names:
        under = host == target or host.endswith("." + target)
        if under and state.ip in await state.addresses(host):
            return True
    return False


def _target(state: _State, spec: str, domain: str, *, required: bool) -> str:
    if not spec:
        if required:
            raise _PermError(f"{domain}: a mechanism lacks its domain")
        return domain
    target = _expand(state, spec, domain).rstrip(".").lower()
    if len(target) > 253:  # RFC 7208 §7.3: drop left labels until it fits
        labels = target.split(".")
        while labels and len(".".join(labels)) > 253:
            labels.pop(0)
        target = ".".join(labels)
    return target


def _dual_cidr(argument: str, domain: str) -> tuple[str, int, int]:
    match = _DUAL_CIDR.match(argument)
    assert match is not None  # the pattern matches every string
    spec, v4_text, v6_text = match.groups()
    v4 = int(v4_text) if v4_text else 32
    v6 = int(v6_text) if v6_text else 128
    if v4 > 32 or v6 > 128:
        raise _PermError(f"{domain}: invalid CIDR length in {argument!r}")
    return spec, v4, v6


def _ip_matches(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address, name: str, argument: str, domain: str
) -> bool:
    try:
        network = ipaddress.ip_network(argument, strict=False)
    except ValueError:
        raise _PermError(f"{domain}: invalid {name}:{argument}") from None
    if (name == "ip4") != (network.version == 4):
        raise _PermError(f"{domain}: invalid {name}:{argument}")
    return ip.version == network.version and ip in network


def _in_network(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
    host: ipaddress.IPv4Address | ipaddress.IPv6Address,
    prefix: int,
) -> bool:
    if ip.version != host.version:
        return False
    return ip in ipaddress.ip_network(f"{host}/{prefix}", strict=False)


def _expand(state: _State, spec: str, domain: str) -> str:
    """Expand the macros of a domain-spec (RFC 7208 §7)."""
    if "%" not in spec:
        return spec
    local, _, sender_domain = state.sender.rpartition("@")

    def value(letter: str) -> str:
        letter = letter.lower()
        if letter == "s":
            return state.sender
        if letter == "l":
            return local or "postmaster"
        if letter == "o":
            return sender_domain
        if letter == "d":
            return domain
        if letter == "i":
            if state.ip.version == 4:
                return str(state.ip)
            return ".".join(state.ip.exploded.replace(":", ""))
        if letter == "p":
            return "unknown"
        if letter == "v":
            return "in-addr" if state.ip.version == 4 else "ip6"
        if letter == "h":
            return state.helo
        raise _PermError(f"{domain}: macro %{{{letter}}} is not allowed in a domain-spec")

    def replace(match: re.Match[str]) -> str:
        letter, digits, reverse, delimiters, escape = match.groups()
        if escape is not None:
            if escape == "%":
                return "%"
            if escape == "_":
                return " "
            if escape == "-":
                return "%20"
            raise _PermError(f"{domain}: invalid macro %{escape}")
        parts = re.split("[" + re.escape(delimiters or ".") + "]", value(letter))
        if reverse:
            parts.reverse()
        if digits:
            if int(digits) == 0:
                raise _PermError(f"{domain}: macro with a zero label count")
            parts = parts[-int(digits) :]
        return ".".join(parts)

    if "%" in _MACRO.sub("", spec):
        raise _PermError(f"{domain}: invalid macro in {spec!r}")
    return _MACRO.sub(replace, spec)
