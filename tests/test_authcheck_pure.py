"""The pure parts of smtpy.authcheck: the From-rewrite rule and rewrite, the DMARC
decision, and the Authentication-Results field."""

from __future__ import annotations

import itertools
from email import message_from_bytes, policy

import pytest

from smtpy.checks.arc import ArcChain, ArcSet
from smtpy.checks.auth_results import authentication_results, remove_forged_results
from smtpy.checks.authentication import decide_action
from smtpy.checks.dkim import DkimResult
from smtpy.checks.dmarc import DmarcOutcome, evaluate, parse_record
from smtpy.checks.from_decision import decide, decision_field
from smtpy.checks.spf import SpfResult
from smtpy.outbound.from_rewrite import rewrite_from, wants_rewrite

# -- the From-rewrite rule: every combination ---------------------------------------------

POLICIES = [None, "none", "quarantine", "reject"]


@pytest.mark.parametrize(
    ("disposition", "aligned_dkim", "survives"),
    list(itertools.product(POLICIES, [False, True], [False, True])),
)
def test_from_rewrite_rule(disposition: str | None, aligned_dkim: bool, survives: bool) -> None:
    decision = decide(disposition=disposition, aligned_dkim=aligned_dkim, survives=survives)
    strict_policy = disposition in ("quarantine", "reject")
    assert decision.rewrite == (strict_policy and not (aligned_dkim and survives))
    if not strict_policy:
        assert "cannot make it fail" in decision.reason
    elif aligned_dkim and survives:
        assert decision.reason == "an aligned DKIM signature survives forwarding"
    else:
        assert f"p={disposition}" in decision.reason
    field = decision_field(decision)
    assert wants_rewrite(field + b"\r\nbody\r\n") == decision.rewrite


def test_only_the_first_decision_field_counts() -> None:
    data = b"X-Smtpy-From-Rewrite: no (x)\r\nX-Smtpy-From-Rewrite: yes (y)\r\n\r\nbody\r\n"
    assert not wants_rewrite(data)
    assert not wants_rewrite(b"Subject: x\r\n\r\nX-Smtpy-From-Rewrite: yes\r\n")


# -- the rewrite itself -------------------------------------------------------------------

HEAD = (
    b"Received: from a by b; Thu, 26 Nov 2026 10:00:00 +0000\r\n"
    b"From: =?utf-8?q?J=C3=BCrgen_M=C3=BCller?=\r\n <juergen@sender.test>\r\n"
    b"To: team@example.test\r\n"
    b"Subject: Hi\r\n"
)


def parse(data: bytes):  # type: ignore[no-untyped-def]
    return message_from_bytes(data, policy=policy.default)


def test_rewrite_keeps_the_author_in_reply_to_and_x_original_from() -> None:
    data = HEAD + b"\r\nBody\r\n"
    out = rewrite_from(data, address="team@example.test")
    parsed = parse(out)
    assert str(parsed["From"]) == "Jürgen Müller via smtpy <team@example.test>"
    assert str(parsed["Reply-To"]) == "Jürgen Müller <juergen@sender.test>"
    assert str(parsed["X-Original-From"]) == "Jürgen Müller <juergen@sender.test>"
    assert len(parsed.get_all("From")) == 1
    assert out.endswith(b"\r\n\r\nBody\r\n")
    assert out.startswith(b"Received: ")  # From stays where it was
    assert out.isascii()  # the new display name is RFC 2047 encoded


def test_rewrite_keeps_an_existing_reply_to_and_uses_the_address_without_a_name() -> None:
    data = (
        b"From: bob@sender.test\r\nReply-To: list@sender.test\r\n"
        b"X-Original-From: forged@evil.test\r\n\r\nBody\r\n"
    )
    parsed = parse(rewrite_from(data, address="a@example.test", display="{name} (forwarded)"))
    assert str(parsed["From"]) == '"bob@sender.test (forwarded)" <a@example.test>'
    assert str(parsed["Reply-To"]) == "list@sender.test"
    assert [str(v) for v in parsed.get_all("X-Original-From")] == ["bob@sender.test"]


def test_rewrite_of_a_message_without_from_changes_nothing() -> None:
    data = b"Subject: x\r\n\r\nBody\r\n"
    assert rewrite_from(data, address="a@example.test") is data


# -- the DMARC decision -------------------------------------------------------------------


def dkim_result(domain: str, result: str = "pass") -> DkimResult:
    return DkimResult(result, domain, "s", "rsa-sha256", "", "abc")  # type: ignore[arg-type]


def outcome(result: str = "fail", disposition: str | None = "reject") -> DmarcOutcome:
    return DmarcOutcome(result, "sender.test", disposition, False, False, "why")  # type: ignore[arg-type]


PASSING_ARC = ArcChain("pass", (ArcSet(1, "lists.test", b"lists.test; dmarc=pass"),), "ok")


@pytest.mark.parametrize(
    ("dmarc", "enabled", "arc", "temporary", "sampled", "expected"),
    [
        (outcome(), True, None, False, True, "550"),
        (outcome(), False, None, False, True, None),
        (outcome(disposition="quarantine"), True, None, False, True, None),
        (outcome("pass"), True, None, False, True, None),
        (outcome("none", None), True, None, False, True, None),
        (outcome(), True, PASSING_ARC, False, True, None),
        (outcome(), True, ArcChain("fail", PASSING_ARC.sets, "bad"), False, True, "550"),
        (outcome(), True, None, True, True, "451"),
        (outcome(), True, None, False, False, None),
    ],
)
def test_dmarc_decision(
    dmarc: DmarcOutcome,
    enabled: bool,
    arc: ArcChain | None,
    temporary: bool,
    sampled: bool,
    expected: str | None,
) -> None:
    reply, reason = decide_action(
        dmarc,
        reject_enabled=enabled,
        arc=arc,
        trusted_sealers={"lists.test"},
        temporary=temporary,
        sampled=sampled,
    )
    assert (reply[:3] if reply else None) == expected
    assert reason


def test_untrusted_or_non_passing_sealers_do_not_vouch() -> None:
    assert PASSING_ARC.vouches({"lists.test"}) == "lists.test"
    assert PASSING_ARC.vouches({"other.test"}) is None
    saw_fail = ArcChain("pass", (ArcSet(1, "lists.test", b"lists.test; dmarc=fail"),), "ok")
    assert saw_fail.vouches({"lists.test"}) is None


def test_dmarc_evaluation_alignment() -> None:
    from smtpy.checks.dmarc import DmarcPolicy

    relaxed = DmarcPolicy("sender.test", "sender.test", "reject", "reject", "r", "r", 100, "")
    strict = DmarcPolicy("sender.test", "sender.test", "reject", "reject", "s", "s", 100, "")
    spf_pass = SpfResult("pass", "mail.sender.test", "")
    sub_dkim = [dkim_result("mail.sender.test")]
    assert evaluate("sender.test", relaxed, spf=None, spf_domain="", dkim=sub_dkim).result == "pass"
    assert evaluate("sender.test", strict, spf=None, spf_domain="", dkim=sub_dkim).result == "fail"
    via_spf = evaluate("sender.test", relaxed, spf=spf_pass, spf_domain="mail.sender.test", dkim=[])
    assert (via_spf.result, via_spf.spf_aligned, via_spf.dkim_aligned) == ("pass", True, False)
    failed_sig = [dkim_result("sender.test", "fail"), dkim_result("esp.test")]
    assert evaluate("sender.test", relaxed, spf=None, spf_domain="", dkim=failed_sig).result == (
        "fail"
    )
    assert evaluate("sender.test", None, spf=None, spf_domain="", dkim=[]).result == "none"


def test_dmarc_record_parsing() -> None:
    assert parse_record("v=DMARC1; p=reject; pct=50") == {"v": "DMARC1", "p": "reject", "pct": "50"}
    assert parse_record("v=DMARC1 ; p=none") is not None
    assert parse_record("p=reject; v=DMARC1") is None
    assert parse_record("v=spf1 -all") is None


# -- Authentication-Results ---------------------------------------------------------------


def test_results_header_syntax_and_sanitizing() -> None:
    header = authentication_results(
        "mx.forwarder.test",
        spf=SpfResult("pass", "sender.test", "matched (ip4) \\ \x00"),
        mailfrom='"odd local"@sender.test',
        helo_spf=SpfResult("none", "mail.sender.test", ""),
        helo="mail.sender.test",
        dkim=[dkim_result("sender.test"), dkim_result("bad domain;", "fail")],
        dmarc=DmarcOutcome("pass", "sender.test", "reject", False, True, ""),
        arc=ArcChain("none", (), ""),
    )
    text = header.decode()
    assert text.endswith("\r\n") and "\r\n\t" in text
    unfolded = " ".join(text.split())
    assert unfolded.startswith(
        "Authentication-Results: mx.forwarder.test; spf=pass (matched ?ip4? ? ?)"
    )
    assert "smtp.mailfrom=sender.test;" in unfolded  # a quoted local part: the domain only
    assert "spf=none smtp.helo=mail.sender.test;" in unfolded
    assert "dkim=pass header.d=sender.test header.s=s header.b=abc;" in unfolded
    assert "dkim=fail header.s=s" in unfolded  # the unsafe domain is left out
    assert "dmarc=pass (p=reject) header.from=sender.test; arc=none" in unfolded


def test_only_results_claiming_our_name_are_removed() -> None:
    data = (
        b"Authentication-Results: (comment) MX.Forwarder.Test.; spf=pass\r\n"
        b"Authentication-Results: mx.forwarder.test.evil.test; spf=pass\r\n"
        b"authentication-results:mx.forwarder.test;\r\n dkim=pass\r\n"
        b"X-Smtpy-From-Rewrite: no (forged)\r\n"
        b"Subject: x\r\n\r\nAuthentication-Results: mx.forwarder.test; body\r\n"
    )
    out = remove_forged_results(data, "mx.forwarder.test")
    assert out == (
        b"Authentication-Results: mx.forwarder.test.evil.test; spf=pass\r\n"
        b"Subject: x\r\n\r\nAuthentication-Results: mx.forwarder.test; body\r\n"
    )
    untouched = b"Subject: x\r\n\r\nbody\r\n"
    assert remove_forged_results(untouched, "mx.forwarder.test") is untouched


@pytest.mark.parametrize(
    ("results", "passes"),
    [
        (b"i=1; lists.test; dmarc=pass", True),
        (b"i=1; l.test; DMARC = Pass (p=reject) header.from=x.test", True),
        (b'i=1; l.test; spf=pass smtp.mailfrom="x; dmarc=pass"@e.test; dmarc=fail', False),
        (b"i=1; l.test; spf=fail (x; dmarc=pass); dmarc=fail", False),
        (b"i=1; l.test; dmarc=passive", False),
        (b"i=1; l.test; spf=pass", False),
    ],
)
def test_what_counts_as_a_sealer_seeing_dmarc_pass(results: bytes, passes: bool) -> None:
    """Text a sender controls (quoted local parts, comments) never vouches."""
    from smtpy.checks.arc import reports_dmarc_pass

    assert reports_dmarc_pass(results) is passes
