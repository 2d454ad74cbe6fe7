"""Whatever a sender puts in a message or a domain in its records, the checks answer
and never raise (hypothesis), against the loopback DNS server."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authworld import lookups_for, run
from dnsserver import DNSServer
from smtpy.checks.authentication import AuthPolicy, InboundChecker, Verdict
from smtpy.checks.spf import check_host

SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
NAMES = [
    "From",
    "DKIM-Signature",
    "ARC-Seal",
    "ARC-Message-Signature",
    "ARC-Authentication-Results",
    "Authentication-Results",
    "Subject",
]
TAGS = st.lists(
    st.tuples(
        st.sampled_from(["v", "a", "b", "bh", "c", "d", "h", "i", "l", "s", "t", "x", "cv"]),
        st.text(alphabet="abc019=;:.@ -/+_\t", max_size=12),
    ),
    max_size=10,
)


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    lines = []
    for _ in range(draw(st.integers(0, 6))):
        name = draw(st.sampled_from(NAMES))
        tags = draw(TAGS)
        value = "; ".join(f"{k}={v}" for k, v in tags) or draw(st.text(max_size=30))
        lines.append(f"{name}: {value}")
    body = draw(st.binary(max_size=200))
    return "\r\n".join(lines).encode("utf-8", "surrogateescape") + b"\r\n\r\n" + body


@SETTINGS
@given(data=messages(), sender=st.sampled_from(["", "a@x.test", "b@", "@", "c@-bad-.test"]))
def test_any_message_gets_a_verdict(dns_server: DNSServer, data: bytes, sender: str) -> None:
    checker = InboundChecker(lookups_for(dns_server), AuthPolicy(hostname="mx.forwarder.test"))

    async def go() -> Verdict:
        return await checker.check(
            data, spf=None, client_ip="192.0.2.1", helo="h.test", sender=sender, queue_id="Q"
        )

    verdict = run(go())
    assert verdict.headers.startswith(b"Authentication-Results: mx.forwarder.test;")
    assert verdict.reply is None  # nothing publishes p=reject here


TERMS = st.sampled_from(
    [
        "all",
        "-all",
        "~all",
        "ip4:192.0.2.0/24",
        "ip6:::1",
        "a",
        "mx",
        "ptr",
        "a:%{d}",
        "exists:%{ir}.%{v}.x.test",
        "include:x.test",
        "redirect=x.test",
        "exp=%{q}",
        "a/33",
        "mx//129",
        "%{l1r+-}",
        "ip4:",
        "include:",
        "x=y",
        "?a:..",
        "a:%",
        "exists:%{s}",
    ]
)


@SETTINGS
@given(terms=st.lists(TERMS, max_size=6), include=st.lists(TERMS, max_size=4))
def test_any_spf_record_gets_a_result(
    dns_server: DNSServer, terms: list[str], include: list[str]
) -> None:
    dns_server.clear()
    dns_server.add("sender.test", "TXT", " ".join(["v=spf1", *terms]))
    dns_server.add("x.test", "TXT", " ".join(["v=spf1", *include]))
    result = run(
        check_host(
            lookups_for(dns_server),
            ip="192.0.2.1",
            domain="sender.test",
            sender="a-b+c@sender.test",
            helo="h.test",
        )
    )
    assert result.result in {"pass", "fail", "softfail", "neutral", "none", "permerror"}
