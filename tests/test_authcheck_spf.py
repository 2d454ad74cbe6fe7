"""SPF (smtpy.checks.spf) against records on the loopback DNS server (RFC 7208)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from dnsserver import DNSServer
from smtpy.checks.spf import SpfResult, check_host
from smtpy.dns import Lookups, make_resolver, parse_nameservers

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def spf(
    server: DNSServer,
    domain: str,
    ip: str = "192.0.2.10",
    *,
    sender: str | None = None,
    helo: str = "mail.sender.test",
    timeout: float = 2.0,
) -> SpfResult:
    lookups = Lookups(make_resolver(parse_nameservers(server.nameserver), timeout=timeout))
    return run(
        check_host(lookups, ip=ip, domain=domain, sender=sender or f"alice@{domain}", helo=helo)
    )


@pytest.mark.parametrize(
    ("record", "ip", "expected"),
    [
        ("v=spf1 ip4:192.0.2.0/24 -all", "192.0.2.10", "pass"),
        ("v=spf1 ip4:192.0.2.0/24 -all", "198.51.100.1", "fail"),
        ("v=spf1 ip4:192.0.2.0/24 ~all", "198.51.100.1", "softfail"),
        ("v=spf1 ip4:192.0.2.0/24 ?all", "198.51.100.1", "neutral"),
        ("v=spf1 ip4:192.0.2.0/24", "198.51.100.1", "neutral"),
        ("v=spf1 -ip4:192.0.2.10 +all", "192.0.2.10", "fail"),
        ("v=spf1 ip4:192.0.2.10 -all", "::ffff:192.0.2.10", "pass"),
        ("v=spf1 ip6:2001:db8::/32 -all", "2001:db8::25", "pass"),
        ("v=spf1 ip6:2001:db8::/32 -all", "192.0.2.10", "fail"),
        ("v=spf1 ip4:192.0.2.0/33 -all", "192.0.2.10", "permerror"),
        ("v=spf1 frobnicate -all", "192.0.2.10", "permerror"),
        ("v=spf1 unknown-modifier=x ip4:192.0.2.10 -all", "192.0.2.10", "pass"),
        ("V=SPF1 IP4:192.0.2.10 -ALL", "192.0.2.10", "pass"),
        ("v=spf1 redirect=a.test redirect=b.test", "192.0.2.10", "permerror"),
    ],
)
def test_ip_mechanisms_and_qualifiers(
    dns_server: DNSServer, record: str, ip: str, expected: str
) -> None:
    dns_server.add("sender.test", "TXT", record)
    assert spf(dns_server, "sender.test", ip).result == expected


def test_no_record_is_none_and_two_records_are_permerror(dns_server: DNSServer) -> None:
    assert spf(dns_server, "nowhere.test").result == "none"  # NXDOMAIN
    dns_server.add("sender.test", "TXT", "some unrelated text")
    assert spf(dns_server, "sender.test").result == "none"
    dns_server.add("two.test", "TXT", "v=spf1 -all")
    dns_server.add("two.test", "TXT", "v=spf1 +all")
    assert spf(dns_server, "two.test").result == "permerror"
    assert spf(dns_server, "localhost").result == "none"  # not a FQDN: not even asked


def test_a_and_mx_with_cidr(dns_server: DNSServer) -> None:
    dns_server.add("sender.test", "TXT", "v=spf1 a mx:mail.test/24 a:v6.test//64 -all")
    dns_server.add("sender.test", "A", "192.0.2.1")
    dns_server.add("mail.test", "MX", "10 mx1.mail.test.")
    dns_server.add("mx1.mail.test", "A", "198.51.100.7")
    dns_server.add("v6.test", "AAAA", "2001:db8:1:2::1")
    assert spf(dns_server, "sender.test", "192.0.2.1").result == "pass"
    assert spf(dns_server, "sender.test", "198.51.100.200").result == "pass"  # mx /24
    assert spf(dns_server, "sender.test", "2001:db8:1:2:ffff::9").result == "pass"  # a //64
    assert spf(dns_server, "sender.test", "203.0.113.1").result == "fail"


def test_mx_has_no_implicit_mx(dns_server: DNSServer) -> None:
    """RFC 7208 §5.4: "mx" looks at MX records only, never the domain's own address."""
    dns_server.add("sender.test", "TXT", "v=spf1 mx -all")
    dns_server.add("sender.test", "A", "192.0.2.10")
    assert spf(dns_server, "sender.test", "192.0.2.10").result == "fail"


def test_include_and_redirect(dns_server: DNSServer) -> None:
    dns_server.add("sender.test", "TXT", "v=spf1 include:esp.test -all")
    dns_server.add("esp.test", "TXT", "v=spf1 ip4:203.0.113.0/24 -all")
    assert spf(dns_server, "sender.test", "203.0.113.5").result == "pass"
    # The included record's -all is "no match" for the includer, whose own -all decides.
    assert spf(dns_server, "sender.test", "192.0.2.1").result == "fail"

    dns_server.add("redir.test", "TXT", "v=spf1 redirect=esp.test")
    assert spf(dns_server, "redir.test", "203.0.113.5").result == "pass"
    assert spf(dns_server, "redir.test", "192.0.2.1").result == "fail"

    dns_server.add("broken.test", "TXT", "v=spf1 include:nothing.test -all")
    assert spf(dns_server, "broken.test", "192.0.2.1").result == "permerror"
    dns_server.add("broken2.test", "TXT", "v=spf1 redirect=nothing.test")
    assert spf(dns_server, "broken2.test", "192.0.2.1").result == "permerror"
    # "all" wins over redirect.
    dns_server.add("both.test", "TXT", "v=spf1 ?all redirect=esp.test")
    assert spf(dns_server, "both.test", "203.0.113.5").result == "neutral"


def test_ten_dns_mechanisms_at_most(dns_server: DNSServer) -> None:
    # A chain of includes: sender -> i1 -> ... ; each include counts.
    def chain(length: int, prefix: str) -> str:
        for n in range(length):
            target = f"{prefix}{n + 1}.test" if n + 1 < length else "end.test"
            dns_server.add(f"{prefix}{n}.test", "TXT", f"v=spf1 include:{target} -all")
        return f"{prefix}0.test"

    dns_server.add("end.test", "TXT", "v=spf1 ip4:192.0.2.10 -all")
    assert spf(dns_server, chain(10, "ok"), "192.0.2.10").result == "pass"
    result = spf(dns_server, chain(11, "long"), "192.0.2.10")
    assert result.result == "permerror"
    assert "10 DNS" in result.reason


def test_two_void_lookups_at_most(dns_server: DNSServer) -> None:
    dns_server.add("sender.test", "TXT", "v=spf1 a:v1.test a:v2.test ip4:192.0.2.10 -all")
    assert spf(dns_server, "sender.test", "192.0.2.10").result == "pass"
    dns_server.add("three.test", "TXT", "v=spf1 a:v1.test a:v2.test a:v3.test ip4:192.0.2.10 -all")
    result = spf(dns_server, "three.test", "192.0.2.10")
    assert (result.result, "void" in result.reason) == ("permerror", True)


def test_exists_with_macros(dns_server: DNSServer) -> None:
    dns_server.add("sender.test", "TXT", "v=spf1 exists:%{ir}.%{l1r+-}._spf.%{d} -all")
    dns_server.add("10.2.0.192.alice._spf.sender.test", "A", "127.0.0.2")
    assert spf(dns_server, "sender.test", "192.0.2.10", sender="alice-x@sender.test").result == (
        "pass"
    )
    assert spf(dns_server, "sender.test", "192.0.2.11", sender="alice@sender.test").result == (
        "fail"
    )
    dns_server.add("bad.test", "TXT", "v=spf1 exists:%{q} -all")
    assert spf(dns_server, "bad.test").result == "permerror"


def test_timeouts_are_temperror(dns_server: DNSServer) -> None:
    dns_server.drop("slow.test")
    assert spf(dns_server, "slow.test", timeout=0.3).result == "temperror"
    dns_server.fail("broken.test", "SERVFAIL")
    assert spf(dns_server, "broken.test").result == "temperror"
    dns_server.add("inc.test", "TXT", "v=spf1 include:slow.test -all")
    assert spf(dns_server, "inc.test", timeout=0.3).result == "temperror"


def test_ptr_mechanism(dns_server: DNSServer) -> None:
    dns_server.add("sender.test", "TXT", "v=spf1 ptr -all")
    dns_server.add("10.2.0.192.in-addr.arpa", "PTR", "mail.sender.test.")
    dns_server.add("mail.sender.test", "A", "192.0.2.10")
    assert spf(dns_server, "sender.test", "192.0.2.10").result == "pass"
    dns_server.add("11.2.0.192.in-addr.arpa", "PTR", "mail.sender.test.")  # forward does not match
    assert spf(dns_server, "sender.test", "192.0.2.11").result == "fail"
