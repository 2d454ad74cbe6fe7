"""Alias resolution (`smtpy.route.aliases.resolve`): exact, then plus-tag, then regex, then catch-all."""

from __future__ import annotations

import json
import time
from itertools import count

import pytest

from smtpy.errors import InvalidInput
from smtpy.route.aliases import (
    AliasRule,
    DomainRules,
    Match,
    compile_pattern,
    fan_out,
    parse_alias_address,
    resolve,
)

DOMAIN = "example.org"
_ids = count(1)


def exact(local: str, *dests: str, enabled: bool = True) -> AliasRule:
    return AliasRule(
        next(_ids), DOMAIN, "exact", local, dests or (f"{local}@dest.test",), enabled=enabled
    )


def regex(pattern: str, *dests: str, enabled: bool = True) -> AliasRule:
    return AliasRule(
        next(_ids), DOMAIN, "regex", pattern, dests or ("regex@dest.test",), enabled=enabled
    )


def catchall(*dests: str, enabled: bool = True) -> AliasRule:
    return AliasRule(
        next(_ids), DOMAIN, "catchall", "*", dests or ("all@dest.test",), enabled=enabled
    )


def rules(*items: AliasRule) -> DomainRules:
    return DomainRules.build(DOMAIN, items)


def how(local: str, table: DomainRules, **kwargs: str) -> tuple[str, AliasRule] | None:
    match = resolve(local, table, **kwargs)
    return None if match is None else (match.how, match.rule)


# -- the order -------------------------------------------------------------------------


def test_each_kind_in_order_of_precedence() -> None:
    alice = exact("alice")
    tagged = exact("bob+lists")
    bob = exact("bob")
    sales = regex("sales-[0-9]+")
    everyone = catchall()
    table = rules(everyone, sales, bob, tagged, alice)

    assert how("alice", table) == ("exact", alice)
    assert how("bob+lists", table) == ("exact", tagged)  # an exact alias beats the tag
    assert how("bob+news", table) == ("plus", bob)
    assert how("sales-42", table) == ("regex", sales)
    assert how("alice2", table) == ("catchall", everyone)
    assert how("sales-x", table) == ("catchall", everyone)


def test_exact_beats_regex_and_catchall_even_when_added_later() -> None:
    everything = regex(".*")
    table = rules(catchall(), everything, exact("info"))
    assert how("info", table)[0] == "exact"  # type: ignore[index]
    assert how("other", table) == ("regex", everything)


def test_nothing_matches_without_a_catchall() -> None:
    table = rules(exact("alice"), regex("sales-.*"))
    assert resolve("bob", table) is None
    assert resolve("bob+alice", table) is None
    assert resolve("anything", DomainRules.build(DOMAIN, [])) is None


# -- case and Unicode -------------------------------------------------------------------


@pytest.mark.parametrize("local", ["alice", "Alice", "ALICE", "aLiCe"])
def test_exact_matches_case_insensitively(local: str) -> None:
    alice = exact("Alice")
    assert how(local, rules(alice)) == ("exact", alice)


def test_unicode_local_parts_fold_case() -> None:
    jorg = exact("Jörg")
    strasse = exact("Straße")
    table = rules(jorg, strasse)
    assert how("JÖRG", table) == ("exact", jorg)
    assert how("jörg", table) == ("exact", jorg)
    assert how("STRASSE", table) == ("exact", strasse)  # full case folding: ß is ss
    assert how("strasse", table) == ("exact", strasse)
    assert resolve("jorg", table) is None  # ö is not o
    assert how("JÖRG+Ärger", table) == ("plus", jorg)


def test_matched_rule_keeps_the_local_part_as_given() -> None:
    match = resolve("alice", rules(exact("Alice.Smith"), exact("Alice")))
    assert match is not None
    assert match.rule.local_part == "Alice"
    assert match.rule.address == "Alice@example.org"


# -- plus-addressing ------------------------------------------------------------------------


def test_plus_tag_reports_the_tag() -> None:
    alice = exact("alice")
    assert resolve("alice+News", rules(alice)) == Match(alice, "plus", tag="News")
    assert resolve("ALICE+x", rules(alice)) == Match(alice, "plus", tag="x")


def test_plus_tag_splits_at_the_first_separator() -> None:
    alice = exact("alice")
    assert resolve("alice+a+b", rules(alice)) == Match(alice, "plus", tag="a+b")
    assert resolve("alice+", rules(alice)) == Match(alice, "plus", tag="")


def test_plus_tag_needs_a_base() -> None:
    everyone = catchall()
    assert how("+alice", rules(exact("alice"), everyone)) == ("catchall", everyone)
    assert resolve("+", rules(exact("alice"))) is None


def test_plus_tag_of_an_unknown_base_falls_through_to_regex_then_catchall() -> None:
    lists = regex("[a-z]+\\+lists")
    everyone = catchall()
    table = rules(exact("alice"), lists, everyone)
    assert how("bob+lists", table) == ("regex", lists)
    assert how("bob+other", table) == ("catchall", everyone)


def test_separator_is_a_setting() -> None:
    alice = exact("alice")
    everyone = catchall()
    table = rules(alice, everyone)
    assert how("alice-news", table, plus_separator="-") == ("plus", alice)
    assert how("alice+news", table, plus_separator="-") == ("catchall", everyone)
    assert how("alice--news", table, plus_separator="--") == ("plus", alice)
    assert resolve("alice--news", table, plus_separator="--") == Match(alice, "plus", tag="news")


def test_empty_separator_turns_plus_addressing_off() -> None:
    alice = exact("alice")
    everyone = catchall()
    table = rules(alice, everyone)
    assert how("alice+news", table, plus_separator="") == ("catchall", everyone)
    assert resolve("alice+news", rules(alice), plus_separator="") is None
    assert how("alice", table, plus_separator="") == ("exact", alice)


# -- disabled rules --------------------------------------------------------------------------


def test_disabled_rules_still_match_so_mail_is_refused_not_rerouted() -> None:
    alice = exact("alice", enabled=False)
    sales = regex("sales-.*", enabled=False)
    everyone = catchall()
    table = rules(alice, sales, everyone)

    for local, expected_how, expected_rule in [
        ("alice", "exact", alice),
        ("alice+tag", "plus", alice),
        ("sales-1", "regex", sales),
    ]:
        match = resolve(local, table)
        assert match is not None
        assert (match.how, match.rule) == (expected_how, expected_rule)
        assert not match.rule.enabled


def test_disabled_catchall_still_matches() -> None:
    everyone = catchall(enabled=False)
    match = resolve("anyone", rules(everyone))
    assert match is not None and match.rule is everyone and not match.rule.enabled


# -- regex rules -------------------------------------------------------------------------------


def test_regex_matches_the_whole_local_part_case_insensitively() -> None:
    sales = regex("sales")
    table = rules(sales)
    assert how("sales", table) == ("regex", sales)
    assert how("SALES", table) == ("regex", sales)
    assert resolve("presales", table) is None
    assert resolve("sales-team", table) is None
    anchored = regex("^team-[a-z]+$")
    assert how("team-ops", rules(anchored)) == ("regex", anchored)


def test_regex_case_folding_covers_non_ascii_letters() -> None:
    rule = regex("jörg-.*")
    assert how("JÖRG-x", rules(rule)) == ("regex", rule)
    assert resolve("jorg-x", rules(rule)) is None


def test_first_added_regex_wins() -> None:
    first = regex("a.*")
    second = regex("ab.*")
    third = regex(".*")
    # Built from rules in any order: the id (order of addition) decides.
    table = rules(third, second, first)
    assert how("abc", table) == ("regex", first)
    assert how("b", table) == ("regex", third)


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("pattern", "subject"),
    [
        ("(a+)+$", "a" * 50_000 + "!"),
        ("(a|aa)*c", "a" * 50_000),
        ("(x+x+)+y", "x" * 50_000),
        ("(.*a){20}", "a" * 30 + "b" * 50_000),
        ("([a-z]+)*[0-9]", "abcdefghij" * 5_000),
    ],
)
def test_catastrophic_patterns_return_at_once(pattern: str, subject: str) -> None:
    # A backtracking engine needs longer than the age of the universe for these.
    rule = regex(pattern)
    everyone = catchall()
    table = rules(rule, everyone)
    start = time.perf_counter()
    for _ in range(20):
        assert how(subject, table) == ("catchall", everyone)
    assert time.perf_counter() - start < 5


# -- parsing alias addresses and patterns ------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("alice@example.org", ("exact", "alice", "example.org")),
        (" Alice@Bücher.Example ", ("exact", "Alice", "Bücher.Example")),
        ("*@example.org", ("catchall", "*", "example.org")),
        ("/^sales-[0-9]+$/@example.org", ("regex", "^sales-[0-9]+$", "example.org")),
        ("/a/b/@example.org", ("regex", "a/b", "example.org")),
        ('"a@b"@example.org', ("exact", '"a@b"', "example.org")),
        ("alice@", ("exact", "alice", "")),
    ],
)
def test_parse_alias_address(text: str, parsed: tuple[str, str, str]) -> None:
    assert parse_alias_address(text) == parsed


@pytest.mark.parametrize("text", ["alice", "@example.org", "/sales/example.org", "/@example.org"])
def test_parse_alias_address_rejects(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_alias_address(text)


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("", "empty"),
        ("x" * 201, "longer than 200"),
        ("(unclosed", "missing )"),
        ("(a)\\1", "not valid RE2"),  # backreferences need backtracking
        ("(?=a)a", "not valid RE2"),  # lookahead too
        ("a{1001}", "not valid RE2"),
        ("((a{100}){100}){100}", "not valid RE2"),
    ],
)
def test_compile_pattern_refuses_what_re2_cannot_run_in_linear_time(
    pattern: str, reason: str, capfd: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(InvalidInput, match="regex pattern") as info:
        compile_pattern(pattern)
    message = str(info.value)
    assert reason in message
    assert "b'" not in message  # RE2's bytes are decoded for people
    # RE2 must not print its own diagnostics next to smtpy's one-line reason.
    assert capfd.readouterr().err == ""


# -- rules from the store, and fan-out ----------------------------------------------------


def test_rule_from_a_store_row() -> None:
    row = {
        "id": 7,
        "kind": "exact",
        "local_part": "Jörg",
        "destinations": json.dumps(["a@dest.test", "b@dest.test"]),
        "mode": "reject",
        "reject_message": "gone",
        "enabled": 0,
    }
    rule = AliasRule.from_row(row, "xn--bcher-kva.example")
    assert rule == AliasRule(
        7, "xn--bcher-kva.example", "exact", "Jörg", ("a@dest.test", "b@dest.test"),
        "reject", "gone", False,
    )  # fmt: skip
    assert rule.address == "Jörg@xn--bcher-kva.example"
    assert AliasRule.from_row({**row, "kind": "regex", "local_part": "x.*"}, DOMAIN).address == (
        "/x.*/@example.org"
    )


def test_fan_out_keeps_order_and_drops_repeats() -> None:
    a = exact("a", "one@dest.test", "two@dest.test")
    b = exact("b", "two@dest.test", "three@dest.test")
    assert fan_out([Match(a, "exact"), Match(b, "plus", "x")]) == [
        "one@dest.test",
        "two@dest.test",
        "three@dest.test",
    ]
    assert fan_out([]) == []
