"""The RCPT decision for destinations awaiting confirmation (smtpy.checks.recipients), with
real alias rules: every final destination waiting → 450 4.2.1; some confirmed → accepted,
the waiting ones marked held; the waiting set of the domain whose rule names the address
decides, also through a nested alias."""

from __future__ import annotations

import asyncio

from smtpy.checks.recipients import Accepted, Decision, Refused, decide
from smtpy.route.aliases import AliasRule, DomainRules
from smtpy.route.srs import SRS
from smtpy.smtp import replies

SRS_ = SRS(secrets=(b"destinations test secret",), domain="mx.forwarder.test")


def rule(n: int, address: str, *destinations: str) -> AliasRule:
    local, _, domain = address.rpartition("@")
    return AliasRule(n, domain, "exact", local, destinations)


RULES = {
    "example.test": DomainRules.build(
        "example.test",
        [
            rule(1, "solo@example.test", "Bob@Dest.test"),
            rule(2, "duo@example.test", "carol@dest.test", "bob@dest.test"),
            rule(3, "nested@example.test", "inner@other.test"),
        ],
        unconfirmed=frozenset({"bob@dest.test"}),
    ),
    # Another organization's domain: bob is not waiting there.
    "other.test": DomainRules.build(
        "other.test", [rule(4, "inner@other.test", "bob@dest.test")], unconfirmed=frozenset()
    ),
}


def run(recipient: str) -> Decision:
    async def rules_for(domain: str) -> DomainRules | None:
        return RULES.get(domain)

    return asyncio.run(
        decide(
            recipient,
            rules_for=rules_for,
            srs=SRS_,
            srs_domain="mx.forwarder.test",
            plus_separator="+",
        )
    )


def test_only_waiting_destinations_get_450_at_rcpt() -> None:
    decision = run("solo@example.test")
    assert isinstance(decision, Refused)
    assert decision.reply == replies.AWAITING_CONFIRMATION and decision.reply.startswith(
        "450 4.2.1"
    )
    assert decision.reason == "unconfirmed" and decision.detail == "Bob@dest.test"


def test_a_confirmed_destination_accepts_and_the_waiting_one_is_held() -> None:
    decision = run("duo@example.test")
    assert isinstance(decision, Accepted)
    assert decision.destinations == ("carol@dest.test", "bob@dest.test")
    assert decision.held == frozenset({"bob@dest.test"})


def test_the_domain_whose_rule_names_the_address_decides() -> None:
    decision = run("nested@example.test")
    assert isinstance(decision, Accepted)
    assert decision.destinations == ("bob@dest.test",) and decision.held == frozenset()
