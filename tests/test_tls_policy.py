"""Outbound TLS policy: MTA-STS (RFC 8461) and required TLS, against real peers.

The destination publishes `_mta-sts.dest.test` on the loopback DNS server, its
policy is served over HTTPS on 127.0.0.10 with a certificate from a test CA,
and its MX host on 127.0.0.2 is an aiosmtpd server with or without STARTTLS.
The pure parsing and matching functions are tested on their own first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import Cli
from dnsserver import DNSServer
from mailpeers import forwarding_world, send
from smtpy.dns import Lookups, make_resolver
from smtpy.errors import ConfigError
from smtpy.outbound.smtp_target import SmtpTarget
from smtpy.outbound.target import Outcome
from smtpy.outbound.tls_policy import (
    MtaStsError,
    StsPolicy,
    TlsPolicies,
    decide,
    mx_matches,
    parse_policy,
    parse_txt,
)
from test_deliver import MESSAGE, SENDER, Sink, serving, smtp_server
from testca import HttpsServer, TestCA

DOMAIN = "dest.test"
MX_HOST = "mx.dest.test"
MX_ADDRESS = "127.0.0.2"
POLICY_ADDRESS = "127.0.0.10"
RECIPIENT = f"bob@{DOMAIN}"

ENFORCE = f"version: STSv1\nmode: enforce\nmx: {MX_HOST}\nmax_age: 86400\n"
TESTING = f"version: STSv1\nmode: testing\nmx: {MX_HOST}\nmax_age: 86400\n"


# -- pure functions ------------------------------------------------------------------


def test_txt_record_names_the_policy_id() -> None:
    assert parse_txt(["v=STSv1; id=20260101T000000;"]) == "20260101T000000"
    assert parse_txt(["v=spf1 -all", "v=STSv1;id=abc"]) == "abc"
    assert parse_txt([]) is None
    assert parse_txt(["v=STSv1; id=a", "v=STSv1; id=b"]) is None  # not exactly one
    assert parse_txt(["v=STSv1; id=not-alnum"]) is None
    assert parse_txt(["v=STSv1; id=" + "a" * 33]) is None
    assert parse_txt(["v=STSv2; id=abc"]) is None


def test_policy_parses_and_says_what_is_wrong() -> None:
    policy = parse_policy(
        "version: STSv1\r\nmode: enforce\r\nmx: MX1.dest.test.\r\nmx: *.backup.test\r\n"
        "max_age: 604800\r\nextension: ignored\r\n",
        "id1",
    )
    assert policy == StsPolicy("enforce", ("mx1.dest.test", "*.backup.test"), 604800, "id1")
    assert parse_policy("version: STSv1\nmode: none\nmax_age: 0\n").mode == "none"
    for text, complaint in [
        ("mode: enforce\nmx: a.test\nmax_age: 1\n", "version"),
        ("version: STSv1\nmode: strict\nmx: a.test\nmax_age: 1\n", "mode"),
        ("version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 31557601\n", "max_age"),
        ("version: STSv1\nmode: enforce\nmx: a.test\nmax_age: -1\n", "max_age"),
        ("version: STSv1\nmode: testing\nmax_age: 10\n", "mx"),
        ("version: STSv1\njunk\n", "key: value"),
    ]:
        with pytest.raises(MtaStsError, match=complaint):
            parse_policy(text)


def test_mx_patterns_match_one_label_of_wildcard() -> None:
    patterns = ["mail.dest.test", "*.backup.test"]
    assert mx_matches("MAIL.dest.test.", patterns)
    assert mx_matches("mx1.backup.test", patterns)
    assert not mx_matches("backup.test", patterns)
    assert not mx_matches("a.b.backup.test", patterns)
    assert not mx_matches("evil-mail.dest.test", patterns)


def test_policy_decision_combines_setting_and_mta_sts() -> None:
    enforce = StsPolicy("enforce", ("mx.d.test",), 60, "x")
    testing = StsPolicy("testing", ("mx.d.test",), 60, "x")
    none = StsPolicy("none", (), 60, "x")
    assert decide("d.test", required=False, sts=None).mode == "opportunistic"
    assert decide("d.test", required=True, sts=None).mode == "required"
    assert decide("d.test", required=True, sts=enforce).mode == "enforce"
    assert decide("d.test", required=True, sts=testing).mode == "required"
    assert decide("d.test", required=False, sts=testing).mode == "testing"
    assert decide("d.test", required=False, sts=none).mode == "opportunistic"
    assert decide("d.test", required=False, sts=enforce).mandatory
    assert not decide("d.test", required=False, sts=testing).mandatory


def test_required_domains_setting_takes_domains() -> None:
    from smtpy.config import load

    env = {"SMTPY_HOSTNAME": "mx.fwd.test", "SMTPY_TLS_REQUIRED_DOMAINS": "Bank.Test, bücher.test"}
    settings = load(environ=env).settings
    assert settings.tls_required_domains == ["bank.test", "xn--bcher-kva.test"]
    with pytest.raises(ConfigError, match="tls_required_domains"):
        load(environ={**env, "SMTPY_TLS_REQUIRED_DOMAINS": "bad..name"})


# -- the world: policy server, MX host, DNS -------------------------------------------


@dataclass
class World:
    dns: DNSServer
    ca: TestCA
    policy_server: HttpsServer

    def publish(self, policy: str | None, *, policy_id: str = "1") -> None:
        self.dns.remove(f"_mta-sts.{DOMAIN}")
        if policy is None:
            return
        # TTL 0: the resolver cache must not hide a changed id from the next lookup.
        self.dns.add(f"_mta-sts.{DOMAIN}", "TXT", f"v=STSv1; id={policy_id};", ttl=0)
        self.policy_server.bodies[f"mta-sts.{DOMAIN}"] = ("200 OK", "text/plain", policy)

    def policies(self, **options: Any) -> TlsPolicies:
        return TlsPolicies(
            self.lookups(),
            port=self.policy_server.port,
            ca_file=self.ca.ca_file,
            timeout=5,
            **options,
        )

    def lookups(self) -> Lookups:
        return Lookups(make_resolver([("127.0.0.1", self.dns.port)], timeout=2.0))

    def deliverer(self, mx_port: int, **options: Any) -> SmtpTarget:
        return SmtpTarget(
            hostname="fwd.test",
            lookups=self.lookups(),
            port=mx_port,
            connect_timeout=2.0,
            command_timeout=5.0,
            tls_policies=self.policies(**options),
            tls_ca_file=str(self.ca.ca_file),
        )


@pytest.fixture
def world(dns_server: DNSServer, tmp_path: Path) -> Iterator[World]:
    dns_server.add(DOMAIN, "MX", f"10 {MX_HOST}.")
    dns_server.add(MX_HOST, "A", MX_ADDRESS)
    dns_server.add(f"mta-sts.{DOMAIN}", "A", POLICY_ADDRESS)
    ca = TestCA(tmp_path / "ca")
    with HttpsServer(ca, [f"mta-sts.{DOMAIN}"], POLICY_ADDRESS) as server:
        yield World(dns_server, ca, server)


@contextlib.asynccontextmanager
async def running(
    world: World, mx: Sink, *, starttls: bool, trusted: bool = True
) -> AsyncIterator[int]:
    """The MX host, with or without STARTTLS; yields its port."""
    mx_cert = world.ca.issue([MX_HOST], self_signed=not trusted)
    options: dict[str, Any] = {}
    if starttls:
        options = {"tls_context": TestCA.server_context(*mx_cert), "require_starttls": False}
    async with serving({MX_ADDRESS: smtp_server(mx, MX_HOST, **options)}) as port:
        yield port


def deliver(
    world: World, *, starttls: bool, trusted: bool = True, **options: Any
) -> tuple[Outcome, Sink]:
    sink = Sink()

    async def scenario() -> Outcome:
        async with running(world, sink, starttls=starttls, trusted=trusted) as port:
            [outcome] = await world.deliverer(port, **options).deliver(
                sender=SENDER, recipients=[RECIPIENT], message=MESSAGE
            )
            return outcome

    return asyncio.run(asyncio.wait_for(scenario(), 30)), sink


# -- MTA-STS enforce -----------------------------------------------------------------


def test_enforce_with_a_valid_certificate_delivers_over_tls(world: World) -> None:
    world.publish(ENFORCE)
    outcome, sink = deliver(world, starttls=True)
    assert outcome.status == "delivered", outcome
    [received] = sink.received
    assert received.tls
    assert world.policy_server.requests == [
        f"mta-sts.{DOMAIN} GET /.well-known/mta-sts.txt HTTP/1.0"
    ]


def test_enforce_without_starttls_defers_and_never_sends_in_clear(world: World) -> None:
    world.publish(ENFORCE)
    outcome, sink = deliver(world, starttls=False)
    assert outcome.status == "deferred"
    assert outcome.enhanced == "4.7.4"
    assert "does not offer STARTTLS" in outcome.reply
    assert f"MTA-STS policy of {DOMAIN}" in outcome.reply and "enforce" in outcome.reply
    assert sink.received == []


def test_enforce_with_an_untrusted_certificate_defers(world: World) -> None:
    world.publish(ENFORCE)
    outcome, sink = deliver(world, starttls=True, trusted=False)
    assert outcome.status == "deferred"
    assert outcome.enhanced == "4.7.4"
    assert "certificate verify failed" in outcome.reply
    assert "not sent in clear" in outcome.reply
    assert sink.received == []


def test_enforce_skips_mx_hosts_outside_the_policy(world: World) -> None:
    world.publish(ENFORCE.replace(f"mx: {MX_HOST}", "mx: *.elsewhere.test"))
    outcome, sink = deliver(world, starttls=True)
    assert outcome.status == "deferred"
    assert outcome.enhanced == "4.7.4"
    assert "matches its MTA-STS policy" in outcome.reply and "*.elsewhere.test" in outcome.reply
    assert sink.received == []


# -- MTA-STS testing, required TLS, no usable policy ------------------------------------


def test_testing_mode_delivers_even_without_tls(world: World) -> None:
    world.publish(TESTING)
    outcome, sink = deliver(world, starttls=False)
    assert outcome.status == "delivered", outcome
    [received] = sink.received
    assert not received.tls


def test_testing_mode_with_a_bad_certificate_still_delivers(world: World) -> None:
    world.publish(TESTING)
    outcome, sink = deliver(world, starttls=True, trusted=False)
    assert outcome.status == "delivered", outcome
    [received] = sink.received
    assert received.tls  # verified TLS failed, opportunistic TLS went on


def test_required_domain_needs_tls_with_a_valid_certificate(world: World) -> None:
    world.publish(None)
    outcome, sink = deliver(world, starttls=False, required_domains=[DOMAIN])
    assert outcome.status == "deferred"
    assert "SMTPY_TLS_REQUIRED_DOMAINS" in outcome.reply
    assert sink.received == []

    outcome, sink = deliver(world, starttls=True, required_domains=[DOMAIN])
    assert outcome.status == "delivered"
    assert sink.received[0].tls


@pytest.mark.parametrize(
    ("status", "media_type"),
    [("404 Not Found", "text/plain"), ("301 Moved", "text/plain"), ("200 OK", "text/html")],
)
def test_policy_that_cannot_be_fetched_means_opportunistic(
    world: World, status: str, media_type: str
) -> None:
    world.publish(ENFORCE)
    world.policy_server.bodies[f"mta-sts.{DOMAIN}"] = (status, media_type, ENFORCE)
    outcome, sink = deliver(world, starttls=False)
    assert outcome.status == "delivered", outcome
    assert len(sink.received) == 1
    assert len(world.policy_server.requests) == 1  # the redirect was not followed


def test_policy_cached_until_its_id_changes(world: World) -> None:
    world.publish(ENFORCE, policy_id="one")

    async def scenario() -> list[str]:
        async with running(world, Sink(), starttls=True):
            policies = world.policies(recheck=0)
            modes: list[str] = [(await policies.for_domain(DOMAIN)).mode for _ in range(3)]
            # The TXT record goes away: the cached policy stays in force (RFC 8461 §5.1).
            world.publish(None)
            modes.append((await policies.for_domain(DOMAIN)).mode)
            world.publish(TESTING, policy_id="two")
            modes.append((await policies.for_domain(DOMAIN)).mode)
            return modes

    modes = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert modes == ["enforce", "enforce", "enforce", "enforce", "testing"]
    assert len(world.policy_server.requests) == 2


# -- through the real daemon ------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_daemon_defers_under_enforce_and_delivers_under_testing(
    cli: Cli, cli_env: dict[str, str], dns_server: DNSServer, tmp_path: Path
) -> None:
    """dest1.test enforces MTA-STS, dest2.test only tests it; their MX hosts offer no STARTTLS."""
    ca = TestCA(tmp_path / "ca")
    with (
        forwarding_world(cli, cli_env, dns_server, tmp_path) as world,
        HttpsServer(ca, ["mta-sts.dest1.test", "mta-sts.dest2.test"]) as https,
    ):
        for domain, mode in (("dest1.test", "enforce"), ("dest2.test", "testing")):
            dns_server.add(f"_mta-sts.{domain}", "TXT", "v=STSv1; id=1;")
            dns_server.add(f"mta-sts.{domain}", "A", "127.0.0.10")
            https.bodies[f"mta-sts.{domain}"] = (
                "200 OK",
                "text/plain",
                f"version: STSv1\nmode: {mode}\nmx: mx.{domain}\nmax_age: 600\n",
            )
        world.alias("team@example.test", "bob@dest1.test", "carol@dest2.test")
        daemon = world.start(
            tls_ca_file=str(ca.ca_file), mta_sts_port=str(https.port), retry_schedule="3600"
        )
        assert send(daemon.port, "alice@sender.test", ["team@example.test"], MESSAGE) == {}

        [received] = world.peers.wait_for(lambda got: got)
        assert received.rcpt_tos == ("carol@dest2.test",)
        deferred = daemon.wait_event("deferred")
        assert deferred["recipient"] == "bob@dest1.test"
        assert "does not offer STARTTLS" in deferred["reply"]
        assert "MTA-STS policy of dest1.test" in deferred["reply"]
        assert [r.rcpt_tos for r in world.peers.received] == [("carol@dest2.test",)]
