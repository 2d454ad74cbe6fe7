"""Delivery status notifications (RFC 3464 bounces and delay warnings), as bytes.

`build_dsn` is a pure function (apart from the random Message-ID and MIME
boundary): the queue hands it the recipients that failed or are delayed and
the original message, and sends the result from the null sender (`MAIL
FROM:<>`) to the original envelope sender. It never bounces a bounce: a null
sender raises ValueError, and the caller logs and drops (`is_bounce` tells
beforehand).

The report is `multipart/report; report-type=delivery-status` (RFC 6522) with
three parts: a human-readable `text/plain` notice, a `message/delivery-status`
report (Reporting-MTA, X-Smtpy-Queue-ID, Arrival-Date, then per recipient
Original-Recipient, Final-Recipient, Action, Status, Remote-MTA,
Diagnostic-Code), and the original message's headers as `text/rfc822-headers`
(the body is not returned). Lines end in CRLF.

Alias targets never leak. The sender wrote to an alias; where the forwarder
sent it is nobody's business but the alias owner's. So the report names only
`original_recipient`, in Original-Recipient and in Final-Recipient alike
(RFC 3464 lets Final-Recipient be an address the reporting MTA chose to
report), and `final_recipient` appears nowhere: every occurrence of it in the
remote diagnostic text is replaced by the original recipient. Remote-MTA does
name the host that refused the mail, as RFC 3464 intends, so the receiving
provider can be inferred, but never the address.

Encoding: when every address is ASCII the report is 7-bit clean: the notice
and the returned headers switch to quoted-printable when they hold 8-bit text
(an SMTPUTF8 message's headers, a remote reply in UTF-8), and non-ASCII in
report fields is backslash-escaped. When the sender or a recipient address is
UTF-8 (RFC 6531), the report follows RFC 6533: `message/global-delivery-status`
with `utf-8;` address types, `message/global-headers`, a UTF-8 `To:` header;
such a report is not ASCII (`dsn.isascii()` is false) and needs SMTPUTF8 to
travel, as the sender's own address does.
"""

from __future__ import annotations

import binascii
import datetime
import re
import secrets
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import format_datetime
from typing import Literal

__all__ = ["FailedRecipient", "build_dsn", "is_bounce"]

Action = Literal["failed", "delayed"]

SUBJECT_FAILED = "Undelivered Mail Returned to Sender"
SUBJECT_DELAYED = "Delayed Mail (still being retried)"
MAX_FIELD = 900
"""Longest report-field value kept (characters); longer diagnostics are cut."""

_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_REMOTE = re.compile(r"^(?P<name>.+?)\[(?P<address>[^\]]+)\]$")
_LINE_END = re.compile(rb"\r\n|\r|\n")
_HEADER_END = re.compile(rb"\r?\n\r?\n")
CRLF = "\r\n"


@dataclass(frozen=True)
class FailedRecipient:
    """One recipient to report on."""

    original_recipient: str
    """The address the sender used (the alias): the only one the report names."""
    final_recipient: str
    """Where delivery was tried; never revealed (see the module docstring)."""
    action: Action
    status: str
    """RFC 3463 status, e.g. "5.1.1"."""
    diagnostic: str
    """Diagnostic-Code value with its type, e.g. "smtp; 550 5.1.1 user unknown"."""
    remote_mta: str | None
    """The host that answered, "mx.example.org" or "mx.example.org[192.0.2.1]"."""


def is_bounce(sender: str) -> bool:
    """Whether mail from this envelope sender is itself a bounce (null sender)."""
    return sender.strip() in ("", "<>")


def build_dsn(
    *,
    reporting_mta: str,
    sender: str,
    recipients: Sequence[FailedRecipient],
    original: bytes,
    arrival: datetime.datetime,
    now: datetime.datetime | None = None,
    queue_id: str | None = None,
) -> bytes:
    """The delivery status notification for `recipients` of `original`, to `sender`.

    Raises ValueError if `sender` is null (never bounce a bounce), if there is
    no recipient, or if a status is not an RFC 3463 code.
    """
    if is_bounce(sender):
        raise ValueError("the sender is null: never bounce a bounce")
    if not recipients:
        raise ValueError("a DSN needs at least one recipient")
    for recipient in recipients:
        if not _STATUS.fullmatch(recipient.status):
            raise ValueError(f"bad status {recipient.status!r}: expected e.g. 5.1.1")
    when = _aware(now if now is not None else datetime.datetime.now(datetime.UTC))
    reporting_mta = _clean(reporting_mta, ascii_only=True)
    sender = _clean(sender, ascii_only=False)
    international = not sender.isascii() or any(
        not r.original_recipient.isascii() for r in recipients
    )
    failed = [r for r in recipients if r.action == "failed"]
    delayed = [r for r in recipients if r.action != "failed"]
    boundary = f"=_smtpy_{secrets.token_hex(12)}"
    report_type = "global-delivery-status" if international else "delivery-status"

    headers = [
        f'From: "Mail Delivery System" <MAILER-DAEMON@{reporting_mta}>',
        f"To: {sender}",
        f"Subject: {SUBJECT_FAILED if failed else SUBJECT_DELAYED}",
        f"Date: {format_datetime(when)}",
        f"Message-ID: <{when:%Y%m%d%H%M%S}.{secrets.token_hex(8)}@{reporting_mta}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f"Content-Type: multipart/report; report-type={report_type};",
        f'\tboundary="{boundary}"',
        f"Content-Transfer-Encoding: {'8bit' if international else '7bit'}",
    ]
    notice = _text_part(_notice(reporting_mta, failed, delayed))
    report = _report_part(reporting_mta, recipients, arrival, queue_id, international=international)
    returned = _headers_part(original, international=international)

    out = bytearray()
    out += _lines(headers)
    out += b"\r\nThis is a MIME-encapsulated message.\r\n"
    for part in (notice, report, returned):
        out += f"\r\n--{boundary}\r\n".encode("ascii")
        out += part
    out += f"\r\n--{boundary}--\r\n".encode("ascii")
    return bytes(out)


# -- parts ---------------------------------------------------------------------


def _notice(
    reporting_mta: str, failed: list[FailedRecipient], delayed: list[FailedRecipient]
) -> str:
    """The human-readable explanation; names original recipients only."""
    lines = [f"This is the mail system at host {reporting_mta}.", ""]
    if failed:
        lines += [
            "I'm sorry to have to inform you that your message could not",
            "be delivered to one or more recipients. The headers of your",
            "message are attached below.",
            "",
        ]
    if delayed:
        banner = "#" * 68
        lines += [
            banner,
            "# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #",
            banner,
            "",
            "Your message could not be delivered yet to one or more recipients.",
            "Delivery will be retried; you will be told if it finally fails.",
            "",
        ]
    lines += [
        f"For further assistance, please send mail to postmaster@{reporting_mta}.",
        "",
        "                   The mail system",
        "",
    ]
    for title, group in (("Failed:", failed), ("Delayed:", delayed)):
        if not group:
            continue
        if failed and delayed:
            lines += [title, ""]
        for recipient in group:
            text = _diagnostic(recipient, ascii_only=False).partition(";")[2].strip()
            address = _clean(recipient.original_recipient, ascii_only=False)
            lines += textwrap.wrap(
                f"<{address}>: {text}",
                width=76,
                subsequent_indent="    ",
                break_on_hyphens=False,
            )
            lines.append("")
    return CRLF.join(lines)


def _report_part(
    reporting_mta: str,
    recipients: Sequence[FailedRecipient],
    arrival: datetime.datetime,
    queue_id: str | None,
    *,
    international: bool,
) -> bytes:
    ascii_only = not international
    kind = "global-delivery-status" if international else "delivery-status"
    fields = [f"Reporting-MTA: dns; {reporting_mta}"]
    if queue_id:
        fields.append(f"X-Smtpy-Queue-ID: {_clean(queue_id, ascii_only=True)}")
    fields.append(f"Arrival-Date: {format_datetime(_aware(arrival))}")
    for recipient in recipients:
        address = _address_field(recipient.original_recipient, ascii_only=ascii_only)
        fields += [
            "",
            f"Original-Recipient: {address}",
            f"Final-Recipient: {address}",
            f"Action: {recipient.action}",
            f"Status: {recipient.status}",
        ]
        if recipient.remote_mta:
            fields.append(f"Remote-MTA: dns; {_remote_name(recipient.remote_mta)}")
        fields.append(_fold("Diagnostic-Code", _diagnostic(recipient, ascii_only=ascii_only)))
    head = [
        "Content-Description: Delivery report",
        f"Content-Type: message/{kind}",
    ]
    if international:
        head.append("Content-Transfer-Encoding: 8bit")
    return _lines(head) + b"\r\n" + _lines(fields)


def _text_part(text: str) -> bytes:
    data = text.encode("utf-8")
    head = ["Content-Description: Notification"]
    if data.isascii():
        head += ["Content-Type: text/plain; charset=us-ascii", "Content-Transfer-Encoding: 7bit"]
        body = data
    else:
        head += [
            "Content-Type: text/plain; charset=utf-8",
            "Content-Transfer-Encoding: quoted-printable",
        ]
        body = _quoted_printable(data)
    return _lines(head) + b"\r\n" + body + b"\r\n"


def _headers_part(original: bytes, *, international: bool) -> bytes:
    """The original header block, line endings made CRLF, 7-bit safe unless international."""
    match = _HEADER_END.search(original)
    block = original[: match.start()] if match else original
    block = _LINE_END.sub(b"\r\n", block).rstrip(b"\r\n") + b"\r\n"
    head = ["Content-Description: Undelivered Message Headers"]
    too_long = any(len(line) > 998 for line in block.split(b"\r\n"))
    if international:
        head.append("Content-Type: message/global-headers")
        if not block.isascii():
            head.append("Content-Transfer-Encoding: 8bit")
        body = block
    elif block.isascii() and not too_long:
        head += ["Content-Type: text/rfc822-headers", "Content-Transfer-Encoding: 7bit"]
        body = block
    else:
        head += [
            "Content-Type: text/rfc822-headers; charset=utf-8",
            "Content-Transfer-Encoding: quoted-printable",
        ]
        body = _quoted_printable(block)
    return _lines(head) + b"\r\n" + body


# -- fields --------------------------------------------------------------------


def _diagnostic(recipient: FailedRecipient, *, ascii_only: bool) -> str:
    """The diagnostic with the final recipient replaced by the original one."""
    text = recipient.diagnostic
    if recipient.final_recipient:
        text = re.sub(
            re.escape(recipient.final_recipient),
            lambda _m: recipient.original_recipient,
            text,
            flags=re.IGNORECASE,
        )
    text = _clean(text, ascii_only=ascii_only)
    if ";" not in text:
        text = f"X-Smtpy; {text}"  # RFC 3464: diagnostic-type ";" *text
    if len(text) > MAX_FIELD:
        text = text[: MAX_FIELD - 3] + "..."
    return text


def _address_field(address: str, *, ascii_only: bool) -> str:
    address = _clean(address, ascii_only=ascii_only)
    return f"rfc822; {address}" if address.isascii() else f"utf-8; {address}"


def _remote_name(remote: str) -> str:
    """`mx.example.org[192.0.2.1]` → `mx.example.org` (RFC 3464 dns name)."""
    remote = _clean(remote, ascii_only=True)
    match = _REMOTE.match(remote)
    return match.group("name") if match else remote


def _clean(text: str, *, ascii_only: bool) -> str:
    """One line: control characters become spaces; backslash-escape non-ASCII if asked."""
    text = _CONTROL.sub(" ", text).strip()
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if ascii_only:
        text = text.encode("ascii", "backslashreplace").decode("ascii")
    return text


def _fold(name: str, value: str) -> str:
    """`Name: value`, folded at spaces so lines stay near 78 characters."""
    lines: list[str] = []
    current = f"{name}:"
    for index, word in enumerate(value.split()):
        if index and len(current) + 1 + len(word) > 78:
            lines.append(current)
            current = f" {word}"
        else:
            current = f"{current} {word}"
    lines.append(current)
    return CRLF.join(lines)


# -- bytes ---------------------------------------------------------------------


def _lines(lines: Sequence[str]) -> bytes:
    return "".join(line + CRLF for line in lines).encode("utf-8")


def _quoted_printable(data: bytes) -> bytes:
    """RFC 2045 quoted-printable with CRLF line ends."""
    lf = _LINE_END.sub(b"\n", data)
    encoded = binascii.b2a_qp(lf, quotetabs=False, istext=True, header=False)
    return encoded.replace(b"\n", b"\r\n")


def _aware(moment: datetime.datetime) -> datetime.datetime:
    """Naive datetimes are taken as UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=datetime.UTC)
