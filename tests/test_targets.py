"""The outbound seam: the Target the daemon builds, routes, reply meanings, and its log events.

`Deliverer` is the Target `smtpy serve` hands prepared messages to; it sends
mail addresses through the SMTP target. Peers are real SMTP servers on
loopback addresses and DNS answers come from the loopback DNS server.
"""

from __future__ import annotations

import asyncio
import io
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from aiosmtplib import SMTPResponse

from dnsserver import DNSServer
from smtpy import log
from smtpy.dns import Lookups, make_resolver
from smtpy.outbound.deliver import Deliverer
from smtpy.outbound.mx import NoRoute, Route, Routes
from smtpy.outbound.smtp_replies import enhanced_status, from_reply
from smtpy.outbound.smtp_target import SmtpTarget
from smtpy.outbound.target import Outcome, Target
from test_deliver import (
    HOSTNAME,
    MESSAGE,
    SENDER,
    BrokenTLS,
    Sink,
    certificate,
    run,
    server_tls,
    serving,
    smtp_server,
    two_mx,
)

__all__ = ["certificate"]  # the module-scoped certificate fixture, shared with test_deliver


def lookups(dns_server: DNSServer) -> Lookups:
    return Lookups(make_resolver([("127.0.0.1", dns_server.port)], timeout=2.0))


def smtp(dns_server: DNSServer, port: int) -> SmtpTarget:
    return SmtpTarget(
        hostname=HOSTNAME,
        lookups=lookups(dns_server),
        port=port,
        connect_timeout=2.0,
        command_timeout=5.0,
    )


# -- the Target the daemon runs ------------------------------------------------------


def test_the_deliverer_sends_mail_addresses_over_smtp(dns_server: DNSServer) -> None:
    two_mx(dns_server)
    sink = Sink(rcpt_replies={"gone@example.test": "550 5.1.1 no such user"})

    async def scenario() -> list[Outcome]:
        async with serving({"127.0.0.2": smtp_server(sink, "mx1.example.test")}) as port:
            target: Target = Deliverer(smtp(dns_server, port))
            try:
                return await target.deliver(
                    sender=SENDER,
                    recipients=["bob@example.test", "gone@example.test"],
                    message=MESSAGE,
                )
            finally:
                await target.close()

    delivered, failed = run(scenario())
    assert (delivered.status, delivered.code, delivered.reply) == (
        "delivered",
        250,
        "2.0.0 Ok: queued as 42",
    )
    assert delivered.remote_host == "mx1.example.test[127.0.0.2]"
    assert (failed.status, failed.enhanced) == ("failed", "5.1.1")
    [received] = sink.received
    assert received.rcpt_tos == ["bob@example.test"]


def test_the_deliverer_answers_where_mail_goes(dns_server: DNSServer) -> None:
    two_mx(dns_server)
    deliverer = Deliverer(smtp(dns_server, 2525))
    assert run(deliverer.route("example.test")) == Route(
        [("mx1.example.test", 2525), ("mx2.example.test", 2525)]
    )
    assert run(deliverer.tls_policy("[127.0.0.2]")).mode == "opportunistic"


# -- routes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        (
            [("MX", "0 .")],
            NoRoute("failed", "domain dest.test does not accept mail (null MX)", "5.1.10"),
        ),
        (
            [("MX", f"10 {HOSTNAME}.")],
            NoRoute("failed", "mail for dest.test loops back to myself", "5.4.6"),
        ),
        ([("MX", "10 mx.dest.test.")], Route([("mx.dest.test", 25)])),
    ],
)
def test_routes_say_why_mail_is_not_tried(
    dns_server: DNSServer, records: list[tuple[str, str]], expected: Route | NoRoute
) -> None:
    for rtype, value in records:
        dns_server.add("dest.test", rtype, value)
    routes = Routes(hostname=HOSTNAME, lookups=lookups(dns_server))
    assert run(routes.find("dest.test")) == expected


def test_a_domain_that_does_not_exist_fails_and_the_relay_takes_everything(
    dns_server: DNSServer,
) -> None:
    routes = Routes(hostname=HOSTNAME, lookups=lookups(dns_server))
    assert run(routes.find("nowhere.test")) == NoRoute(
        "failed", "domain nowhere.test does not exist", "5.1.2"
    )
    asked = len(dns_server.queries)
    relayed = Routes(hostname=HOSTNAME, lookups=lookups(dns_server), relay=("127.0.0.5", 587))
    assert run(relayed.find("nowhere.test")) == Route([("127.0.0.5", 587)])
    assert len(dns_server.queries) == asked  # the relay needs no DNS answer


# -- what replies mean ------------------------------------------------------------------


def test_replies_map_to_statuses_with_their_enhanced_codes() -> None:
    def outcome(code: int, text: str) -> tuple[str, str]:
        o = from_reply("bob@dest.test", SMTPResponse(code, text), "mx.dest.test[127.0.0.2]")
        return o.status, o.enhanced

    assert outcome(250, "2.0.0 Ok") == ("delivered", "2.0.0")
    assert outcome(550, "5.1.1 no such user") == ("failed", "5.1.1")
    assert outcome(554, "rejected") == ("failed", "5.0.0")
    assert outcome(451, "4.7.1 greylisted") == ("deferred", "4.7.1")
    # A code outside 2xx/4xx/5xx, or a text of another class: temporary, never a bounce.
    assert outcome(354, "go ahead") == ("deferred", "4.0.0")
    assert outcome(452, "5.2.2 mailbox full") == ("deferred", "4.0.0")
    assert enhanced_status(250, "2.1.5\n") == "2.1.5"


# -- log events --------------------------------------------------------------------------


def test_a_tls_fallback_is_one_json_event_on_stderr(
    dns_server: DNSServer, certificate: tuple[Path, Path]
) -> None:
    two_mx(dns_server)
    sink = Sink()
    context = server_tls(certificate)

    def broken() -> asyncio.BaseProtocol:
        return BrokenTLS(sink, hostname="mx1.example.test", tls_context=context)

    async def scenario() -> list[Outcome]:
        async with serving({"127.0.0.2": broken}) as port:
            target = smtp(dns_server, port)
            try:
                return await target.deliver(
                    sender=SENDER, recipients=["bob@example.test"], message=MESSAGE
                )
            finally:
                await target.close()

    stderr = io.StringIO()
    saved, sys.stderr = sys.stderr, stderr
    try:
        log.configure(json=True)  # as the daemon does, onto this stderr
        [outcome] = run(scenario())
    finally:
        sys.stderr = saved
        log.configure()  # back onto the test session's stderr
    assert outcome.status == "delivered"
    lines = [line for line in stderr.getvalue().splitlines() if line.strip()]
    events: list[dict[str, Any]] = [json.loads(line) for line in lines]  # every line is JSON
    [fallback] = [e for e in events if e["event"] == "tls_fallback"]
    assert fallback["level"] == "info"
    assert fallback["remote"] == "mx1.example.test[127.0.0.2]"
    assert "TLS with mx1.example.test[127.0.0.2] failed" in fallback["reason"]
