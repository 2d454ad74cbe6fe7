"""Keep forwarded mail passing DMARC: the From rewrite itself, on delivery (pure).

The decision is taken at reception (`smtpy.checks.from_decision`: p=quarantine
or p=reject and no aligned DKIM signature that survives forwarding) and
recorded in an `X-Smtpy-From-Rewrite` field; the delivery worker applies it
per alias domain (a message for two alias domains gets one From per domain):
From becomes an address of the alias domain, with the original in Reply-To
(unless the message has one) and in X-Original-From.

The new address is the alias address the message was sent to (its original
recipient, e.g. `team@example.org`): it is on the alias domain, so the
forwarder's DKIM signature aligns with it, and a reply sent to it reaches the
same alias, that is the person who received the message. Replies normally go
to Reply-To, the original author.
"""

from __future__ import annotations

import contextlib
from email.header import decode_header, make_header
from email.utils import formataddr, getaddresses

from smtpy.checks.auth_results import FROM_REWRITE_FIELD
from smtpy.mail.headers import Field, header_fields, join_fields, split_message, unfolded

__all__ = ["DEFAULT_DISPLAY", "rewrite_from", "wants_rewrite"]

DEFAULT_DISPLAY = "{name} via smtpy"


def wants_rewrite(data: bytes) -> bool:
    """Whether the first decision field of `data` says to rewrite From."""
    name = FROM_REWRITE_FIELD.lower()
    head, _ = split_message(data)
    for field in header_fields(head):
        if field.name == name:
            return field.value.strip().lower().startswith(b"yes")
    return False


def _display_name(value: str) -> tuple[str, str]:
    """(display name, address) of a From value; RFC 2047 words decoded."""
    pairs = getaddresses([value])
    name, address = pairs[0] if pairs else ("", "")
    if "=?" in name:
        with contextlib.suppress(ValueError, LookupError, UnicodeError):
            name = str(make_header(decode_header(name)))
    return name.strip(), address.strip()


def rewrite_from(data: bytes, *, address: str, display: str = DEFAULT_DISPLAY) -> bytes:
    """`data` with From rewritten to `address`; the same bytes if it has no From.

    `display` is the new display name; "{name}" in it becomes the original
    display name, or the original address when there is none.
    """
    head, rest = split_message(data)
    fields = header_fields(head)
    froms = [f for f in fields if f.name == "from"]
    if not froms:
        return data
    original = unfolded(froms[0].raw.partition(b":")[2]).strip()
    original_text = original.decode("utf-8", "replace")
    name, original_address = _display_name(original_text)
    shown = display.replace("{name}", name or original_address or "unknown sender")
    new_from = formataddr((shown, address), charset="utf-8")
    added = [Field("from", f"From: {new_from}\r\n".encode())]
    if not any(f.name == "reply-to" for f in fields):
        added.append(Field("reply-to", b"Reply-To: " + original + b"\r\n"))
    added.append(Field("x-original-from", b"X-Original-From: " + original + b"\r\n"))
    out: list[Field] = []
    for field in fields:
        if field is froms[0]:
            out.extend(added)
        elif field.name in ("from", "x-original-from"):
            continue
        else:
            out.append(field)
    return join_fields(out) + rest
