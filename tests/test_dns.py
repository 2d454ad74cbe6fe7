"""Tests of smtpy.dns against a real DNS server on loopback (tests/dnsserver.py)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import dns.nameserver
import pytest

from dnsserver import DNSServer
from smtpy.dns import (
    DNSPermanentError,
    DNSTemporaryError,
    LookupResult,
    Lookups,
    MXHost,
    NoMailHost,
    NoSuchDomain,
    NullMX,
    lookup,
    make_resolver,
    make_sync_resolver,
    parse_nameservers,
)
from smtpy.errors import ConfigError

T = TypeVar("T")

SOA = "ns.example.test. admin.example.test. 1 3600 600 86400 30"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def dns_server() -> Iterator[DNSServer]:
    with DNSServer() as server:
        yield server


@pytest.fixture
def zone(dns_server: DNSServer) -> Iterator[DNSServer]:
    dns_server.clear()
    yield dns_server
    dns_server.clear()


def lookups_for(server: DNSServer, timeout: float = 2.0, **kwargs: Any) -> Lookups:
    return Lookups(make_resolver(parse_nameservers(server.nameserver), timeout=timeout), **kwargs)


# -- parse_nameservers / resolvers ---------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("1.2.3.4", [("1.2.3.4", 53)]),
        ("1.2.3.4:5353", [("1.2.3.4", 5353)]),
        ("::1", [("::1", 53)]),
        ("[::1]:53", [("::1", 53)]),
        ("[2001:DB8::1]", [("2001:db8::1", 53)]),
        (" 127.0.0.1:1053 , [::1]:2053,9.9.9.9 ", [
            ("127.0.0.1", 1053), ("::1", 2053), ("9.9.9.9", 53)
        ]),
    ],
)  # fmt: skip
def test_parse_nameservers(spec: str, expected: list[tuple[str, int]]) -> None:
    assert parse_nameservers(spec) == expected


@pytest.mark.parametrize(
    "spec",
    [
        "",
        " , ",
        "1.2.3.4,,5.6.7.8",
        "dns.example.org",
        "1.2.3.4:0",
        "1.2.3.4:65536",
        "1.2.3.4:dns",
        "1.2.3.4:",
        "[::1",
        "[::1]x53",
        "[1.2.3.4]:53",
        "::1:53:x",
        "256.1.1.1",
    ],
)
def test_parse_nameservers_rejects(spec: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_nameservers(spec)
    assert "nameserver" in str(info.value)


def test_make_resolver_uses_each_port() -> None:
    servers = [("127.0.0.1", 5353), ("::1", 53)]
    for resolver in (make_resolver(servers, timeout=3), make_sync_resolver(servers, timeout=3)):
        nameservers = resolver.nameservers
        assert all(isinstance(ns, dns.nameserver.Do53Nameserver) for ns in nameservers)
        got = [(ns.address, ns.port) for ns in nameservers]  # type: ignore[union-attr]
        assert got == servers
        assert resolver.lifetime == 3
    with pytest.raises(ConfigError):
        make_resolver([])


# -- mx_hosts ------------------------------------------------------------------


def test_mx_sorted_by_preference(zone: DNSServer) -> None:
    zone.add("example.test", "MX", "30 C.example.test.")
    zone.add("example.test", "MX", "10 a.example.test.")
    zone.add("example.test", "MX", "20 b.example.test")
    hosts = run(lookups_for(zone).mx_hosts("EXAMPLE.test."))
    assert hosts == [
        MXHost(10, "a.example.test"),
        MXHost(20, "b.example.test"),
        MXHost(30, "c.example.test"),
    ]


def test_mx_equal_preference_shuffled(zone: DNSServer) -> None:
    for name in "abcd":
        zone.add("example.test", "MX", f"10 {name}.example.test.")
    zone.add("example.test", "MX", "5 first.example.test.")
    zone.add("example.test", "MX", "50 last.example.test.")
    lookups = lookups_for(zone, rng=random.Random(1))

    async def many() -> list[list[MXHost]]:
        return [await lookups.mx_hosts("example.test") for _ in range(30)]

    orders = run(many())
    for hosts in orders:
        assert hosts[0] == MXHost(5, "first.example.test")
        assert hosts[-1] == MXHost(50, "last.example.test")
        assert sorted(h.host for h in hosts[1:-1]) == [f"{n}.example.test" for n in "abcd"]
    assert len({tuple(hosts) for hosts in orders}) > 1
    assert zone.queries.count(("example.test", "MX")) == 1  # the rest came from the cache


def test_implicit_mx(zone: DNSServer) -> None:
    zone.add("v4.test", "A", "127.0.0.2")
    zone.add("v6.test", "AAAA", "::1")
    zone.add("v6.test", "TXT", "v=spf1 -all")
    lookups = lookups_for(zone)
    assert run(lookups.mx_hosts("v4.test")) == [MXHost(0, "v4.test")]
    assert run(lookups.mx_hosts("V6.Test")) == [MXHost(0, "v6.test")]


def test_mx_via_cname_and_idna(zone: DNSServer) -> None:
    zone.add("xn--bcher-kva.test", "CNAME", "mail.test.")
    zone.add("mail.test", "MX", "10 mx.mail.test.")
    assert run(lookups_for(zone).mx_hosts("bücher.test")) == [MXHost(10, "mx.mail.test")]


def test_null_mx(zone: DNSServer) -> None:
    zone.add("nomail.test", "MX", "0 .")
    zone.add("nomail.test", "A", "127.0.0.2")
    with pytest.raises(NullMX, match=r"nomail\.test"):
        run(lookups_for(zone).mx_hosts("nomail.test"))


def test_nxdomain_and_no_mail_host(zone: DNSServer) -> None:
    zone.add("txtonly.test", "TXT", "hello")
    lookups = lookups_for(zone)
    with pytest.raises(NoSuchDomain, match="does not exist"):
        run(lookups.mx_hosts("nope.test"))
    with pytest.raises(NoMailHost):
        run(lookups.mx_hosts("txtonly.test"))
    with pytest.raises(NoSuchDomain):
        run(lookups.mx_hosts("bad..name"))
    assert issubclass(NoMailHost, DNSPermanentError)


def test_servfail_is_temporary(zone: DNSServer) -> None:
    zone.fail("broken.test")
    zone.fail("refused.test", "REFUSED")
    lookups = lookups_for(zone)
    for name in ("broken.test", "refused.test"):
        with pytest.raises(DNSTemporaryError):
            run(lookups.mx_hosts(name))
    before = len(zone.queries)
    with pytest.raises(DNSTemporaryError):  # failures are not cached
        run(lookups.mx_hosts("broken.test"))
    assert len(zone.queries) > before


def test_timeout_is_temporary_and_quick(zone: DNSServer) -> None:
    zone.drop("slow.test")
    lookups = lookups_for(zone, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(DNSTemporaryError, match="timed out"):
        run(lookups.mx_hosts("slow.test"))
    assert time.monotonic() - started < 1.5


def test_implicit_mx_address_failure_is_temporary(zone: DNSServer) -> None:
    zone.add("flaky.test", "TXT", "exists")
    lookups = lookups_for(zone)
    run(lookups.txt("flaky.test"))
    zone.remove("flaky.test")
    zone.fail("flaky.test")
    with pytest.raises(DNSTemporaryError):
        run(lookups.mx_hosts("flaky.test"))


# -- caching -------------------------------------------------------------------


def test_ttl_caching_with_injected_clock(zone: DNSServer) -> None:
    zone.add("example.test", "MX", "10 mx.example.test.", ttl=30)
    clock = FakeClock()
    lookups = lookups_for(zone, clock=clock)
    query = ("example.test", "MX")
    run(lookups.mx_hosts("example.test"))
    assert zone.queries.count(query) == 1
    clock.now += 29
    run(lookups.mx_hosts("example.test"))
    assert zone.queries.count(query) == 1
    clock.now += 2
    run(lookups.mx_hosts("example.test"))
    assert zone.queries.count(query) == 2


def test_ttl_capped_and_zero_ttl_not_cached(zone: DNSServer) -> None:
    zone.add("long.test", "TXT", "x", ttl=86400)
    zone.add("zero.test", "TXT", "y", ttl=0)
    clock = FakeClock()
    lookups = lookups_for(zone, clock=clock, max_ttl=60)
    for _ in range(2):
        assert run(lookups.txt("long.test")) == ["x"]
        assert run(lookups.txt("zero.test")) == ["y"]
    assert zone.queries.count(("long.test", "TXT")) == 1
    assert zone.queries.count(("zero.test", "TXT")) == 2
    clock.now += 61
    run(lookups.txt("long.test"))
    assert zone.queries.count(("long.test", "TXT")) == 2


def test_negative_caching_follows_soa(zone: DNSServer) -> None:
    clock = FakeClock()
    lookups = lookups_for(zone, clock=clock)
    # Without an SOA in the answer nothing negative is cached.
    assert run(lookups.txt("nope.test")) == []
    assert run(lookups.txt("nope.test")) == []
    assert zone.queries.count(("nope.test", "TXT")) == 2
    # With one, for min(SOA TTL, SOA minimum) = 30 s.
    zone.add("example.test", "SOA", SOA)
    assert run(lookups.txt("nope.example.test")) == []
    clock.now += 29
    assert run(lookups.txt("nope.example.test")) == []
    assert zone.queries.count(("nope.example.test", "TXT")) == 1
    clock.now += 2
    run(lookups.txt("nope.example.test"))
    assert zone.queries.count(("nope.example.test", "TXT")) == 2


def test_cache_size_capped(zone: DNSServer) -> None:
    for i in range(3):
        zone.add(f"h{i}.test", "TXT", str(i))
    lookups = lookups_for(zone, max_entries=2)
    for i in (0, 1, 2, 0):
        run(lookups.txt(f"h{i}.test"))
    assert zone.queries.count(("h0.test", "TXT")) == 2  # evicted by h2


def test_concurrent_callers_share_one_query(zone: DNSServer) -> None:
    zone.add("example.test", "MX", "10 mx.example.test.")
    lookups = lookups_for(zone)

    async def burst() -> list[list[MXHost]]:
        return await asyncio.gather(*(lookups.mx_hosts("example.test") for _ in range(10)))

    results = run(burst())
    assert all(r == [MXHost(10, "mx.example.test")] for r in results)
    assert zone.queries.count(("example.test", "MX")) == 1


def test_observe_hook(zone: DNSServer) -> None:
    zone.add("example.test", "A", "127.0.0.2")
    zone.add("example.test", "SOA", SOA)  # so that the empty AAAA answer is cached too
    seen: list[tuple[str, float]] = []
    lookups = lookups_for(zone, observe=lambda qtype, secs: seen.append((qtype, secs)))
    run(lookups.addresses("example.test"))
    run(lookups.addresses("example.test"))  # cached: not observed
    assert sorted(q for q, _ in seen) == ["A", "AAAA"]
    assert all(0 <= secs < 2 for _, secs in seen)


# -- addresses / txt -----------------------------------------------------------


def test_addresses_ipv4_first(zone: DNSServer) -> None:
    zone.add("mx.test", "AAAA", "2001:db8::1")
    zone.add("mx.test", "A", "192.0.2.2")
    zone.add("mx.test", "A", "192.0.2.1")
    zone.add("v6only.test", "AAAA", "::1")
    lookups = lookups_for(zone)
    addresses = run(lookups.addresses("mx.test"))
    assert sorted(addresses[:2]) == ["192.0.2.1", "192.0.2.2"]
    assert addresses[2:] == ["2001:db8::1"]
    assert run(lookups.addresses("v6only.test")) == ["::1"]
    assert run(lookups.addresses("nope.test")) == []


def test_addresses_temporary_errors(zone: DNSServer) -> None:
    zone.fail("broken.test")
    with pytest.raises(DNSTemporaryError):
        run(lookups_for(zone).addresses("broken.test"))


def test_long_txt_joined(zone: DNSServer) -> None:
    key = "v=DKIM1; k=rsa; p=" + "M" * 700
    zone.add("sel._domainkey.example.test", "TXT", key)
    zone.add("sel._domainkey.example.test", "TXT", "second")
    txt = run(lookups_for(zone).txt("sel._domainkey.example.test"))
    assert sorted(txt) == sorted([key, "second"])
    assert ("sel._domainkey.example.test", "TXT") in zone.tcp_queries  # TC → TCP retry


# -- lookup (synchronous) ------------------------------------------------------


def test_lookup_statuses(zone: DNSServer) -> None:
    zone.add("example.test", "MX", "20 MX2.example.test.")
    zone.add("example.test", "MX", "10 mx1.example.test.")
    zone.add("example.test", "TXT", "v=spf1 " + "a" * 300 + " -all")
    zone.add("nomail.test", "MX", "0 .")
    zone.fail("broken.test")
    zone.drop("slow.test")
    resolver = make_sync_resolver(parse_nameservers(zone.nameserver), timeout=0.5)

    mx = lookup(resolver, "example.test", "MX")
    assert mx.status == "found"
    assert mx.values == ("10 mx1.example.test", "20 mx2.example.test")
    txt = lookup(resolver, "example.test", "txt")
    assert txt.values == ("v=spf1 " + "a" * 300 + " -all",)
    assert lookup(resolver, "nomail.test", "MX").values == ("0 .",)

    nodata = lookup(resolver, "example.test", "AAAA")
    assert (nodata.status, nodata.values) == ("missing", ())
    nxdomain = lookup(resolver, "nope.test", "TXT")
    assert nxdomain.status == "missing" and "NXDOMAIN" in nxdomain.detail
    assert lookup(resolver, "broken.test", "TXT").status == "servfail"
    timeout = lookup(resolver, "slow.test", "TXT")
    assert timeout == LookupResult("timeout", (), timeout.detail) and timeout.detail
    assert lookup(resolver, "bad..name", "TXT").status == "error"
    assert lookup(resolver, "example.test", "NOTATYPE").status == "error"
