"""`smtpy route explain` through the real CLI, against the store and the loopback DNS server.

Nothing is sent: the explanation must say what the daemon would do — the rule,
the RCPT reply, the destinations, the SRS sender, the From decision, the MX
hosts and the TLS policy (an MTA-STS policy is served over HTTPS on loopback).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Cli
from dnsserver import DNSServer
from testca import HttpsServer, TestCA

SRS0 = re.compile(r"^SRS0=[^=@]{4}=[A-Z2-7]{2}=sender\.test=alice@mx\.forwarder\.test$")


@pytest.fixture
def world(cli: Cli, dns_server: DNSServer, store_url: str) -> Cli:
    """Domain and aliases written with the admin core the CLI calls (faster than 8 commands)."""
    from smtpy.admin.aliases import AliasCreate, AliasUpdate, add_alias, update_alias
    from smtpy.admin.domains import DomainCreate, add_domain
    from smtpy.admin.organizations import resolve_organization
    from smtpy.store.db import Database

    with Database(store_url) as db:
        org = resolve_organization(db=db).id
        add_domain(
            db=db, org=org, domain=DomainCreate(name="example.test", key_algorithm="ed25519")
        )
        for address, destinations in (
            ("team@example.test", ["bob@dest1.test", "carol@example.test"]),
            ("carol@example.test", ["carol@dest2.test"]),
            ("/sales-[0-9]+/@example.test", ["sales@dest1.test"]),
            ("*@example.test", ["catchall@dest1.test"]),
            ("gone@example.test", ["gone@dest1.test"]),
        ):
            add_alias(db=db, org=org, alias=AliasCreate(address=address, destinations=destinations))
        update_alias(db=db, org=org, address="gone@example.test", update=AliasUpdate(enabled=False))
        add_alias(
            db=db,
            org=org,
            alias=AliasCreate(
                address="noise@example.test", mode="reject", reject_message="Go away"
            ),
        )
    for domain, host, address in (
        ("dest1.test", "mx.dest1.test", "127.0.0.2"),
        ("dest2.test", "mx.dest2.test", "127.0.0.3"),
    ):
        dns_server.add(domain, "MX", f"10 {host}.")
        dns_server.add(host, "A", address)
    return cli


def explain(cli: Cli, *args: str) -> dict[str, Any]:
    result = cli("route", "explain", *args, "--json")
    assert result.code == 0, result.stderr
    data = json.loads(result.stdout)
    assert isinstance(data, dict)
    return data


def test_exact_alias_with_sender(world: Cli, dns_server: DNSServer) -> None:
    dns_server.add("_dmarc.sender.test", "TXT", "v=DMARC1; p=reject")
    got = explain(world, "team@example.test", "--from", "alice@sender.test")
    assert got["accepted"] is True
    assert got["reply"] == "250 2.1.5 Recipient OK"
    assert got["rule"]["alias"] == "team@example.test"
    assert got["rule"]["how"] == "exact"
    # carol@example.test is itself an alias: resolved further, as the daemon does.
    assert got["destinations"] == ["bob@dest1.test", "carol@dest2.test"]
    assert SRS0.match(got["envelope_sender"]), got["envelope_sender"]
    rewrite = got["from_rewrite"]
    assert rewrite["from_domain"] == "sender.test"
    assert rewrite["dmarc"].startswith("p=reject")
    assert rewrite["without_aligned_dkim"].startswith("rewritten")
    assert rewrite["with_aligned_dkim"].startswith("kept")
    assert rewrite["decided"] == "per message"
    routes = {r["domain"]: r for r in got["routes"]}
    assert set(routes) == {"dest1.test", "dest2.test"}
    assert routes["dest1.test"]["hosts"] == [
        {
            "host": "mx.dest1.test",
            "port": 25,
            "addresses": ["127.0.0.2"],
            "error": None,
            "allowed_by_policy": True,
        }
    ]
    assert routes["dest2.test"]["recipients"] == ["carol@dest2.test"]
    tls = routes["dest1.test"]["tls"]
    assert tls["mode"] == "opportunistic"
    assert "publishes no MTA-STS policy" in tls["reason"]


def test_srs_address_is_a_bounce_on_its_way_back(world: Cli) -> None:
    srs_address = explain(world, "team@example.test", "--from", "alice@sender.test")[
        "envelope_sender"
    ]
    got = explain(world, srs_address, "--from", "")
    assert got["accepted"] is True
    assert got["srs_reversed"] is True
    assert got["rule"] is None
    assert got["destinations"] == ["alice@sender.test"]
    assert got["envelope_sender"] == ""  # a bounce keeps its null sender
    assert got["from_rewrite"] is None

    forged = srs_address.replace("SRS0=", "SRS0=x", 1)
    assert explain(world, forged)["reply"] == "550 5.1.1 Invalid or expired SRS address"


def test_sender_without_dmarc_policy_keeps_from(world: Cli) -> None:
    got = explain(world, "team@example.test", "--from", "alice@sender.test")
    assert got["from_rewrite"]["dmarc"] is None
    assert got["from_rewrite"]["without_aligned_dkim"].startswith("kept: no DMARC policy")


@pytest.mark.parametrize(
    ("address", "how", "alias", "destinations"),
    [
        (
            "team+news@example.test",
            "plus",
            "team@example.test",
            ["bob@dest1.test", "carol@dest2.test"],
        ),
        ("sales-42@example.test", "regex", "/sales-[0-9]+/@example.test", ["sales@dest1.test"]),
        ("anyone@example.test", "catchall", "*@example.test", ["catchall@dest1.test"]),
    ],
)
def test_rule_kinds(
    world: Cli, address: str, how: str, alias: str, destinations: list[str]
) -> None:
    got = explain(world, address)
    assert (got["rule"]["how"], got["rule"]["alias"], got["destinations"]) == (
        how,
        alias,
        destinations,
    )
    assert got["envelope_sender"] is None and got["from_rewrite"] is None


@pytest.mark.parametrize(
    ("address", "reply", "alias"),
    [
        (
            "gone@example.test",
            "550 5.2.1 Recipient address rejected: mailbox disabled",
            "gone@example.test",
        ),
        ("noise@example.test", "550 5.7.1 Go away", "noise@example.test"),
        (
            "someone@elsewhere.test",
            "550 5.7.1 Relaying denied: this server does not serve that domain",
            None,
        ),
    ],
)
def test_refusals_show_the_exact_reply(
    world: Cli, address: str, reply: str, alias: str | None
) -> None:
    got = explain(world, address)
    assert got["accepted"] is False
    assert got["reply"] == reply
    assert (got["rule"] or {}).get("alias") == alias
    assert got["routes"] == []


def test_bad_sender_is_refused_at_mail_from(world: Cli) -> None:
    got = explain(world, "team@example.test", "--from", "not an address")
    assert got["accepted"] is False
    assert got["reply"].startswith("501 5.1.7")


@pytest.mark.parametrize("address", ["not an address", "alice@", "@example.test"])
def test_a_recipient_that_is_no_address_is_bad_input(world: Cli, address: str) -> None:
    result = world("route", "explain", address)
    assert result.code == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("smtpy: error: ") and repr(address) in line
    assert result.stdout == ""


def test_null_mx_and_missing_domain(world: Cli, dns_server: DNSServer) -> None:
    assert world("alias", "add", "x@example.test", "x@nullmx.test").code == 0
    dns_server.add("nullmx.test", "MX", "0 .")
    [route] = explain(world, "x@example.test")["routes"]
    assert route["hosts"] == []
    assert "null MX" in route["error"]


def test_required_tls_setting_shows(world: Cli) -> None:
    cli = Cli({**world.env, "SMTPY_TLS_REQUIRED_DOMAINS": "dest1.test"})
    got = explain(cli, "sales-1@example.test")
    assert got["routes"][0]["tls"]["mode"] == "required"
    assert "SMTPY_TLS_REQUIRED_DOMAINS" in got["routes"][0]["tls"]["reason"]


@pytest.fixture
def policy_server(tmp_path: Path) -> Iterator[tuple[TestCA, HttpsServer]]:
    ca = TestCA(tmp_path / "ca")
    with HttpsServer(ca, ["mta-sts.dest1.test"]) as server:
        yield ca, server


def test_mta_sts_enforce_policy_and_mx_outside_it(
    world: Cli, dns_server: DNSServer, policy_server: tuple[TestCA, HttpsServer]
) -> None:
    ca, server = policy_server
    server.bodies["mta-sts.dest1.test"] = (
        "200 OK",
        "text/plain",
        "version: STSv1\nmode: enforce\nmx: mx.dest1.test\nmax_age: 86400\n",
    )
    dns_server.add("_mta-sts.dest1.test", "TXT", "v=STSv1; id=2026;")
    dns_server.add("mta-sts.dest1.test", "A", "127.0.0.10")
    dns_server.add("dest1.test", "MX", "20 backup.other.test.")
    dns_server.add("backup.other.test", "A", "127.0.0.9")
    cli = Cli(
        {**world.env, "SMTPY_TLS_CA_FILE": str(ca.ca_file), "SMTPY_MTA_STS_PORT": str(server.port)}
    )

    [route] = explain(cli, "sales-7@example.test")["routes"]
    assert route["tls"]["mode"] == "enforce"
    assert route["tls"]["mx_patterns"] == ["mx.dest1.test"]
    assert route["tls"]["max_age"] == 86400
    allowed = {h["host"]: h["allowed_by_policy"] for h in route["hosts"]}
    assert allowed == {"mx.dest1.test": True, "backup.other.test": False}

    text = cli("route", "explain", "sales-7@example.test")
    assert text.code == 0, text.stderr
    assert "enforce: MTA-STS policy of dest1.test (id 2026) in mode enforce" in text.stdout
    assert "not in the MTA-STS policy: skipped" in text.stdout
    assert "/sales-[0-9]+/@example.test (regex, forward)" in text.stdout
