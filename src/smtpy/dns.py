"""DNS for smtpy: resolvers built from settings, cached lookups, MX selection.

Every DNS query smtpy makes goes through this module, against resolvers built
from `SMTPY_DNS_NAMESERVERS` (or the system's configuration when unset), so
tests and special setups point it at another server instead of patching:

    resolver = make_resolver(parse_nameservers("127.0.0.1:5353"), timeout=5)
    lookups = Lookups(resolver)
    hosts = await lookups.mx_hosts("example.org")      # [MXHost(10, "mx.example.org"), ...]
    addrs = await lookups.addresses("mx.example.org")  # ["192.0.2.1", "2001:db8::1"]

Errors (all `smtpy.errors.SmtpyError`):

    DNSTemporaryError       timeout, SERVFAIL, REFUSED, network error: defer (4xx)
    DNSPermanentError       the answer is final: bounce (5xx)
    ├── NoSuchDomain        the domain does not exist (NXDOMAIN)
    ├── NullMX              the domain accepts no mail (RFC 7505 "0 .")
    └── NoMailHost          the domain exists but has no MX, A or AAAA record

`Lookups` caches answers for their TTL (capped by `max_ttl`) in a bounded LRU,
caches negative answers for the SOA's negative TTL (RFC 2308; not at all when
the server sends no SOA), never caches temporary failures, and shares one
query among concurrent callers asking the same question. `lookup` is the
synchronous, never-raising variant that `smtpy domain verify` uses to report
what it found, including timeouts and SERVFAIL as such.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.MX
import dns.rdtypes.ANY.SOA
import dns.rdtypes.ANY.TXT
import dns.resolver

from smtpy.errors import ConfigError, SmtpyError

__all__ = [
    "DNSPermanentError",
    "DNSTemporaryError",
    "LookupResult",
    "Lookups",
    "MXHost",
    "NoMailHost",
    "NoSuchDomain",
    "NullMX",
    "lookup",
    "make_resolver",
    "make_sync_resolver",
    "parse_nameservers",
]

DEFAULT_PORT = 53
# Per-attempt timeout: a lost UDP packet is retried within the overall timeout.
_MAX_ATTEMPT_TIMEOUT = 2.0


class DNSTemporaryError(SmtpyError):
    """The lookup failed for now (timeout, SERVFAIL, network error): defer, retry later."""


class DNSPermanentError(SmtpyError):
    """The DNS answer is final and rules out delivery: bounce."""


class NoSuchDomain(DNSPermanentError):
    """The domain does not exist (NXDOMAIN)."""


class NullMX(DNSPermanentError):
    """The domain publishes a null MX (RFC 7505): it accepts no mail."""


class NoMailHost(DNSPermanentError):
    """The domain exists but has no MX and no A or AAAA record to deliver to."""


@dataclass(frozen=True)
class MXHost:
    """One mail exchanger: host lower-case, without the trailing dot."""

    preference: int
    host: str


@dataclass(frozen=True)
class LookupResult:
    """What a synchronous `lookup` found.

    `status` is "found" (values holds the records), "missing" (NXDOMAIN or no
    record of that type), "timeout", "servfail" (the servers answered with an
    error such as SERVFAIL or REFUSED) or "error" (anything else, e.g. a bad
    name); `detail` says what happened in a few words.
    """

    status: Literal["found", "missing", "timeout", "servfail", "error"]
    values: tuple[str, ...]
    detail: str


# -- resolvers ---------------------------------------------------------------


def _parse_address(text: str, item: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ConfigError(
            f"invalid DNS nameserver {item!r}: {text!r} is not an IP address"
        ) from None


def _parse_port(text: str, item: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ConfigError(f"invalid DNS nameserver {item!r}: port must be 1-65535")
    return int(text)


def parse_nameservers(spec: str) -> list[tuple[str, int]]:
    """Parse `SMTPY_DNS_NAMESERVERS`: comma-separated `ip`, `ip:port`, `[ipv6]:port`.

    A bare IPv6 address (`::1`) means port 53. Raise ConfigError on bad input.
    """
    items = [item.strip() for item in spec.split(",")]
    if not any(items):
        raise ConfigError("no DNS nameserver given: expected ip or ip:port, comma-separated")
    result: list[tuple[str, int]] = []
    for item in items:
        if not item:
            raise ConfigError(f"empty entry in DNS nameserver list {spec!r}")
        if item.startswith("["):
            host, sep, rest = item[1:].partition("]")
            if not sep:
                raise ConfigError(f"invalid DNS nameserver {item!r}: missing ']'")
            if rest and not rest.startswith(":"):
                raise ConfigError(f"invalid DNS nameserver {item!r}: expected [ipv6]:port")
            address = _parse_address(host, item)
            if ipaddress.ip_address(address).version != 6:
                raise ConfigError(f"invalid DNS nameserver {item!r}: brackets are for IPv6")
            port = _parse_port(rest[1:], item) if rest else DEFAULT_PORT
        elif item.count(":") == 1:
            host, _, port_text = item.partition(":")
            address = _parse_address(host, item)
            port = _parse_port(port_text, item)
        else:
            address = _parse_address(item, item)
            port = DEFAULT_PORT
        result.append((address, port))
    return result


def _configure(
    resolver: dns.resolver.BaseResolver,
    nameservers: Sequence[tuple[str, int]] | None,
    timeout: float,
) -> None:
    if nameservers is not None:
        if not nameservers:
            raise ConfigError("no DNS nameserver given")
        resolver.nameservers = [
            dns.nameserver.Do53Nameserver(address, port) for address, port in nameservers
        ]
    resolver.lifetime = timeout
    resolver.timeout = min(timeout, _MAX_ATTEMPT_TIMEOUT)
    resolver.cache = None


def make_resolver(
    nameservers: Sequence[tuple[str, int]] | None, *, timeout: float = 5.0
) -> dns.asyncresolver.Resolver:
    """An asyncio resolver for these nameservers, or the system's when None.

    `timeout` bounds a whole query, retries included.
    """
    try:
        resolver = dns.asyncresolver.Resolver(configure=nameservers is None)
    except dns.resolver.NoResolverConfiguration as exc:
        raise ConfigError(
            f"no system DNS configuration; set SMTPY_DNS_NAMESERVERS ({exc})"
        ) from None
    _configure(resolver, nameservers, timeout)
    return resolver


def make_sync_resolver(
    nameservers: Sequence[tuple[str, int]] | None, *, timeout: float = 5.0
) -> dns.resolver.Resolver:
    """A blocking resolver for these nameservers, or the system's when None."""
    try:
        resolver = dns.resolver.Resolver(configure=nameservers is None)
    except dns.resolver.NoResolverConfiguration as exc:
        raise ConfigError(
            f"no system DNS configuration; set SMTPY_DNS_NAMESERVERS ({exc})"
        ) from None
    _configure(resolver, nameservers, timeout)
    return resolver


# -- helpers -----------------------------------------------------------------


@functools.lru_cache(maxsize=4096)  # names are immutable; parsing one costs tens of µs
def _to_name(name: str) -> dns.name.Name:
    """An absolute dnspython name (IDNA-encoded); ValueError if not a valid name."""
    text = name.strip()
    if not text or text == ".":
        raise ValueError(f"invalid domain name {name!r}")
    try:
        return dns.name.from_text(text)
    except (dns.exception.DNSException, UnicodeError) as exc:
        raise ValueError(f"invalid domain name {name!r}: {exc}") from None


@functools.lru_cache(maxsize=4096)
def _key_text(name: dns.name.Name) -> str:
    """The cache key of a name: its text, lower-case."""
    return name.to_text().lower()


def _host_text(name: dns.name.Name) -> str:
    """Lower-case text of a name without the trailing dot ("." for the root)."""
    if name == dns.name.root:
        return "."
    return name.to_text(omit_final_dot=True).lower()


def _txt_text(rdata: dns.rdata.Rdata) -> str:
    assert isinstance(rdata, dns.rdtypes.ANY.TXT.TXT)
    return b"".join(rdata.strings).decode("utf-8", errors="replace")


def _rdata_text(rdata: dns.rdata.Rdata) -> str:
    if isinstance(rdata, dns.rdtypes.ANY.MX.MX):
        return f"{rdata.preference} {_host_text(rdata.exchange)}"
    if isinstance(rdata, dns.rdtypes.ANY.TXT.TXT):
        return _txt_text(rdata)
    target = getattr(rdata, "target", None)  # CNAME, PTR, NS
    if isinstance(target, dns.name.Name):
        return _host_text(target)
    return rdata.to_text()


def _negative_ttl(response: dns.message.Message | None) -> int:
    """RFC 2308 negative TTL from the authority SOA; 0 (no caching) without one."""
    if response is None:
        return 0
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset) > 0:
            soa = rrset[0]
            assert isinstance(soa, dns.rdtypes.ANY.SOA.SOA)
            return min(rrset.ttl, soa.minimum)
    return 0


@dataclass(frozen=True)
class _Answer:
    """One cached answer: rdata on success, empty for NODATA or NXDOMAIN."""

    rcode: Literal["found", "nodata", "nxdomain"]
    rdatas: tuple[dns.rdata.Rdata, ...]
    ttl: int


def _timeout_detail(exc: dns.exception.Timeout) -> str:
    return f"timed out: {exc}"


# -- async cached lookups ----------------------------------------------------


class Lookups:
    """TTL-respecting cached async lookups (cap the cache size and the TTL).

    `clock` is the time source for expiry (inject a fake one in tests);
    `observe(qtype, seconds)` is called after every query sent to the network
    (cache hits are not observed), successful or not; `rng` orders MX hosts of
    equal preference.
    """

    def __init__(
        self,
        resolver: dns.asyncresolver.Resolver,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_ttl: int = 3600,
        max_entries: int = 10_000,
        observe: Callable[[str, float], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.resolver = resolver
        self._clock = clock
        self._max_ttl = max_ttl
        self._max_entries = max_entries
        self._observe = observe
        self._rng = rng if rng is not None else random.Random()
        self._cache: OrderedDict[tuple[str, str], tuple[float, _Answer]] = OrderedDict()
        self._inflight: dict[tuple[str, str], asyncio.Task[_Answer]] = {}

    def clear(self) -> None:
        """Forget every cached answer."""
        self._cache.clear()

    async def mx_hosts(self, domain: str) -> list[MXHost]:
        """The mail exchangers of `domain`, in the order to try them (RFC 5321 §5.1).

        Sorted by preference, shuffled among equal preferences. Without MX
        records, the domain itself is the implicit MX (preference 0) if it has
        an A or AAAA record. Raises NoSuchDomain, NullMX, NoMailHost
        (permanent) or DNSTemporaryError.
        """
        name = self._name(domain)
        domain_text = _host_text(name)
        answer = await self._query(name, "MX")
        if answer.rcode == "found":
            best: dict[str, int] = {}
            null = False
            for rdata in answer.rdatas:
                assert isinstance(rdata, dns.rdtypes.ANY.MX.MX)
                host = _host_text(rdata.exchange)
                if host == ".":
                    null = True
                    continue
                best[host] = min(rdata.preference, best.get(host, rdata.preference))
            if not best:
                if null:
                    raise NullMX(f"{domain_text} accepts no mail (null MX)")
            else:
                by_pref: dict[int, list[str]] = {}
                for host, pref in best.items():
                    by_pref.setdefault(pref, []).append(host)
                hosts: list[MXHost] = []
                for pref in sorted(by_pref):
                    group = sorted(by_pref[pref])
                    self._rng.shuffle(group)
                    hosts.extend(MXHost(pref, host) for host in group)
                return hosts
        # No usable MX record: RFC 5321 §5.1 implicit MX, if the domain has an address.
        if await self._addresses(name):
            return [MXHost(0, domain_text)]
        if answer.rcode == "nxdomain":
            raise NoSuchDomain(f"domain {domain_text} does not exist")
        raise NoMailHost(f"{domain_text} has no MX, A or AAAA record")

    async def addresses(self, host: str) -> list[str]:
        """IPv4 then IPv6 addresses of `host`; [] if it has none or does not exist.

        If one family fails temporarily while the other has addresses, those
        are returned; if nothing was found and a query failed, raises
        DNSTemporaryError.
        """
        return await self._addresses(self._name(host))

    async def txt(self, name: str) -> list[str]:
        """The TXT records of `name`, each record's strings joined; [] if none."""
        answer = await self._query(self._name(name), "TXT")
        return [_txt_text(rdata) for rdata in answer.rdatas]

    async def records(self, name: str, rtype: str) -> list[str]:
        """The `rtype` records of `name` as text ([] for NODATA or NXDOMAIN), cached.

        No MX fallback to addresses here (SPF's "mx" has none): MX as
        "PREF host", PTR and CNAME as host names, A/AAAA as addresses.
        """
        answer = await self._query(self._name(name), rtype)
        return [_rdata_text(rdata) for rdata in answer.rdatas]

    # -- internals -----------------------------------------------------------

    @staticmethod
    def _name(text: str) -> dns.name.Name:
        try:
            return _to_name(text)
        except ValueError as exc:
            raise NoSuchDomain(str(exc)) from None

    async def _addresses(self, name: dns.name.Name) -> list[str]:
        results = await asyncio.gather(
            self._query(name, "A"), self._query(name, "AAAA"), return_exceptions=True
        )
        found: list[str] = []
        failure: BaseException | None = None
        for result in results:
            if isinstance(result, _Answer):
                found.extend(rdata.to_text() for rdata in result.rdatas)
            elif isinstance(result, DNSTemporaryError):
                failure = result
            else:
                raise result
        if not found and failure is not None:
            raise failure
        return found

    async def _query(self, name: dns.name.Name, rtype: str) -> _Answer:
        key = (_key_text(name), rtype)
        cached = self._cache.get(key)
        if cached is not None:
            expires, answer = cached
            if self._clock() < expires:
                self._cache.move_to_end(key)
                return answer
            del self._cache[key]
        task = self._inflight.get(key)
        if task is None or task.get_loop() is not asyncio.get_running_loop():
            task = asyncio.ensure_future(self._fetch(name, rtype))
            self._inflight[key] = task
            task.add_done_callback(lambda t: self._done(key, t))
        return await asyncio.shield(task)

    def _done(self, key: tuple[str, str], task: asyncio.Task[_Answer]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if task.cancelled() or task.exception() is not None:
            return  # temporary failures are never cached
        answer = task.result()
        ttl = min(answer.ttl, self._max_ttl)
        if ttl > 0 and self._max_entries > 0:
            self._cache[key] = (self._clock() + ttl, answer)
            self._cache.move_to_end(key)
            while len(self._cache) > self._max_entries:
                self._cache.popitem(last=False)

    async def _fetch(self, name: dns.name.Name, rtype: str) -> _Answer:
        started = time.perf_counter()
        try:
            result = await self.resolver.resolve(
                name, rtype, search=False, raise_on_no_answer=False
            )
        except dns.resolver.NXDOMAIN as exc:
            # NXDOMAIN.responses() is untyped; its kwargs hold the same map.
            responses: dict[dns.name.Name, dns.message.Message] = exc.kwargs.get("responses", {})
            return _Answer("nxdomain", (), _negative_ttl(responses.get(name)))
        except dns.exception.Timeout as exc:
            raise DNSTemporaryError(
                f"DNS {rtype} lookup of {name} {_timeout_detail(exc)}"
            ) from None
        except dns.resolver.NoNameservers as exc:
            raise DNSTemporaryError(f"DNS {rtype} lookup of {name} failed: {exc}") from None
        except (dns.exception.DNSException, OSError) as exc:
            raise DNSTemporaryError(f"DNS {rtype} lookup of {name} failed: {exc}") from None
        finally:
            if self._observe is not None:
                self._observe(rtype, time.perf_counter() - started)
        if result.rrset is None:
            return _Answer("nodata", (), _negative_ttl(result.response))
        ttl = result.response.resolve_chaining().minimum_ttl
        return _Answer("found", tuple(result.rrset), ttl)


# -- synchronous lookup for `smtpy domain verify` ------------------------------


def lookup(resolver: dns.resolver.Resolver, name: str, rtype: str) -> LookupResult:
    """Look up `rtype` records of `name`, reporting failures instead of raising.

    Values are text: TXT strings joined, MX as "PREF host" (sorted by
    preference), host names lower-case without the trailing dot.
    """
    rtype = rtype.upper()
    try:
        qname = _to_name(name)
        rdtype = dns.rdatatype.from_text(rtype)
    except (ValueError, dns.exception.DNSException) as exc:
        return LookupResult("error", (), str(exc))
    try:
        answer = resolver.resolve(qname, rdtype, search=False, raise_on_no_answer=False)
    except dns.resolver.NXDOMAIN:
        return LookupResult("missing", (), f"{_host_text(qname)} does not exist (NXDOMAIN)")
    except dns.exception.Timeout as exc:
        return LookupResult("timeout", (), _timeout_detail(exc))
    except dns.resolver.NoNameservers as exc:
        return LookupResult("servfail", (), str(exc))
    except (dns.exception.DNSException, OSError) as exc:
        return LookupResult("error", (), str(exc))
    if answer.rrset is None:
        return LookupResult("missing", (), f"no {rtype} record at {_host_text(qname)}")
    rdatas = list(answer.rrset)
    if rdtype == dns.rdatatype.MX:
        rdatas.sort(
            key=lambda r: (
                r.preference if isinstance(r, dns.rdtypes.ANY.MX.MX) else 0,
                _rdata_text(r),
            )
        )
    values = tuple(_rdata_text(rdata) for rdata in rdatas)
    return LookupResult("found", values, f"{len(values)} {rtype} record(s)")
