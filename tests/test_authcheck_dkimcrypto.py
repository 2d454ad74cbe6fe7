"""smtpy's own DKIM verifier (smtpy.dkim.verify) agrees with dkimpy's on
messages dkimpy signed, in every canonicalization, and on what breaks them."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import dkim
import pytest

from authworld import Key, make_key, message
from smtpy.checks.dns_keys import parse_tags
from smtpy.dkim import verify as dkimcrypto
from smtpy.mail.headers import header_fields, split_message

KEYS = {"rsa": make_key("sender.test", "r1"), "ed25519": make_key("sender.test", "e1", "ed25519")}

BODY = "Hello  there.\r\n\tindented \r\n\r\n.dot line\r\n\r\n\r\n"
TAMPERINGS: dict[str, Callable[[bytes], bytes]] = {
    "none": lambda m: m,
    "body changed": lambda m: m.replace(b"Hello", b"Jello"),
    "trailing empty lines added": lambda m: m + b"\r\n\r\n",
    "body whitespace changed": lambda m: m.replace(b"Hello  there", b"Hello there"),
    "subject refolded": lambda m: m.replace(b"Subject: Hello", b"Subject:\r\n  Hello"),
    "subject changed": lambda m: m.replace(b"Subject: Hello", b"Subject: Hellp"),
    "second From added": lambda m: m.replace(b"To:", b"From: eve@evil.test\r\nTo:", 1),
    "header added on top": lambda m: b"Received: from x by y; now\r\n" + m,
    "text appended": lambda m: m + b"more text\r\n",
}


def fast_verify(key: Key, data: bytes) -> str:
    head, rest = split_message(data)
    fields = header_fields(head)
    [(position, tags)] = [
        (i, parse_tags(f.value)) for i, f in enumerate(fields) if f.name == "dkim-signature"
    ]
    outcome = dkimcrypto.verify(fields, rest[2:], position, tags, key.generated.public_record)
    assert outcome is not None
    return outcome[0]


def dkimpy_verify(key: Key, data: bytes) -> bool:
    def dnsfunc(name: bytes, timeout: float = 5) -> bytes:
        return key.generated.public_record.encode()

    try:
        return bool(dkim.verify(data, dnsfunc=dnsfunc))
    except dkim.DKIMException:
        return False


@pytest.mark.parametrize(
    ("algorithm", "header", "body", "length", "tampering"),
    list(
        itertools.product(
            KEYS, [b"simple", b"relaxed"], [b"simple", b"relaxed"], [False, True], TAMPERINGS
        )
    ),
)
def test_agrees_with_dkimpy(
    algorithm: str, header: bytes, body: bytes, length: bool, tampering: str
) -> None:
    key = KEYS[algorithm]
    signed = key.sign(message(body=BODY), canonicalize=(header, body), length=length)
    data = TAMPERINGS[tampering](signed)
    expected = dkimpy_verify(key, data)
    got = fast_verify(key, data)
    assert (got == "pass") == expected, (got, expected)
    if tampering == "none":
        assert got == "pass"


def test_record_problems_are_reported() -> None:
    key = KEYS["rsa"]
    signed = key.sign(message())
    head, rest = split_message(signed)
    fields = header_fields(head)
    tags = parse_tags(fields[0].value)

    def outcome(record: str, **changes: bytes) -> tuple[str, str] | None:
        return dkimcrypto.verify(
            fields, rest[2:], 0, {**tags, **{k.encode(): v for k, v in changes.items()}}, record
        )

    record = key.generated.public_record
    assert outcome(record) == ("pass", "signature verified")
    assert outcome(record.replace("p=", "p=;x=")) == ("fail", "the key has been revoked (empty p=)")
    assert outcome(record.replace("k=rsa", "k=ed25519"))[0] == "permerror"  # type: ignore[index]
    assert outcome(record, a=b"rsa-sha1") == ("permerror", "algorithm rsa-sha1 not accepted")
    assert outcome(record, h=b"to : subject")[0] == "permerror"  # type: ignore[index]
    assert outcome(record, i=b"@other.test")[0] == "permerror"  # type: ignore[index]
    assert outcome(record, x=b"1000") == ("fail", "the signature has expired")
