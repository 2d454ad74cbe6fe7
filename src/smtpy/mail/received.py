"""What smtpy adds to a message it forwards: the Received header (pure functions).

SRS rewriting of the envelope lives in `smtpy.route.srs`, DKIM signing in
`smtpy.dkim.sign`; this module holds the header text and the loop counter.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import UTC, datetime
from email.utils import format_datetime

MAX_RECEIVED = 25

_RECEIVED = re.compile(rb"^received[ \t]*:", re.IGNORECASE | re.MULTILINE)
_EMPTY_LINE = re.compile(rb"\n\r?\n")
_SAFE = re.compile(r"[^\x21-\x7e]")  # outside a comment: no spaces either
_SAFE_IN_COMMENT = re.compile(r"[^\x20-\x7e]")


def header_section(data: bytes) -> bytes:
    """The header lines of a message, each with its line ending (up to the first empty line)."""
    if data.startswith((b"\r\n", b"\n")):
        return b""  # no header at all: everything is body
    empty = _EMPTY_LINE.search(data)
    return data if empty is None else data[: empty.start() + 1]


def count_received(data: bytes) -> int:
    return len(_RECEIVED.findall(header_section(data)))


def _clean(text: str, limit: int = 200, *, comment: bool = False) -> str:
    """Make text safe in a header: one line, no comment delimiters or quoting."""
    text = text.replace("(", "[").replace(")", "]").replace("\\", "?")
    return (_SAFE_IN_COMMENT if comment else _SAFE).sub("?", text)[:limit]


def _address_literal(client_ip: str | None) -> str:
    """RFC 5321 §4.1.3: `[192.0.2.1]`, `[IPv6:2001:db8::1]`."""
    try:
        address = ipaddress.ip_address(client_ip or "")
    except ValueError:
        return f"[{_clean(client_ip or 'unknown', 64)}]"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return f"[{address.ipv4_mapped}]"
        return f"[IPv6:{address}]"
    return f"[{address}]"


def protocol(*, esmtp: bool, tls: bool, smtputf8: bool) -> str:
    """The `with` keyword of RFC 3848: SMTP, ESMTP, ESMTPS, UTF8SMTP, UTF8SMTPS."""
    if smtputf8:
        return "UTF8SMTPS" if tls else "UTF8SMTP"
    if not esmtp:
        return "SMTP"
    return "ESMTPS" if tls else "ESMTP"


def received_header(
    *,
    hostname: str,
    helo: str | None,
    client_ip: str | None,
    queue_id: str,
    with_protocol: str,
    tls: str | None = None,
    recipient: str | None = None,
    now: datetime | None = None,
) -> bytes:
    """An RFC 5321 §4.4 trace header, folded, CRLF-terminated."""
    when = format_datetime(now or datetime.now(UTC))
    source = f"from {_clean(helo or 'unknown', 100)} ({_address_literal(client_ip)})"
    lines = [f"Received: {source}"]
    by = f"by {hostname} (smtpy) with {with_protocol}"
    if tls:
        by += f" ({_clean(tls, comment=True)})"
    lines.append(f"{by} id {queue_id}")
    if recipient and recipient.isascii():
        lines.append(f"for <{_clean(recipient, 300)}>;")
    else:
        lines[-1] += ";"
    lines.append(when)
    return ("\r\n\t".join(lines) + "\r\n").encode("utf-8")
