"""ARC sealing on delivery (smtpy.dkim.arc_seal, smtpy.outbound.prepare), verified
with dkimpy's ARC verifier against keys published on the loopback DNS server."""

from __future__ import annotations

import dkim
import pytest

from authworld import Key, dnsfunc_for, make_key, message
from dnsserver import DNSServer
from smtpy.dkim.arc_seal import seal
from smtpy.dkim.sign import Signer, SigningKey
from smtpy.outbound.prepare import outgoing

HOST = "mx.forwarder.test"


def signer_for(key: Key) -> Signer:
    return Signer(
        [SigningKey(key.domain, key.selector, key.generated.algorithm, key.generated.private_key)]
    )


def arc_verify(server: DNSServer, wire: bytes) -> tuple[bytes, list[dict[str, object]], str]:
    cv, results, reason = dkim.arc_verify(wire, dnsfunc=dnsfunc_for(server))
    return cv, results, reason


RESULTS = f"{HOST};\tspf=pass smtp.mailfrom=alice@sender.test;\tarc=none"


def received(results: str = RESULTS) -> bytes:
    """A stored message as receive leaves it: our Authentication-Results on top
    (the queue keeps `results` with it, for the seal)."""
    folded = results.replace(";\t", ";\r\n\t")
    return f"Authentication-Results: {folded}\r\n".encode() + message()


@pytest.fixture
def forwarder_key(dns_server: DNSServer) -> Key:
    key = make_key("example.test", "fwd")
    key.publish(dns_server)
    return key


def test_first_seal_verifies_with_cv_none(dns_server: DNSServer, forwarder_key: Key) -> None:
    data = received()
    signer = signer_for(forwarder_key)
    wire = outgoing(
        data,
        alias="team@example.test",
        signer=signer,
        sealer=signer,
        auth_results=RESULTS,
        from_display=None,
    )
    cv, results, reason = arc_verify(dns_server, wire)
    assert cv == b"pass", reason
    assert len(results) == 1
    text = wire.decode()
    assert text.startswith("ARC-Seal: i=1; cv=none; a=rsa-sha256; d=example.test; s=fwd;")
    assert "ARC-Authentication-Results: i=1; mx.forwarder.test;\r\n\tspf=pass" in text
    assert forwarder_key.generated.algorithm == "rsa"
    assert dkim.verify(wire, dnsfunc=dnsfunc_for(dns_server)), "the DKIM signature broke"
    # Changing a signed header breaks the chain: the verification above means something.
    tampered = wire.replace(b"Subject: Hello", b"Subject: Hellp")
    assert arc_verify(dns_server, tampered)[0] == b"fail"


def test_seal_over_an_existing_arc_set(dns_server: DNSServer, forwarder_key: Key) -> None:
    lists = make_key("lists.test", "arc")
    lists.publish(dns_server)
    first = lists.arc_sign(
        b"Authentication-Results: lists.test; dkim=pass; dmarc=pass\r\n" + message(),
        "lists.test",
    )
    assert arc_verify(dns_server, first)[0] == b"pass"
    data = f"Authentication-Results: {HOST}; dkim=none; arc=pass (lists.test)\r\n".encode() + first
    wire = seal(data, signer_for(forwarder_key).seal_key(), authserv_id=HOST) + data  # type: ignore[arg-type]
    assert wire.startswith(b"ARC-Seal: i=2; cv=pass;")
    cv, results, reason = arc_verify(dns_server, wire)
    assert cv == b"pass", reason
    assert sorted(int(r["instance"]) for r in results) == [1, 2]  # type: ignore[call-overload]
    assert {r["as-domain"] for r in results} == {b"lists.test", b"example.test"}


def test_a_broken_chain_is_sealed_with_cv_fail(dns_server: DNSServer, forwarder_key: Key) -> None:
    lists = make_key("lists.test", "arc")
    lists.publish(dns_server)
    first = lists.arc_sign(
        b"Authentication-Results: lists.test; dkim=pass\r\n" + message(), "lists.test"
    )
    data = f"Authentication-Results: {HOST}; arc=fail\r\n".encode() + first
    wire = seal(data, signer_for(forwarder_key).seal_key(), authserv_id=HOST) + data  # type: ignore[arg-type]
    assert wire.startswith(b"ARC-Seal: i=2; cv=fail;")
    # dkimpy ends its validation at a set that says cv=fail ("the chain is terminated").
    assert arc_verify(dns_server, wire)[0] is None
    # And a chain that already failed gets no further set (RFC 8617 §5.1).
    again = f"Authentication-Results: {HOST}; arc=fail\r\n".encode() + wire
    assert seal(again, signer_for(forwarder_key).seal_key(), authserv_id=HOST) == b""  # type: ignore[arg-type]


def test_nothing_sealed_without_our_results_or_an_rsa_key(dns_server: DNSServer) -> None:
    rsa = signer_for(make_key("example.test", "fwd"))
    key = rsa.seal_key()
    assert key is not None
    assert seal(message(), key, authserv_id=HOST) == b""  # no A-R of ours
    other = b"Authentication-Results: other.test; arc=none\r\n" + message()
    assert seal(other, key, authserv_id=HOST) == b""
    ed = signer_for(make_key("example.test", "ed", "ed25519"))
    assert ed.seal_key() is None  # RFC 8617 has rsa-sha256 only
    wire = outgoing(
        received(),
        alias="a@example.test",
        signer=ed,
        sealer=ed,
        auth_results=RESULTS,
        from_display=None,
    )
    assert wire.startswith(b"DKIM-Signature:")
    assert b"ARC-Seal" not in wire


def test_rewritten_from_is_signed_and_sealed(dns_server: DNSServer, forwarder_key: Key) -> None:
    results = f"{HOST}; dmarc=fail (p=reject); arc=none"
    data = (
        f"Authentication-Results: {results}\r\n"
        "X-Smtpy-From-Rewrite: yes (p=reject and no aligned DKIM signature)\r\n"
    ).encode() + message()
    signer = signer_for(forwarder_key)
    wire = outgoing(
        data,
        alias="team@example.test",
        signer=signer,
        sealer=signer,
        auth_results=results,
        from_display="{name} via smtpy",
    )
    assert b"\r\nFrom: Alice via smtpy <team@example.test>\r\n" in wire
    assert b"\r\nReply-To: Alice <alice@sender.test>\r\n" in wire
    assert b"\r\nX-Original-From: Alice <alice@sender.test>\r\n" in wire
    assert arc_verify(dns_server, wire)[0] == b"pass"
    assert dkim.verify(wire, dnsfunc=dnsfunc_for(dns_server))
    # Without a key of the alias domain the rewrite would not align: From stays.
    unsigned = outgoing(
        data,
        alias="team@example.test",
        signer=Signer([]),
        sealer=None,
        auth_results=results,
        from_display="{name} via smtpy",
    )
    assert unsigned == data


# -- inbound ARC validation agrees with dkimpy's ------------------------------------------


def chains(dns_server: DNSServer, forwarder_key: Key) -> dict[str, bytes]:
    """Messages with ARC chains, good and broken in the ways RFC 8617 §5.2 checks."""
    from authworld import make_key as key_for

    lists = key_for("lists.test", "arc")
    lists.publish(dns_server)
    key = signer_for(forwarder_key).seal_key()
    assert key is not None
    one = lists.arc_sign(
        b"Authentication-Results: lists.test; dkim=pass; dmarc=pass\r\n" + message(), "lists.test"
    )
    hop = f"Authentication-Results: {HOST}; arc=pass\r\n".encode() + one
    two = seal(hop, key, authserv_id=HOST) + hop
    hop_fail = f"Authentication-Results: {HOST}; arc=fail\r\n".encode() + one
    failed = seal(hop_fail, key, authserv_id=HOST) + hop_fail
    three = lists.arc_sign(b"Authentication-Results: lists.test; arc=pass\r\n" + two, "lists.test")
    no_seal = two[two.index(b"ARC-Message-Signature: i=2") :]  # without ARC-Seal i=2
    return {
        "one set": one,
        "two sets": two,
        "three sets": three,
        "body changed": two.replace(b"Hello there.", b"Hello where."),
        "subject changed under the old set only": one.replace(b"Subject: Hello", b"Subject: Hi"),
        "first cv changed": two.replace(b"ARC-Seal: i=1; cv=none", b"ARC-Seal: i=1; cv=pass"),
        "aar of set 1 changed": two.replace(b"lists.test; dkim=pass", b"lists.test; dkim=fail"),
        "cv=fail sealed": failed,
        "incomplete set": no_seal,
        "gap": two.replace(b"i=1;", b"i=3;"),
        "no chain": message(),
    }


def test_arc_validation_agrees_with_dkimpy(dns_server: DNSServer, forwarder_key: Key) -> None:
    from authworld import lookups_for, run
    from smtpy.checks.arc import verify_chain

    dnsfunc = dnsfunc_for(dns_server)
    outcomes = {}
    made = chains(dns_server, forwarder_key)
    assert len(set(made.values())) == len(made), "a tampering changed nothing"
    for name, data in made.items():
        cv, _results, _reason = dkim.arc_verify(data, dnsfunc=dnsfunc)
        expected = {b"pass": "pass", b"none": "none"}.get(cv or b"", "fail")
        chain = run(verify_chain(lookups_for(dns_server), data))
        outcomes[name] = chain.result
        assert chain.result == expected, (name, chain.reason)
    assert outcomes["two sets"] == outcomes["three sets"] == "pass"
    assert outcomes["body changed"] == outcomes["cv=fail sealed"] == "fail"
