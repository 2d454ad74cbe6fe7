"""RCPT-time decisions (smtpy.checks.recipients) with real alias rules and a real SRS."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from smtpy.checks.recipients import MAX_DEPTH, Accepted, Decision, Refused, decide
from smtpy.route.aliases import AliasRule, DomainRules, Kind, Mode
from smtpy.route.srs import SRS

HOSTNAME = "mx.forwarder.test"
SRS_ = SRS(secrets=(b"recipients test secret",), domain=HOSTNAME)
_ids = itertools.count(1)


def rule(
    address: str,
    *destinations: str,
    kind: Kind = "exact",
    mode: Mode = "forward",
    message: str | None = None,
    enabled: bool = True,
) -> AliasRule:
    local, _, domain = address.rpartition("@")
    return AliasRule(
        id=next(_ids),
        domain=domain,
        kind=kind,
        local_part=local,
        destinations=destinations,
        mode=mode,
        reject_message=message,
        enabled=enabled,
    )


def chain(length: int) -> list[AliasRule]:
    """hop0 → hop1 → … → hop{length} → end@dest.test, all on chain.test."""
    rules = [rule(f"hop{n}@chain.test", f"hop{n + 1}@chain.test") for n in range(length)]
    rules.append(rule(f"hop{length}@chain.test", "end@dest.test"))
    return rules


RULES = {
    "example.test": DomainRules.build(
        "example.test",
        [
            rule("alice@example.test", "alice@dest.test"),
            rule("team@example.test", "a@dest.test", "b@dest.test", "A@Dest.test"),
            rule("off@example.test", "off@dest.test", enabled=False),
            rule("gone@example.test", mode="reject"),
            rule("closed@example.test", mode="reject", message="This address is closed"),
            rule("null@example.test", mode="discard"),
            rule("chain@example.test", "bob@other.test"),
            rule("mixed@example.test", "bob@other.test", "carol@dest.test", "null@example.test"),
            rule("diamond@example.test", "left@example.test", "right@example.test"),
            rule("left@example.test", "shared@other.test"),
            rule("right@example.test", "shared@other.test", "right@dest.test"),
            rule("twice@example.test", "shared@other.test", "SHARED@other.test"),
            rule("ping@example.test", "pong@other.test"),
            rule("ghost@example.test", "nobody@other.test"),
            rule("tohidden@example.test", "off@example.test"),
            rule("torejected@example.test", "gone@example.test"),
            rule("todiscard@example.test", "null@example.test"),
            rule("^sales-[0-9]+$@example.test", "sales@dest.test", kind="regex"),
        ],
    ),
    "other.test": DomainRules.build(
        "other.test",
        [
            rule("bob@other.test", "bob@dest.test"),
            rule("shared@other.test", "shared@dest.test"),
            rule("pong@other.test", "ping@example.test"),
        ],
    ),
    "catchall.test": DomainRules.build(
        "catchall.test",
        [
            rule("*@catchall.test", "loop@catchall.test", kind="catchall"),
        ],
    ),
    "chain.test": DomainRules.build("chain.test", chain(MAX_DEPTH + 1)),
}


async def _rules_for(domain: str) -> DomainRules | None:
    return RULES.get(domain)


def run(recipient: str, *, plus: str = "+", srs: SRS | None = SRS_) -> Decision:
    return asyncio.run(
        decide(recipient, rules_for=_rules_for, srs=srs, srs_domain=HOSTNAME, plus_separator=plus)
    )


def accepted(recipient: str, **kwargs: object) -> Accepted:
    decision = run(recipient, **kwargs)  # type: ignore[arg-type]
    assert isinstance(decision, Accepted), decision
    return decision


def refused(recipient: str, **kwargs: object) -> Refused:
    decision = run(recipient, **kwargs)  # type: ignore[arg-type]
    assert isinstance(decision, Refused), decision
    return decision


def test_exact_alias_is_accepted_with_its_destination() -> None:
    decision = accepted("<Alice@Example.TEST>")
    assert decision.original == "Alice@example.test"
    assert decision.alias_domain == "example.test"
    assert decision.destinations == ("alice@dest.test",)
    assert decision.how == "exact"
    assert decision.alias == "alice@example.test"
    assert not decision.srs_reversed


def test_plus_tag_and_regex_are_resolved() -> None:
    plus = accepted("alice+news@example.test")
    assert (plus.how, plus.destinations) == ("plus", ("alice@dest.test",))
    assert refused("alice+news@example.test", plus="").reason == "unknown_user"
    regex = accepted("Sales-42@example.test")
    assert (regex.how, regex.destinations) == ("regex", ("sales@dest.test",))


def test_several_destinations_each_once_in_order() -> None:
    # A@Dest.test and a@dest.test are kept apart: local parts are only compared
    # case-insensitively on our own domains; elsewhere they belong to the remote.
    decision = accepted("team@example.test")
    assert decision.destinations == ("a@dest.test", "b@dest.test", "A@dest.test")


def test_srs_address_is_reversed() -> None:
    address = SRS_.forward("carol@sender.test")
    decision = accepted(address)
    assert decision.destinations == ("carol@sender.test",)
    assert decision.srs_reversed
    assert decision.alias_domain == HOSTNAME
    assert (decision.how, decision.alias) == (None, None)


def test_srs1_address_is_reversed_to_the_first_forwarder() -> None:
    first = SRS(secrets=(b"elsewhere",), domain="first.example").forward("dan@sender.test")
    address = SRS_.forward(first)
    assert address.startswith("SRS1=")
    assert accepted(address).destinations == (first,)


@pytest.mark.parametrize(
    "address",
    [
        pytest.param(SRS_.forward("carol@sender.test").replace("SRS0=", "SRS0=x"), id="bad-hash"),
        pytest.param(
            SRS(secrets=(b"another secret",), domain=HOSTNAME).forward("carol@sender.test"),
            id="other-secret",
        ),
        pytest.param(SRS_.forward("carol@sender.test", now=time.time() - 30 * 86400), id="expired"),
        pytest.param(f"SRS0=garbage@{HOSTNAME}", id="malformed"),
    ],
)
def test_invalid_srs_address_is_refused_as_unknown_user(address: str) -> None:
    decision = refused(address)
    assert decision.reply == "550 5.1.1 Invalid or expired SRS address"
    assert decision.reason == "srs_invalid"


def test_srs_looking_address_elsewhere_is_not_reversed() -> None:
    # Only our own SRS domain is reversed; another domain's SRS address is relaying.
    address = SRS_.forward("carol@sender.test").replace(HOSTNAME, "elsewhere.test")
    assert refused(address).reason == "relay"


def test_unserved_domain_is_relaying_denied() -> None:
    decision = refused("someone@elsewhere.test")
    assert decision.reply.startswith("550 5.7.1 ")
    assert decision.reason == "relay"


def test_unknown_user_is_refused() -> None:
    decision = refused("nobody@example.test")
    assert decision.reply.startswith("550 5.1.1 ")
    assert decision.reason == "unknown_user"


def test_disabled_alias_is_refused_and_never_falls_through() -> None:
    decision = refused("off@example.test")
    assert decision.reply.startswith("550 5.2.1 ")
    assert decision.reason == "disabled"


def test_reject_alias_with_and_without_message() -> None:
    plain = refused("gone@example.test")
    assert plain.reply == "550 5.7.1 Recipient address rejected"
    assert plain.reason == "alias_reject"
    assert refused("closed@example.test").reply == "550 5.7.1 This address is closed"


def test_discard_alias_is_accepted_without_destinations() -> None:
    decision = accepted("null@example.test")
    assert decision.destinations == ()
    assert decision.how == "exact"


def test_destination_on_served_domain_is_resolved_again() -> None:
    assert accepted("chain@example.test").destinations == ("bob@dest.test",)


def test_dead_destinations_are_dropped_but_the_others_kept() -> None:
    # bob@other.test resolves again (one level down: listed after the direct
    # destinations); null@example.test discards its copy.
    assert accepted("mixed@example.test").destinations == ("carol@dest.test", "bob@dest.test")
    assert accepted("todiscard@example.test").destinations == ()


@pytest.mark.parametrize(
    "address", ["ghost@example.test", "tohidden@example.test", "torejected@example.test"]
)
def test_alias_whose_every_destination_is_dead_is_refused_not_lost(address: str) -> None:
    # Accepting would answer 250 for mail that then goes nowhere.
    decision = refused(address)
    assert decision.reply.startswith("550 5.1.1 ")
    assert decision.reason == "no_destination"


def test_diamond_is_not_a_loop() -> None:
    # diamond → left → shared@other.test, diamond → right → shared@other.test
    decision = accepted("diamond@example.test")
    assert decision.destinations == ("right@dest.test", "shared@dest.test")
    # The same served address twice in one alias (in another case) is no loop either.
    assert accepted("twice@example.test").destinations == ("shared@dest.test",)


def test_real_loop_is_refused() -> None:
    # ping@example.test → pong@other.test → ping@example.test
    for address in ("ping@example.test", "pong@other.test", "anything@catchall.test"):
        decision = refused(address)
        assert decision.reply == "554 5.4.6 Routing loop detected", address
        assert decision.reason == "loop"


def test_depth_bound() -> None:
    # From hop{k}, the last hop sits MAX_DEPTH + 1 - k levels down.
    assert accepted(f"hop{MAX_DEPTH}@chain.test").destinations == ("end@dest.test",)
    assert accepted("hop1@chain.test").destinations == ("end@dest.test",)
    too_deep = refused("hop0@chain.test")
    assert too_deep.reply.startswith("554 5.4.6 ")
    assert too_deep.reason == "loop"


@pytest.mark.parametrize(
    "address",
    [
        "no-at-sign",
        "user@",
        "@example.test",
        "a b@example.test",
        "a..b@example.test",
        "x@-bad-.test",
    ],
)
def test_bad_syntax_is_501(address: str) -> None:
    decision = refused(address)
    assert decision.reply.startswith("501 5.1.3 ")
    assert decision.reason == "bad_address"


def test_without_srs_an_srs_address_is_an_ordinary_recipient() -> None:
    assert refused(SRS_.forward("carol@sender.test"), srs=None).reason == "relay"
