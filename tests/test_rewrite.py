"""The Received header smtpy adds and the loop counter (smtpy.mail.received)."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import pytest

from smtpy.mail.received import (
    MAX_RECEIVED,
    count_received,
    header_section,
    protocol,
    received_header,
)

NOW = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)


def header(**kwargs: object) -> bytes:
    values: dict[str, object] = {
        "hostname": "mx.forwarder.test",
        "helo": "client.example",
        "client_ip": "192.0.2.1",
        "queue_id": "0HDV5J3N2P4Q6R8S",
        "with_protocol": "ESMTP",
        "now": NOW,
    }
    values.update(kwargs)
    return received_header(**values)  # type: ignore[arg-type]


def parse(value: bytes) -> tuple[str, datetime]:
    """Parse a Received header as a mail reader would: (unfolded text, its date)."""
    message = email.message_from_bytes(value + b"\r\nbody\r\n", policy=email.policy.SMTP)
    assert list(message.keys()) == ["Received"], message.keys()
    text = " ".join(str(message["Received"]).split())
    return text, parsedate_to_datetime(text.rpartition(";")[2].strip())


def test_received_header_has_the_rfc5321_shape() -> None:
    value = header(recipient="alice@example.test")
    assert value == (
        b"Received: from client.example ([192.0.2.1])\r\n"
        b"\tby mx.forwarder.test (smtpy) with ESMTP id 0HDV5J3N2P4Q6R8S\r\n"
        b"\tfor <alice@example.test>;\r\n"
        b"\tTue, 02 Jan 2024 03:04:05 +0000\r\n"
    )
    text, when = parse(value)
    assert text.startswith("from client.example ([192.0.2.1]) by mx.forwarder.test")
    assert when == NOW


def test_every_line_is_crlf_terminated_and_short() -> None:
    value = header(
        helo="h" * 500,
        recipient="r" * 60 + "@example.test",
        with_protocol="UTF8SMTPS",
        tls="version=TLSv1.3 cipher=TLS_AES_256_GCM_SHA384",
    )
    assert value.endswith(b"\r\n")
    lines = value.split(b"\r\n")[:-1]
    assert b"\n" not in b"".join(lines) and b"\r" not in b"".join(lines)
    assert all(line.startswith(b"\t") for line in lines[1:])  # folded, never a new header
    assert all(len(line) <= 998 for line in lines)
    assert len(lines[0]) <= 78 + 100


def test_without_recipient_the_date_follows_the_id() -> None:
    value = header()
    assert b"for <" not in value
    assert b"id 0HDV5J3N2P4Q6R8S;\r\n\tTue, 02 Jan 2024 03:04:05 +0000\r\n" in value
    assert parse(value)[1] == NOW


def test_non_ascii_recipient_is_left_out() -> None:
    # The header must stay 7-bit for the next hop, which may not speak SMTPUTF8.
    value = header(recipient="jörg@example.test")
    assert value.isascii()
    assert b"for <" not in value


def test_tls_description_is_kept_readable() -> None:
    value = header(with_protocol="ESMTPS", tls="version=TLSv1.3 cipher=TLS_AES_256_GCM_SHA384")
    assert (
        b"by mx.forwarder.test (smtpy) with ESMTPS"
        b" (version=TLSv1.3 cipher=TLS_AES_256_GCM_SHA384) id " in value
    )
    # A comment cannot be closed or escaped from inside.
    value = header(with_protocol="ESMTPS", tls="a) b\\")
    assert b"(a] b?)" in value


@pytest.mark.parametrize(
    ("ip", "literal"),
    [
        ("192.0.2.1", b"([192.0.2.1])"),
        ("2001:db8::1", b"([IPv6:2001:db8::1])"),
        ("2001:DB8:0:0::1", b"([IPv6:2001:db8::1])"),
        ("::ffff:192.0.2.7", b"([192.0.2.7])"),  # a dual-stack listener's IPv4 client
        (None, b"([unknown])"),
    ],
)
def test_client_address_is_an_address_literal(ip: str | None, literal: bytes) -> None:
    assert literal in header(client_ip=ip).split(b"\r\n")[0]


@pytest.mark.parametrize(
    "helo",
    [
        "evil.example\r\nX-Injected: yes",
        "evil.example\nX-Injected: yes",
        "evil.example\rX-Injected: yes",
        "evil.example (by trusted.example with ESMTP",
        "evil.example) by trusted.example (",
        "evil\\",
        "evil\x00\x07\x1b[2J\x7f",
        "évil.exämple",
        "a b c",
    ],
)
def test_hostile_helo_is_sanitized(helo: str) -> None:
    value = header(helo=helo, recipient="alice@example.test")
    assert value.isascii()
    _, when = parse(value)  # still exactly one header, with our date
    assert when == NOW
    first = value.split(b"\r\n")[0]
    assert first.startswith(b"Received: from ")
    source = first.removeprefix(b"Received: from ").rpartition(b" ([192.0.2.1])")[0]
    assert all(0x21 <= c <= 0x7E for c in source)
    assert not set(source) & set(b"()\\")
    assert first.count(b"(") == first.count(b")") == 1
    assert "X-Injected" not in str(email.message_from_bytes(value + b"\r\n").keys())


def test_helo_is_shortened_and_missing_helo_is_unknown() -> None:
    assert b"from " + b"h" * 100 + b" ([" in header(helo="h" * 500)
    assert header(helo=None).startswith(b"Received: from unknown ([192.0.2.1])")


@pytest.mark.parametrize(
    ("esmtp", "tls", "smtputf8", "keyword"),
    [
        (False, False, False, "SMTP"),
        (True, False, False, "ESMTP"),
        (True, True, False, "ESMTPS"),
        (True, False, True, "UTF8SMTP"),
        (True, True, True, "UTF8SMTPS"),
    ],
)
def test_protocol_keywords_of_rfc3848_and_rfc6531(
    esmtp: bool, tls: bool, smtputf8: bool, keyword: str
) -> None:
    assert protocol(esmtp=esmtp, tls=tls, smtputf8=smtputf8) == keyword


def received(n: int, eol: bytes = b"\r\n") -> bytes:
    return b"".join(b"Received: from hop%d by hop%d; date%s" % (i, i + 1, eol) for i in range(n))


def test_count_received_counts_header_lines_only() -> None:
    body = received(30)
    message = received(3) + b"Subject: hi\r\n\r\n" + body
    assert count_received(message) == 3
    assert count_received(received(3, b"\n") + b"\n" + body) == 3


def test_count_received_forms() -> None:
    message = (
        b"Received: from a\r\n\tby b; date\r\n"  # folded: one header
        b"RECEIVED: x\r\n"
        b"received :x\r\n"
        b"X-Received: not a trace header\r\n"
        b"Subject: Received: no\r\n"
        b" Received: a continuation line\r\n"
        b"\r\n"
        b"Received: in the body\r\n"
    )
    assert count_received(message) == 3


def test_count_received_finds_the_first_empty_line_whatever_the_line_endings() -> None:
    # LF-only headers, then a body with CRLF line endings.
    message = b"Received: a\nSubject: x\n\nReceived: b\r\n\r\n" + received(30)
    assert count_received(message) == 1
    # No header section at all: everything is body.
    assert count_received(b"\r\n" + received(30)) == 0
    assert count_received(b"\n" + received(30)) == 0
    # No body: everything is header.
    assert count_received(received(4)) == 4


def test_header_section_keeps_the_last_line_ending() -> None:
    assert header_section(b"A: 1\r\nB: 2\r\n\r\nbody") == b"A: 1\r\nB: 2\r\n"
    assert header_section(b"A: 1\nB: 2\n\nbody\r\n\r\nmore") == b"A: 1\nB: 2\n"
    assert header_section(b"A: 1\r\n") == b"A: 1\r\n"
    assert header_section(b"\r\nbody") == b""


def test_loop_limit_is_25() -> None:
    assert MAX_RECEIVED == 25
