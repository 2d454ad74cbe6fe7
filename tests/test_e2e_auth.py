"""End-to-end: inbound SPF/DKIM/DMARC/ARC checks and ARC sealing in the real daemon.

Sender domains publish SPF, DKIM and DMARC records on the loopback DNS server;
messages are signed here with dkimpy and keys made here. The daemon refuses a
DMARC p=reject failure at end of DATA, adds Authentication-Results to what it
forwards, ARC-seals it so that dkimpy's ARC verifier accepts the chain, and
rewrites From for a p=reject domain without an aligned DKIM signature.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from email import message_from_bytes, policy
from pathlib import Path

import dkim
import pytest

from authworld import dnsfunc_for, make_key, message
from conftest import Cli
from dnsserver import DNSServer
from mailpeers import DOMAIN, HOSTNAME, Forwarder, Received, forwarding_world, send, smtp_client

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.fixture
def forwarder(
    cli: Cli, cli_env: dict[str, str], dns_server: DNSServer, tmp_path: Path
) -> Iterator[Forwarder]:
    with forwarding_world(cli, cli_env, dns_server, tmp_path) as world:
        world.alias(f"team@{DOMAIN}", "bob@dest1.test")
        yield world


def new_id(domain: str) -> str:
    return f"<{uuid.uuid4().hex}@{domain}>"


def one(forwarder: Forwarder, message_id: str) -> Received:
    forwarder.peers.wait_for_ids([message_id])
    [got] = [r for r in forwarder.peers.received if r.message_id == message_id]
    return got


def unfolded(value: object) -> str:
    return " ".join(str(value).split())


def test_dmarc_reject_failure_gets_550_at_end_of_data(forwarder: Forwarder) -> None:
    forwarder.dns.add("strict.test", "TXT", "v=spf1 ip4:192.0.2.1 -all")
    forwarder.dns.add("_dmarc.strict.test", "TXT", "v=DMARC1; p=reject")
    daemon = forwarder.start()
    data = message(from_="Mallory <ceo@strict.test>")
    with smtp_client(daemon.port) as client:
        assert client.ehlo()[0] == 250
        assert client.mail("ceo@strict.test")[0] == 250
        assert client.rcpt(f"team@{DOMAIN}")[0] == 250
        code, reply = client.data(data)
    assert code == 550
    text = reply.decode()
    assert text.startswith("5.7.1 Rejected by the DMARC policy of strict.test (p=reject)")
    event = daemon.wait_event("auth_refused", lambda e: e["from_domain"] == "strict.test")
    assert (event["spf"], event["dmarc"], event["dkim"]) == ("fail", "fail", [])
    assert forwarder.peers.received == []


def test_a_domain_can_turn_the_dmarc_reject_policy_off(forwarder: Forwarder) -> None:
    forwarder.dns.add("strict.test", "TXT", "v=spf1 ip4:192.0.2.1 -all")
    forwarder.dns.add("_dmarc.strict.test", "TXT", "v=DMARC1; p=reject")
    forwarder.run("domain", "add", "strict-on.test")
    forwarder.alias("team@strict-on.test", "carol@dest2.test")
    shown = json.loads(forwarder.run("domain", "policy", DOMAIN, "--dmarc-reject", "off", "--json"))
    assert shown["dmarc_reject"] == "off"
    assert (
        json.loads(forwarder.run("domain", "show", "strict-on.test", "--json"))["dmarc_reject"]
        == "default"
    )
    daemon = forwarder.start()  # SMTPY_DMARC_REJECT defaults to on

    message_id = new_id("strict.test")
    data = message(from_="Mallory <ceo@strict.test>", message_id=message_id)
    with smtp_client(daemon.port) as client:
        assert client.ehlo()[0] == 250
        assert client.mail("ceo@strict.test")[0] == 250
        assert client.rcpt(f"team@{DOMAIN}")[0] == 250
        # Another policy: this recipient must come in a transaction of its own.
        code, reply = client.rcpt("team@strict-on.test")
        assert (code, reply[:5]) == (452, b"4.5.3")
        assert client.data(data)[0] == 250
        assert client.rset()[0] == 250
        assert client.mail("ceo@strict.test")[0] == 250
        assert client.rcpt("team@strict-on.test")[0] == 250
        code, reply = client.data(data)
        assert code == 550  # the default policy of the other domain still refuses it
    got = one(forwarder, message_id)
    assert got.rcpt_tos == ("bob@dest1.test",)
    results = message_from_bytes(got.data, policy=policy.default)["Authentication-Results"]
    assert "dmarc=fail" in unfolded(results)

    assert forwarder.cli("domain", "policy", DOMAIN, "--dmarc-reject", "maybe").code == 2


def test_passing_message_arrives_with_results_and_a_verifying_arc_set(
    forwarder: Forwarder,
) -> None:
    dns = forwarder.dns
    dns.add("sender.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    dns.add("_dmarc.sender.test", "TXT", "v=DMARC1; p=reject")
    author = make_key("sender.test", "s2026")
    author.publish(dns)
    daemon = forwarder.start()

    message_id = new_id("sender.test")
    forged = f"Authentication-Results: {HOSTNAME}; dmarc=pass; arc=pass"
    signed = author.sign(message(extra=(forged,), message_id=message_id))
    assert send(daemon.port, "alice@sender.test", [f"team@{DOMAIN}"], signed) == {}

    got = one(forwarder, message_id)
    parsed = message_from_bytes(got.data, policy=policy.default)
    [results] = parsed.get_all("Authentication-Results") or []  # the forged one is gone
    results_text = unfolded(results)
    assert results_text.startswith(f"{HOSTNAME}; spf=pass")
    assert "smtp.mailfrom=alice@sender.test" in results_text
    assert "dkim=pass header.d=sender.test header.s=s2026" in results_text
    assert "dmarc=pass (p=reject) header.from=sender.test" in results_text
    assert results_text.endswith("arc=none")
    assert str(parsed["From"]) == "Alice <alice@sender.test>"  # an aligned signature survives
    assert unfolded(parsed["X-Smtpy-From-Rewrite"]).startswith("no (an aligned DKIM signature")

    dnsfunc = dnsfunc_for(dns)
    cv, sets, reason = dkim.arc_verify(got.data, dnsfunc=dnsfunc)
    assert cv == b"pass", reason
    assert [s["as-domain"] for s in sets] == [DOMAIN.encode()]
    assert unfolded(parsed["ARC-Seal"]).startswith(f"i=1; cv=none; a=rsa-sha256; d={DOMAIN};")
    assert unfolded(parsed["ARC-Authentication-Results"]) == f"i=1; {results_text}"
    # Both DKIM signatures still verify: the author's (survived) and the forwarder's.
    for index in range(2):
        assert dkim.DKIM(got.data).verify(index, dnsfunc=dnsfunc), index


def test_forwarded_chain_gets_the_next_instance(forwarder: Forwarder) -> None:
    dns = forwarder.dns
    lists = make_key("lists.test", "arc")
    lists.publish(dns)
    dns.add("lists.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    daemon = forwarder.start()
    message_id = new_id("lists.test")
    original = message(from_="Carol <carol@lists.test>", message_id=message_id)
    first = lists.arc_sign(
        b"Authentication-Results: lists.test; spf=pass; dmarc=pass\r\n" + original, "lists.test"
    )
    assert send(daemon.port, "bounces@lists.test", [f"team@{DOMAIN}"], first) == {}
    got = one(forwarder, message_id)
    parsed = message_from_bytes(got.data, policy=policy.default)
    assert "arc=pass (lists.test)" in unfolded(parsed["Authentication-Results"])
    cv, sets, reason = dkim.arc_verify(got.data, dnsfunc=dnsfunc_for(dns))
    assert cv == b"pass", reason
    assert sorted((int(s["instance"]), s["as-domain"]) for s in sets) == [
        (1, b"lists.test"),
        (2, DOMAIN.encode()),
    ]
    assert unfolded(parsed["ARC-Seal"]).startswith("i=2; cv=pass;")


def test_from_rewritten_for_p_reject_domain_without_aligned_dkim(forwarder: Forwarder) -> None:
    dns = forwarder.dns
    # SPF aligns at our door (DMARC passes here), but SRS breaks it on the next hop.
    dns.add("bank.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    dns.add("_dmarc.bank.test", "TXT", "v=DMARC1; p=reject")
    esp = make_key("esp.test", "e1", "ed25519")  # a valid signature, but not aligned
    esp.publish(dns)
    daemon = forwarder.start()
    message_id = new_id("bank.test")
    data = esp.sign(message(from_="Bank Support <support@bank.test>", message_id=message_id))
    assert send(daemon.port, "support@bank.test", [f"team@{DOMAIN}"], data) == {}

    got = one(forwarder, message_id)
    parsed = message_from_bytes(got.data, policy=policy.default)
    assert str(parsed["From"]) == f"Bank Support via smtpy <team@{DOMAIN}>"
    assert str(parsed["Reply-To"]) == "Bank Support <support@bank.test>"
    assert str(parsed["X-Original-From"]) == "Bank Support <support@bank.test>"
    assert unfolded(parsed["X-Smtpy-From-Rewrite"]) == (
        "yes (p=reject and no aligned DKIM signature)"
    )
    results = unfolded(parsed["Authentication-Results"])
    assert "dmarc=pass (p=reject) header.from=bank.test" in results
    assert "dkim=pass header.d=esp.test" in results
    # The forwarder's signature aligns with the new From, and the ARC chain verifies.
    dnsfunc = dnsfunc_for(dns)
    assert dkim.verify(got.data, dnsfunc=dnsfunc)
    assert f"d={DOMAIN};" in unfolded((parsed.get_all("DKIM-Signature") or [""])[0])
    assert dkim.arc_verify(got.data, dnsfunc=dnsfunc)[0] == b"pass"


def test_configured_sealing_domain_seals_everything(forwarder: Forwarder) -> None:
    forwarder.run("domain", "add", "seal.test")
    for record in json.loads(forwarder.run("domain", "records", "seal.test", "--json")):
        forwarder.dns.add(record["name"], record["type"], record["value"])
    daemon = forwarder.start(arc_seal_domain="seal.test")
    message_id = new_id("nodns.test")
    data = message(from_="Dan <dan@nodns.test>", message_id=message_id)
    assert send(daemon.port, "dan@nodns.test", [f"team@{DOMAIN}"], data) == {}
    got = one(forwarder, message_id)
    parsed = message_from_bytes(got.data, policy=policy.default)
    assert " d=seal.test;" in " " + unfolded(parsed["ARC-Seal"])
    assert f"d={DOMAIN};" in unfolded(parsed["DKIM-Signature"])
    results = unfolded(parsed["Authentication-Results"])
    assert "spf=none" in results and "dmarc=none" in results
    assert dkim.arc_verify(got.data, dnsfunc=dnsfunc_for(forwarder.dns))[0] == b"pass"
