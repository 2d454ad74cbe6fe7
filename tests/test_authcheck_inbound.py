"""DKIM verification, DMARC and the end-of-DATA verdict (smtpy.authcheck), against
records on the loopback DNS server and messages signed here with dkimpy."""

from __future__ import annotations

from email import message_from_bytes, policy

import pytest

from authworld import lookups_for, make_key, message, run
from dnsserver import DNSServer
from smtpy.checks.authentication import AuthPolicy, InboundChecker, Verdict, from_domain
from smtpy.checks.dkim import verify_signatures
from smtpy.checks.dmarc import aligned, lookup_policy, organizational_domain
from smtpy.dns import DNSTemporaryError

HOST = "mx.forwarder.test"
CLIENT = "192.0.2.10"


def check(
    server: DNSServer,
    content: bytes,
    *,
    sender: str = "alice@sender.test",
    helo: str = "mail.sender.test",
    client: str = CLIENT,
    **policy: object,
) -> Verdict:
    checker = InboundChecker(lookups_for(server), AuthPolicy(hostname=HOST, **policy))  # type: ignore[arg-type]

    async def go() -> Verdict:
        return await checker.check(
            content, spf=None, client_ip=client, helo=helo, sender=sender, queue_id="Q1"
        )

    return run(go())


def results_of(verdict: Verdict) -> str:
    """The Authentication-Results value, unfolded."""
    parsed = message_from_bytes(verdict.headers + verdict.message, policy=policy.default)
    return " ".join(str(parsed["Authentication-Results"]).split())


# -- DKIM ------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_dkim_pass_fail_and_missing_key(dns_server: DNSServer, algorithm: str) -> None:
    key = make_key("sender.test", "s1", algorithm)
    key.publish(dns_server)
    signed = key.sign(message())
    [result] = run(verify_signatures(lookups_for(dns_server), signed))
    assert (result.result, result.domain, result.selector) == ("pass", "sender.test", "s1")

    tampered = signed.replace(b"Hello there.", b"Hello where.")
    [result] = run(verify_signatures(lookups_for(dns_server), tampered))
    assert result.result == "fail"

    unpublished = make_key("other.test", "nokey", algorithm).sign(message())
    [result] = run(verify_signatures(lookups_for(dns_server), unpublished))
    assert result.result == "permerror"
    assert "no key" in result.reason


def test_every_signature_is_verified(dns_server: DNSServer) -> None:
    author = make_key("sender.test", "s1")
    esp = make_key("esp.test", "e1", "ed25519")
    author.publish(dns_server)
    esp.publish(dns_server)
    signed = esp.sign(author.sign(message()))
    results = run(verify_signatures(lookups_for(dns_server), signed))
    assert [(r.domain, r.result) for r in results] == [
        ("esp.test", "pass"),
        ("sender.test", "pass"),
    ]
    assert run(verify_signatures(lookups_for(dns_server), message())) == []


def test_dkim_key_timeout_is_temperror(dns_server: DNSServer) -> None:
    signed = make_key("slow.test", "s1", "ed25519").sign(message())
    dns_server.drop("s1._domainkey.slow.test")
    [result] = run(verify_signatures(lookups_for(dns_server, timeout=0.3), signed))
    assert result.result == "temperror"


# -- DMARC -----------------------------------------------------------------------------


def test_organizational_domain_and_alignment() -> None:
    assert organizational_domain("a.b.example.co.uk") == "example.co.uk"
    assert organizational_domain("mail.sender.test") == "sender.test"
    assert organizational_domain("co.uk") == "co.uk"
    assert aligned("mail.sender.test", "sender.test", "r")
    assert not aligned("mail.sender.test", "sender.test", "s")
    assert aligned("Sender.Test.", "sender.test", "s")
    assert not aligned("sender.test", "other.test", "r")
    assert not aligned("example.co.uk", "other.co.uk", "r")


def test_lookup_policy_direct_and_organizational(dns_server: DNSServer) -> None:
    lookups = lookups_for(dns_server)
    dns_server.add("_dmarc.sender.test", "TXT", "v=DMARC1; p=reject; sp=quarantine; adkim=s")
    direct = run(lookup_policy(lookups, "sender.test"))
    assert direct is not None
    assert (direct.disposition, direct.adkim, direct.aspf, direct.pct) == ("reject", "s", "r", 100)
    sub = run(lookup_policy(lookups, "news.sender.test"))
    assert sub is not None
    assert (sub.record_domain, sub.disposition) == ("sender.test", "quarantine")
    assert run(lookup_policy(lookups, "nothing.test")) is None
    dns_server.add("_dmarc.junk.test", "TXT", "v=spf1 -all")
    assert run(lookup_policy(lookups, "junk.test")) is None
    dns_server.drop("_dmarc.slow.test")
    with pytest.raises(DNSTemporaryError):
        run(lookup_policy(lookups_for(dns_server, timeout=0.3), "slow.test"))


def test_from_domain_needs_exactly_one() -> None:
    assert from_domain(message()) == ("sender.test", "")
    assert from_domain(message(extra=("From: other@else.test",)))[0] is None
    assert from_domain(b"To: x@y.test\r\n\r\nbody\r\n")[0] is None


# -- the verdict -----------------------------------------------------------------------


def publish_sender(server: DNSServer, dmarc: str = "v=DMARC1; p=reject") -> None:
    server.add("sender.test", "TXT", f"v=spf1 ip4:{CLIENT} -all")
    server.add("_dmarc.sender.test", "TXT", dmarc)


def test_passing_message_gets_one_results_header(dns_server: DNSServer) -> None:
    publish_sender(dns_server)
    key = make_key("sender.test", "s1")
    key.publish(dns_server)
    forged = f"Authentication-Results: {HOST.upper()}; dkim=pass; dmarc=pass"
    kept = "Authentication-Results: other.test; spf=fail"
    content = key.sign(message(extra=(forged, kept)))
    verdict = check(dns_server, content)
    assert verdict.reply is None
    results = results_of(verdict)
    assert results.startswith(f"{HOST}; spf=pass")
    assert "smtp.mailfrom=alice@sender.test" in results
    assert "dkim=pass header.d=sender.test header.s=s1" in results
    assert "dmarc=pass (p=reject) header.from=sender.test" in results
    assert results.endswith("arc=none")
    assert HOST.upper().encode() not in verdict.message, "the forged header was not removed"
    assert kept.encode() in verdict.message
    assert b"X-Smtpy-From-Rewrite: no (an aligned DKIM signature survives" in verdict.headers


def test_dmarc_reject_failure_is_refused(dns_server: DNSServer) -> None:
    publish_sender(dns_server)
    verdict = check(dns_server, message(), client="198.51.100.9")
    assert verdict.reply is not None
    assert verdict.reply.startswith("550 5.7.1 Rejected by the DMARC policy of sender.test")
    assert verdict.dmarc is not None and verdict.dmarc.result == "fail"
    # The same failure, with rejection turned off: marked only, and From will be rewritten.
    verdict = check(dns_server, message(), client="198.51.100.9", dmarc_reject=False)
    assert verdict.reply is None
    assert "dmarc=fail (p=reject)" in results_of(verdict)
    assert "spf=fail" in results_of(verdict)
    assert b"X-Smtpy-From-Rewrite: yes (p=reject and no aligned DKIM signature)" in (
        verdict.headers
    )


def test_quarantine_and_spf_fail_only_marked(dns_server: DNSServer) -> None:
    publish_sender(dns_server, "v=DMARC1; p=quarantine")
    verdict = check(dns_server, message(), client="198.51.100.9")
    assert verdict.reply is None
    assert "dmarc=fail (p=quarantine)" in results_of(verdict)


def test_spf_alone_passes_dmarc_but_from_is_rewritten(dns_server: DNSServer) -> None:
    """SPF aligns now, but SRS changes the envelope: only DKIM survives forwarding."""
    publish_sender(dns_server)
    verdict = check(dns_server, message())
    assert verdict.reply is None
    assert "dmarc=pass" in results_of(verdict)
    assert b"X-Smtpy-From-Rewrite: yes" in verdict.headers


def test_dmarc_reject_with_dkim_temperror_is_deferred(dns_server: DNSServer) -> None:
    publish_sender(dns_server)
    signed = make_key("sender.test", "gone", "ed25519").sign(message())
    dns_server.drop("gone._domainkey.sender.test")
    checker = InboundChecker(lookups_for(dns_server, timeout=0.3), AuthPolicy(hostname=HOST))

    async def go() -> Verdict:
        return await checker.check(
            signed,
            spf=None,
            client_ip="198.51.100.9",
            helo="h.test",
            sender="a@sender.test",
            queue_id="Q",
        )

    verdict = run(go())
    assert verdict.reply is not None and verdict.reply.startswith("451 4.7.5")


def test_trusted_arc_sealer_vouches_for_a_dmarc_failure(dns_server: DNSServer) -> None:
    publish_sender(dns_server)
    author = make_key("sender.test", "s1")
    author.publish(dns_server)
    lists = make_key("lists.test", "arc")
    lists.publish(dns_server)
    # The list saw the author's signature pass, then changed the subject and sealed.
    original = author.sign(message())
    at_list = b"Authentication-Results: lists.test; dkim=pass; dmarc=pass\r\n" + original
    changed = at_list.replace(b"Subject: Hello", b"Subject: [list] Hello")
    sealed = lists.arc_sign(changed, "lists.test")

    refused = check(dns_server, sealed, client="198.51.100.9", sender="bounce@lists.test")
    assert refused.reply is not None and refused.reply.startswith("550 5.7.1")
    assert refused.arc is not None and refused.arc.result == "pass"

    vouched = check(
        dns_server,
        sealed,
        client="198.51.100.9",
        sender="bounce@lists.test",
        trusted_sealers=frozenset({"lists.test"}),
    )
    assert vouched.reply is None
    results = results_of(vouched)
    assert "dkim=fail" in results and "dmarc=fail" in results
    assert "arc=pass (lists.test)" in results


def test_no_dns_at_all_is_none_everywhere(dns_server: DNSServer) -> None:
    verdict = check(dns_server, message(from_="a@nodns.test"), sender="a@nodns.test", helo="x")
    assert verdict.reply is None
    results = results_of(verdict)
    assert "spf=none" in results and "dmarc=none" in results and "dkim=none" in results
    assert b"X-Smtpy-From-Rewrite: no (no DMARC policy" in verdict.headers
