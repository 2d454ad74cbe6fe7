"""What smtpy adds to a message it forwards: the Received header (pure functions).

SRS rewriting of the envelope lives in `smtpy.srs`, DKIM signing in
`smtpy.sign`; this module holds the header text and the loop counter.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email.utils import format_datetime

MAX_RECEIVED = 25

_RECEIVED = re.compile(rb"^received[ \t]*:", re.IGNORECASE | re.MULTILINE)
_SAFE = re.compile(r"[^\x21-\x7e]")


def header_section(data: bytes) -> bytes:
    """The header lines of a message (up to the first empty line)."""
    for separator in (b"\r\n\r\n", b"\n\n"):
        end = data.find(separator)
        if end != -1:
            return data[: end + len(separator) // 2]
    return data


def count_received(data: bytes) -> int:
    return len(_RECEIVED.findall(header_section(data)))


def _clean(text: str, limit: int = 200) -> str:
    """Make client-supplied text safe inside a header comment."""
    return _SAFE.sub("?", text.replace("(", "[").replace(")", "]"))[:limit]


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
    source = f"from {_clean(helo or 'unknown', 100)} ([{_clean(client_ip or 'unknown', 64)}])"
    lines = [f"Received: {source}"]
    by = f"by {hostname} (smtpy) with {with_protocol}"
    if tls:
        by += f" ({_clean(tls)})"
    lines.append(f"{by} id {queue_id}")
    if recipient and recipient.isascii():
        lines.append(f"for <{_clean(recipient, 300)}>;")
    else:
        lines[-1] += ";"
    lines.append(when)
    return ("\r\n\t".join(lines) + "\r\n").encode("utf-8")
