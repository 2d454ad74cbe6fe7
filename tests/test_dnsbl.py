"""DNS blocklists at connect (smtpy.checks.dnsbl), against the loopback DNS server and the real
SMTP server in process: a listed client gets 554 5.7.1 instead of the banner."""

from __future__ import annotations

import asyncio

import pytest

from dnsserver import DNSServer
from inbound import BANNER, Client, Running, scenario, serve_example
from smtpy.checks.dnsbl import DNSBL, is_listing, query_name
from smtpy.checks.limits import ConnectionGuard, ConnectionLimits, RateLimiter
from smtpy.dns import Lookups, make_resolver, parse_nameservers


def test_query_names() -> None:
    assert query_name("192.0.2.99", "bl.test") == "99.2.0.192.bl.test"
    assert query_name("::ffff:192.0.2.99", "bl.test") == "99.2.0.192.bl.test"
    assert query_name("2001:db8::1", "bl.test") == (
        "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.test"
    )


def test_what_counts_as_a_listing() -> None:
    assert is_listing("127.0.0.2")
    assert is_listing("127.0.0.10")
    assert not is_listing("127.255.255.254"), "an error code of the zone, not a listing"
    assert not is_listing("192.0.2.1")
    assert not is_listing("::1")


def make_dnsbl(dns_server: DNSServer, *zones: str) -> DNSBL:
    resolver = make_resolver(parse_nameservers(dns_server.nameserver), timeout=1.0)
    return DNSBL(Lookups(resolver), zones)


def guard_with(dnsbl: DNSBL) -> ConnectionGuard:
    return ConnectionGuard(
        connections=ConnectionLimits(total=100, per_ip=10),
        rates=RateLimiter({}),
        blocklist=dnsbl.check,
    )


@pytest.fixture
def served(store_url: str) -> str:
    return serve_example(store_url)


def test_listed_client_is_refused_at_connect_and_others_get_the_banner(
    served: str, dns_server: DNSServer
) -> None:
    dns_server.add("9.0.0.127.bl.test", "A", "127.0.0.2")
    dns_server.add("10.0.0.127.bl.test", "A", "127.255.255.254")  # "you may not query"
    dns_server.add("11.0.0.127.second.test", "A", "127.0.0.4")
    dns_server.drop("12.0.0.127.bl.test")  # the zone does not answer
    dnsbl = make_dnsbl(dns_server, "bl.test", "second.test")

    async def body(server: Running) -> dict[str, str]:
        greetings = {}
        for source in ("127.0.0.9", "127.0.0.10", "127.0.0.11", "127.0.0.12", "127.0.0.13"):
            client = await Client.connect(server.port, source)
            greetings[source] = await client.line()
            client.close()
        return greetings

    greetings = scenario(served, body, guard=guard_with(dnsbl))
    assert greetings == {
        "127.0.0.9": "554 5.7.1 Service unavailable; client [127.0.0.9] blocked using bl.test",
        "127.0.0.10": BANNER,
        "127.0.0.11": "554 5.7.1 Service unavailable; client [127.0.0.11] blocked using second.test",
        "127.0.0.12": BANNER,  # a zone that fails is no listing: mail goes on
        "127.0.0.13": BANNER,
    }


def test_answers_are_cached(dns_server: DNSServer) -> None:
    dns_server.add("9.0.0.127.bl.test", "A", "127.0.0.2", ttl=300)
    dnsbl = make_dnsbl(dns_server, "bl.test")

    async def twice() -> list[str | None]:
        return [await dnsbl.listed_in("127.0.0.9"), await dnsbl.listed_in("127.0.0.9")]

    assert asyncio.run(twice()) == ["bl.test", "bl.test"]
    asked = [q for q in dns_server.queries if q == ("9.0.0.127.bl.test", "A")]
    assert len(asked) == 1
