"""Addresses and domain names: A-labels stored, U-labels shown, local parts kept as given."""

from __future__ import annotations

import pytest

from smtpy.errors import InvalidInput
from smtpy.mail.addresses import (
    Address,
    display_domain,
    local_key,
    normalize_domain,
    parse_address,
    split_address,
    validate_local_part,
)


@pytest.mark.parametrize(
    ("text", "alabel"),
    [
        ("example.org", "example.org"),
        ("Example.ORG", "example.org"),
        ("example.org.", "example.org"),
        ("  mail.example.org  ", "mail.example.org"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("Bücher.Example.", "xn--bcher-kva.example"),
        ("BÜCHER.example", "xn--bcher-kva.example"),
        ("XN--BCHER-KVA.example", "xn--bcher-kva.example"),
        ("bücher。example", "xn--bcher-kva.example"),  # ideographic full stop
        ("例え.テスト", "xn--r8jz45g.xn--zckzah"),
        ("faß.de", "xn--fa-hia.de"),  # IDNA 2008: ß is kept, not mapped to ss
        ("a-b.c-d.example", "a-b.c-d.example"),
        ("123.example", "123.example"),
    ],
)
def test_normalize_domain_returns_lower_case_a_label(text: str, alabel: str) -> None:
    assert normalize_domain(text) == alabel


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        ".",
        "example",  # not fully qualified
        "localhost",
        "1.2.3.4",
        "example.123",
        "exa_mple.org",
        "-example.org",
        "example-.org",
        "a..example",
        "ex ample.org",
        "ex@mple.org",
        "xn--zz.example",  # not a valid punycode label
        "a" * 64 + ".example",  # label over 63 octets
        ".".join(["a" * 63] * 4) + ".org",  # name over 253 octets
        "[127.0.0.1]",
    ],
)
def test_normalize_domain_rejects_invalid_names(text: str) -> None:
    with pytest.raises(InvalidInput) as info:
        normalize_domain(text)
    assert "\n" not in str(info.value)


def test_longest_valid_domain_is_accepted() -> None:
    name = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 57, "org"])
    assert len(name) == 253
    assert normalize_domain(name) == name


@pytest.mark.parametrize(
    ("alabel", "shown"),
    [
        ("xn--bcher-kva.example", "bücher.example"),
        ("xn--r8jz45g.xn--zckzah", "例え.テスト"),
        ("example.org", "example.org"),
        ("xn--zz.example", "xn--zz.example"),  # undecodable: shown as stored
    ],
)
def test_display_domain_shows_u_labels(alabel: str, shown: str) -> None:
    assert display_domain(alabel) == shown


def test_display_and_normalize_round_trip() -> None:
    for name in ("bücher.example", "例え.テスト", "mail.münchen.example"):
        assert display_domain(normalize_domain(name)) == name
        assert normalize_domain(display_domain(normalize_domain(name))) == normalize_domain(name)


@pytest.mark.parametrize(
    "local",
    [
        "alice",
        "Alice.Smith",
        "alice+news",
        "a!#$%&'*+-/=?^_`{|}~z",
        "jörg",
        "用户",
        '"john doe"',
        '"a@b"',
        '"quote\\"inside"',
        "a" * 64,
        "ü" * 32,  # 64 octets in UTF-8
    ],
)
def test_valid_local_parts_are_kept_as_given(local: str) -> None:
    assert validate_local_part(local) == local


@pytest.mark.parametrize(
    "local",
    [
        "",
        ".alice",
        "alice.",
        "al..ice",
        "al ice",
        "al@ice",
        "a\x00b",
        "a\rb",
        '"unterminated',
        "a" * 65,
        "ü" * 33,  # 66 octets in UTF-8
    ],
)
def test_invalid_local_parts_are_rejected(local: str) -> None:
    with pytest.raises(InvalidInput):
        validate_local_part(local)


def test_local_key_folds_case_including_unicode() -> None:
    assert local_key("Alice") == local_key("ALICE") == "alice"
    assert local_key("JÖRG") == local_key("jörg")
    assert local_key("Straße") == local_key("STRASSE")
    assert local_key("Alice") != local_key("Alicia")


def test_parse_address_keeps_local_case_and_stores_a_label() -> None:
    address = parse_address("<Alice@Bücher.Example>")
    assert address == Address("Alice", "xn--bcher-kva.example")
    assert str(address) == "Alice@xn--bcher-kva.example"
    assert address.display == "Alice@bücher.example"
    assert address.key == "alice@xn--bcher-kva.example"
    assert not address.needs_smtputf8


def test_parse_address_accepts_utf8_local_parts() -> None:
    address = parse_address("Jörg@example.org")
    assert address.local == "Jörg"
    assert address.needs_smtputf8
    assert address.key == parse_address("JÖRG@EXAMPLE.ORG").key


def test_parse_address_splits_at_the_last_at_sign() -> None:
    address = parse_address('"a@b"@example.org')
    assert address.local == '"a@b"'
    assert address.domain == "example.org"


@pytest.mark.parametrize(
    "text",
    [
        "alice",
        "@example.org",
        "alice@",
        "alice@localhost",
        "a@b@example.org",
        "al ice@example.org",
        "alice@exa_mple.org",
        "a" * 65 + "@example.org",
        "alice@" + "a" * 600 + ".org",
    ],
)
def test_parse_address_rejects_bad_addresses_with_one_line(text: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_address(text)
    message = str(info.value)
    assert "\n" not in message
    assert len(message) < 1500


def test_split_address_lower_cases_only_the_domain() -> None:
    assert split_address("Alice@Example.ORG") == ("Alice", "example.org")
    assert split_address('"a@b"@example.org') == ('"a@b"', "example.org")
