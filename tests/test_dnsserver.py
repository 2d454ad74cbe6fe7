"""Tests of the loopback test DNS server itself, queried with dnspython."""

from __future__ import annotations

from collections.abc import Iterator

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.resolver
import pytest

from dnsserver import DNSServer


@pytest.fixture(scope="module")
def server() -> Iterator[DNSServer]:
    with DNSServer() as srv:
        yield srv


@pytest.fixture
def zone(server: DNSServer) -> Iterator[DNSServer]:
    server.clear()
    yield server
    server.clear()


def resolver_for(srv: DNSServer, timeout: float = 2.0) -> dns.resolver.Resolver:
    res = dns.resolver.Resolver(configure=False)
    res.nameservers = [srv.host]
    res.port = srv.port
    res.timeout = timeout
    res.lifetime = timeout
    res.cache = None
    return res


def test_nameserver_form_and_both_transports_bound(zone: DNSServer) -> None:
    assert zone.nameserver == f"127.0.0.1:{zone.port}"
    zone.add("example.test", "A", "127.0.0.2")
    query = dns.message.make_query("example.test", "A")
    udp = dns.query.udp(query, "127.0.0.1", port=zone.port, timeout=2)
    tcp = dns.query.tcp(query, "127.0.0.1", port=zone.port, timeout=2)
    assert udp.answer == tcp.answer
    assert [r.address for r in udp.answer[0]] == ["127.0.0.2"]
    assert zone.tcp_queries == [("example.test", "A")]


def test_records_of_each_type(zone: DNSServer) -> None:
    zone.add("Example.TEST.", "MX", "20 mx2.example.test.")
    zone.add("example.test", "MX", "10 mx1.example.test")
    zone.add("example.test", "AAAA", "::1")
    zone.add("example.test", "NS", "ns.example.test.")
    zone.add("example.test", "SOA", "ns.example.test. admin.example.test. 1 60 60 600 30")
    zone.add("2.0.0.127.in-addr.arpa", "PTR", "mx.example.test.")
    res = resolver_for(zone)
    mx = sorted((r.preference, r.exchange.to_text()) for r in res.resolve("example.test", "MX"))
    assert mx == [(10, "mx1.example.test."), (20, "mx2.example.test.")]
    assert [r.address for r in res.resolve("EXAMPLE.test", "AAAA")] == ["::1"]
    assert res.resolve("example.test", "NS")[0].target.to_text() == "ns.example.test."
    assert res.resolve("example.test", "SOA")[0].minimum == 30
    ptr = res.resolve("2.0.0.127.in-addr.arpa", "PTR")[0]
    assert ptr.target.to_text() == "mx.example.test."
    assert ("example.test", "AAAA") in zone.queries


def test_nxdomain_vs_nodata(zone: DNSServer) -> None:
    zone.add("example.test", "A", "127.0.0.2")
    zone.add("sel._domainkey.example.test", "TXT", "v=DKIM1; p=")
    res = resolver_for(zone)
    with pytest.raises(dns.resolver.NXDOMAIN):
        res.resolve("nope.example.test", "A")
    with pytest.raises(dns.resolver.NoAnswer):
        res.resolve("example.test", "AAAA")
    with pytest.raises(dns.resolver.NoAnswer):  # empty non-terminal
        res.resolve("_domainkey.example.test", "TXT")


def test_negative_answer_carries_soa_when_zone_has_one(zone: DNSServer) -> None:
    zone.add("example.test", "SOA", "ns.example.test. admin.example.test. 1 60 60 600 30")
    response = dns.query.udp(
        dns.message.make_query("nope.example.test", "A"), "127.0.0.1", port=zone.port, timeout=2
    )
    assert response.rcode() == dns.rcode.NXDOMAIN
    assert response.authority[0].name.to_text() == "example.test."


def test_cname_chased(zone: DNSServer) -> None:
    zone.add("www.example.test", "CNAME", "web.example.test.")
    zone.add("web.example.test", "CNAME", "example.test.")
    zone.add("example.test", "A", "127.0.0.2")
    answer = resolver_for(zone).resolve("www.example.test", "A")
    assert [r.address for r in answer] == ["127.0.0.2"]
    assert answer.canonical_name.to_text() == "example.test."


def test_long_txt_split_and_truncated_udp_retried_over_tcp(zone: DNSServer) -> None:
    value = "v=DKIM1; k=rsa; p=" + "A" * 600
    zone.add("sel._domainkey.example.test", "TXT", value)
    query = dns.message.make_query("sel._domainkey.example.test", "TXT")
    udp = dns.query.udp(query, "127.0.0.1", port=zone.port, timeout=2)
    assert udp.flags & dns.flags.TC
    answer = resolver_for(zone).resolve("sel._domainkey.example.test", "TXT")
    strings = answer[0].strings
    assert len(strings) == 3 and all(len(s) <= 255 for s in strings)
    assert b"".join(strings).decode() == value
    assert ("sel._domainkey.example.test", "TXT") in zone.tcp_queries


def test_null_mx(zone: DNSServer) -> None:
    zone.add("nomail.test", "MX", "0 .")
    rdata = resolver_for(zone).resolve("nomail.test", "MX")[0]
    assert (rdata.preference, rdata.exchange.to_text()) == (0, ".")


def test_fail_drop_remove(zone: DNSServer) -> None:
    zone.add("broken.test", "A", "127.0.0.2")
    zone.fail("broken.test")
    zone.fail("refused.test", "REFUSED")
    zone.drop("slow.test")
    query = dns.message.make_query("broken.test", "A")
    assert dns.query.udp(query, "127.0.0.1", port=zone.port, timeout=2).rcode() == 2
    query = dns.message.make_query("refused.test", "A")
    assert dns.query.udp(query, "127.0.0.1", port=zone.port, timeout=2).rcode() == 5
    with pytest.raises(dns.exception.Timeout):
        dns.query.udp(
            dns.message.make_query("slow.test", "A"), "127.0.0.1", port=zone.port, timeout=0.2
        )
    zone.remove("broken.test")
    with pytest.raises(dns.resolver.NXDOMAIN):
        resolver_for(zone).resolve("broken.test", "A")
    zone.add("x.test", "A", "127.0.0.2")
    zone.add("x.test", "TXT", "hello")
    zone.remove("x.test", "a")
    with pytest.raises(dns.resolver.NoAnswer):
        resolver_for(zone).resolve("x.test", "A")


def test_bad_values_rejected(zone: DNSServer) -> None:
    with pytest.raises(ValueError):
        zone.add("x.test", "A", "not-an-ip")
    with pytest.raises(ValueError):
        zone.add("x.test", "MX", "ten mx.test")
    with pytest.raises(ValueError):
        zone.add("x.test", "SRV", "0 0 25 mx.test")
    with pytest.raises(ValueError):
        zone.fail("x.test", "BOGUS")


def test_ipv6_loopback() -> None:
    srv = DNSServer("::1")
    try:
        srv.start()
    except OSError:
        pytest.skip("::1 not available")
    try:
        assert srv.nameserver == f"[::1]:{srv.port}"
        srv.add("example.test", "A", "127.0.0.2")
        answer = resolver_for(srv).resolve("example.test", "A")
        assert [r.address for r in answer] == ["127.0.0.2"]
    finally:
        srv.stop()
