"""Tests of smtpy.mail.dsn: RFC 3464 DSNs parsed back with the `email` package."""

from __future__ import annotations

import datetime
import email
import email.message
import email.policy
import email.utils

import pytest

from smtpy.mail.dsn import FailedRecipient, build_dsn, is_bounce

ARRIVAL = datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.UTC)
NOW = datetime.datetime(2024, 5, 6, 9, 0, 0, tzinfo=datetime.UTC)
ORIGINAL = (
    b"Return-Path: <alice@sender.test>\r\n"
    b"From: Alice <alice@sender.test>\r\n"
    b"To: alias@forwarder.test\r\n"
    b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n"
    b"Message-ID: <orig-1@sender.test>\r\n"
    b"\r\n"
    b"The secret body.\r\n"
)
GONE = FailedRecipient(
    original_recipient="alias@forwarder.test",
    final_recipient="Real.Person@mailbox.test",
    action="failed",
    status="5.1.1",
    diagnostic="smtp; 550 5.1.1 <real.person@mailbox.test>: Recipient address rejected",
    remote_mta="mx1.mailbox.test[127.0.0.2]",
)
LATE = FailedRecipient(
    original_recipient="team@forwarder.test",
    final_recipient="hidden@elsewhere.test",
    action="delayed",
    status="4.4.1",
    diagnostic="X-Smtpy; connection refused by mx.elsewhere.test[127.0.0.3]",
    remote_mta=None,
)


def dsn(**kwargs: object) -> bytes:
    options: dict[str, object] = {
        "reporting_mta": "forwarder.test",
        "sender": "alice@sender.test",
        "recipients": [GONE],
        "original": ORIGINAL,
        "arrival": ARRIVAL,
        "now": NOW,
        "queue_id": "4Xy7Zq",
    }
    options.update(kwargs)
    return build_dsn(**options)  # type: ignore[arg-type]


def parse(data: bytes) -> email.message.EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    return message


def parts(message: email.message.EmailMessage) -> list[email.message.EmailMessage]:
    payload = message.get_payload()
    assert isinstance(payload, list)
    return [part for part in payload if isinstance(part, email.message.EmailMessage)]


def status_blocks(message: email.message.EmailMessage) -> list[email.message.Message]:
    blocks = parts(message)[1].get_payload()
    assert isinstance(blocks, list)
    return [block for block in blocks if isinstance(block, email.message.Message)]


def test_structure_and_headers() -> None:
    message = parse(dsn())
    [author] = message["From"].addresses
    assert (author.display_name, author.addr_spec) == (
        "Mail Delivery System",
        "MAILER-DAEMON@forwarder.test",
    )
    assert b'From: "Mail Delivery System" <MAILER-DAEMON@forwarder.test>\r\n' in dsn()
    assert message["To"] == "alice@sender.test"
    assert message["Subject"] == "Undelivered Mail Returned to Sender"
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["MIME-Version"] == "1.0"
    assert email.utils.parsedate_to_datetime(message["Date"]) == NOW
    assert message["Message-ID"].startswith("<") and message["Message-ID"].endswith(
        "@forwarder.test>"
    )
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    notice, report, headers = parts(message)
    assert notice.get_content_type() == "text/plain"
    assert report.get_content_type() == "message/delivery-status"
    assert headers.get_content_type() == "text/rfc822-headers"
    assert message.defects == []
    assert all(part.defects == [] for part in parts(message))


def test_delivery_status_fields() -> None:
    message = parse(dsn())
    per_message, per_recipient = status_blocks(message)
    assert per_message["Reporting-MTA"] == "dns; forwarder.test"
    assert per_message["X-Smtpy-Queue-ID"] == "4Xy7Zq"
    assert email.utils.parsedate_to_datetime(per_message["Arrival-Date"]) == ARRIVAL
    assert per_recipient["Original-Recipient"] == "rfc822; alias@forwarder.test"
    assert per_recipient["Final-Recipient"] == "rfc822; alias@forwarder.test"
    assert per_recipient["Action"] == "failed"
    assert per_recipient["Status"] == "5.1.1"
    assert per_recipient["Remote-MTA"] == "dns; mx1.mailbox.test"
    assert per_recipient["Diagnostic-Code"] == (
        "smtp; 550 5.1.1 <alias@forwarder.test>: Recipient address rejected"
    )


def test_human_part_names_the_alias() -> None:
    notice = parts(parse(dsn()))[0]
    text = notice.get_content()
    assert "forwarder.test" in text
    assert "<alias@forwarder.test>: 550 5.1.1 <alias@forwarder.test>: Recipient" in text


def test_alias_target_never_leaks() -> None:
    data = dsn(recipients=[GONE, LATE]).lower()
    for secret in (b"real.person", b"hidden@elsewhere.test"):
        assert secret not in data
    assert b"the secret body" not in data  # headers only are returned


def test_original_headers_returned() -> None:
    headers = parts(parse(dsn()))[2]
    returned = headers.get_payload(decode=True)
    assert isinstance(returned, bytes)
    assert returned == ORIGINAL.split(b"\r\n\r\n")[0] + b"\r\n"
    assert headers["Content-Transfer-Encoding"] == "7bit"


def test_crlf_and_7bit() -> None:
    lf_original = ORIGINAL.replace(b"\r\n", b"\n")
    data = dsn(original=lf_original, recipients=[GONE, LATE])
    assert data.isascii()
    assert data.count(b"\n") == data.count(b"\r\n")
    assert data.count(b"\r") == data.count(b"\r\n")
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))
    returned = parts(parse(data))[2].get_payload(decode=True)
    assert returned == ORIGINAL.split(b"\r\n\r\n")[0] + b"\r\n"


def test_utf8_subject_in_original_is_quoted_printable() -> None:
    original = "From: a@sender.test\nSubject: Grüße aus Köln ☃\n\nbody\n".encode()
    data = dsn(original=original)
    assert data.isascii()
    headers = parts(parse(data))[2]
    assert headers["Content-Transfer-Encoding"] == "quoted-printable"
    returned = headers.get_payload(decode=True)
    assert isinstance(returned, bytes)
    assert "Subject: Grüße aus Köln ☃\r\n".encode() in returned


def test_utf8_remote_reply_is_escaped_in_the_report() -> None:
    gone = FailedRecipient(
        original_recipient="alias@forwarder.test",
        final_recipient="x@mailbox.test",
        action="failed",
        status="5.2.2",
        diagnostic="smtp; 552 5.2.2 Postfach voll – bitte später",
        remote_mta="mx1.mailbox.test",
    )
    message = parse(data := dsn(recipients=[gone]))
    assert data.isascii()
    [_, per_recipient] = status_blocks(message)
    assert per_recipient["Diagnostic-Code"].startswith("smtp; 552 5.2.2 Postfach voll \\u2013")
    assert "bitte später" in parts(message)[0].get_content()


def test_delayed_only_subject_and_action() -> None:
    message = parse(dsn(recipients=[LATE]))
    assert message["Subject"] == "Delayed Mail (still being retried)"
    [_, per_recipient] = status_blocks(message)
    assert per_recipient["Action"] == "delayed"
    assert per_recipient["Status"] == "4.4.1"
    assert per_recipient["Remote-MTA"] is None
    assert "WARNING ONLY" in parts(message)[0].get_content()


def test_several_recipients_each_get_a_block() -> None:
    message = parse(dsn(recipients=[GONE, LATE]))
    blocks = status_blocks(message)
    assert len(blocks) == 3
    assert [b["Action"] for b in blocks[1:]] == ["failed", "delayed"]
    assert message["Subject"] == "Undelivered Mail Returned to Sender"


def test_long_diagnostic_is_folded() -> None:
    long = FailedRecipient(
        original_recipient="alias@forwarder.test",
        final_recipient="x@mailbox.test",
        action="failed",
        status="5.7.1",
        diagnostic="smtp; 550 5.7.1 " + " ".join(["policy"] * 60),
        remote_mta="mx1.mailbox.test",
    )
    data = dsn(recipients=[long])
    assert all(len(line) <= 80 for line in data.split(b"\r\n"))
    [_, per_recipient] = status_blocks(parse(data))
    assert str(per_recipient["Diagnostic-Code"]).split() == long.diagnostic.split()


def test_no_header_injection() -> None:
    evil = FailedRecipient(
        original_recipient="alias@forwarder.test",
        final_recipient="x@mailbox.test",
        action="failed",
        status="5.0.0",
        diagnostic="smtp; 550 nope\r\nAction: delivered\r\n\r\nInjected: yes",
        remote_mta="mx1.mailbox.test",
    )
    message = parse(dsn(recipients=[evil], sender="alice@sender.test\r\nBcc: x@evil.test"))
    assert message["Bcc"] is None
    blocks = status_blocks(message)
    assert len(blocks) == 2
    assert blocks[1].get_all("Action") == ["failed"]
    assert blocks[1]["Injected"] is None


def test_utf8_addresses_use_global_delivery_status() -> None:
    jorg = FailedRecipient(
        original_recipient="jörg@forwarder.test",
        final_recipient="jörg.real@mailbox.test",
        action="failed",
        status="5.1.1",
        diagnostic="smtp; 550 5.1.1 <jörg.real@mailbox.test> unknown",
        remote_mta="mx1.mailbox.test",
    )
    data = dsn(recipients=[jorg], sender="ålice@sender.test")
    assert "jörg.real".encode() not in data
    message = parse(data)
    assert message.get_param("report-type") == "global-delivery-status"
    assert message["To"] == "ålice@sender.test"
    notice, report, headers = parts(message)
    assert report.get_content_type() == "message/global-delivery-status"
    assert headers.get_content_type() == "message/global-headers"
    # The email package does not parse message/global-delivery-status: read the bytes.
    assert "Original-Recipient: utf-8; jörg@forwarder.test\r\n".encode() in data
    assert "Final-Recipient: utf-8; jörg@forwarder.test\r\n".encode() in data
    assert "Diagnostic-Code: smtp; 550 5.1.1 <jörg@forwarder.test> unknown".encode() in data
    assert report["Content-Transfer-Encoding"] == "8bit"
    assert "<jörg@forwarder.test>" in notice.get_content()


def test_naive_datetimes_are_utc() -> None:
    message = parse(
        dsn(arrival=ARRIVAL.replace(tzinfo=None), now=NOW.replace(tzinfo=None), queue_id=None)
    )
    assert message["Date"].endswith("+0000")
    [per_message, _] = status_blocks(message)
    assert email.utils.parsedate_to_datetime(per_message["Arrival-Date"]) == ARRIVAL
    assert per_message["X-Smtpy-Queue-ID"] is None


def test_never_bounce_a_bounce() -> None:
    assert is_bounce("")
    assert is_bounce("<>")
    assert not is_bounce("alice@sender.test")
    with pytest.raises(ValueError, match="never bounce a bounce"):
        dsn(sender="")
    with pytest.raises(ValueError, match="never bounce a bounce"):
        dsn(sender="<>")


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="at least one recipient"):
        dsn(recipients=[])
    bad = FailedRecipient("a@x.test", "b@y.test", "failed", "550", "smtp; 550 no", None)
    with pytest.raises(ValueError, match="bad status"):
        dsn(recipients=[bad])


def test_message_ids_are_unique() -> None:
    assert parse(dsn())["Message-ID"] != parse(dsn())["Message-ID"]
