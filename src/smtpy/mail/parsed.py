"""A message taken apart for a webhook destination: the `data` of its `message.received`.

    data = message_payload(wire, mail_from="alice@example.net",
                           rcpt_to=["orders@example.org"])
    data["subject"], data["text"], data["attachments"][0]["content_base64"]

Pure: bytes in, a JSON-ready dict out, built with the standard library's
`email` package (policy.default). It never raises for what a message
contains: a header the parser cannot make sense of is given as written, a
part that cannot be decoded is given as its raw bytes, a charset nobody
knows is read as UTF-8 with replacement characters.

Everything is capped (`MAX_TEXT`, `MAX_HTML`, `MAX_HEADERS`,
`MAX_ATTACHMENTS`), and `truncated` says what was cut: `text` and `html`
when the body was cut short, `headers` when headers were left out, and
`attachments` the names of the attachments whose content was left out (their
entry stays, with its size and `content_base64` null). A big message is
never refused: it arrives cut, saying so.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator, Sequence
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesParser
from typing import Any

from smtpy.mail.addresses import split_address

__all__ = [
    "MAX_ATTACHMENTS",
    "MAX_HEADERS",
    "MAX_HTML",
    "MAX_TEXT",
    "destination_domain",
    "is_url",
    "message_payload",
    "url_domain",
]

MAX_TEXT = 1024 * 1024  # characters of the text body at most
MAX_HTML = 2 * 1024 * 1024  # characters of the HTML body at most
MAX_HEADERS = 256 * 1024  # characters of header names and values at most
MAX_ATTACHMENTS = 10 * 1024 * 1024  # characters of base64, all attachments together
MAX_PARTS = 1000  # MIME parts looked at, at most (a message of a million empty parts)
MAX_DEPTH = 50  # multipart nesting followed, at most
MAX_PAYLOAD = MAX_TEXT * 4 + MAX_HTML * 4 + MAX_HEADERS * 4 + MAX_ATTACHMENTS + 1024 * 1024
"""Bytes of JSON the payload can take at most (every character escaped, with room)."""

_URL_SCHEMES = ("https://", "http://")


def is_url(destination: str) -> bool:
    """Whether an alias destination is a webhook URL rather than a mail address."""
    return destination[:8].lower().startswith(_URL_SCHEMES)


def url_domain(url: str) -> str:
    """What the queue groups a URL destination's deliveries by: `https://host[:port]`.

    It never equals a mail domain (so a URL is never put in one SMTP
    transaction with addresses), and it fits the queue's 253-character column.
    """
    scheme, _, rest = url.partition("://")
    authority = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    return f"{scheme.lower()}://{authority.rpartition('@')[2].lower()}"[:253]


def destination_domain(destination: str) -> str:
    """What the queue groups a destination's deliveries by: a mail address's domain, or
    a URL's `url_domain`."""
    return url_domain(destination) if is_url(destination) else split_address(destination)[1]


def message_payload(
    data: bytes,
    *,
    mail_from: str,
    rcpt_to: Sequence[str],
    authentication_results: Sequence[str] = (),
    max_text: int = MAX_TEXT,
    max_html: int = MAX_HTML,
    max_headers: int = MAX_HEADERS,
    max_attachments: int = MAX_ATTACHMENTS,
) -> dict[str, Any]:
    """The parsed message as a webhook destination receives it (see the module's doc).

    `authentication_results` are results found on reception (this node's),
    listed before the message's own Authentication-Results headers. The caps
    default to the module's constants.
    """
    message = BytesParser(policy=policy.default).parsebytes(data)
    truncated: dict[str, Any] = {
        "text": False,
        "html": False,
        "headers": False,
        "attachments": [],
    }
    headers: list[list[str]] = []
    used = 0
    for name, value in _headers(message):
        used += len(name) + len(value)
        if used > max_headers:
            truncated["headers"] = True
            break
        headers.append([name, value])
    text: str | None = None
    html: str | None = None
    attachments: list[dict[str, Any]] = []
    base64_used = 0
    for part, attached in _leaves(message):
        content_type = _content_type(part)
        if not attached and content_type == "text/plain" and text is None:
            text = _text(part)
            if len(text) > max_text:
                text, truncated["text"] = text[:max_text], True
            continue
        if not attached and content_type == "text/html" and html is None:
            html = _text(part)
            if len(html) > max_html:
                html, truncated["html"] = html[:max_html], True
            continue
        content = _content(part)
        filename = _filename(part)
        encoded_size = (len(content) + 2) // 3 * 4
        entry: dict[str, Any] = {
            "filename": filename,
            "content_type": content_type,
            "size": len(content),
            "content_base64": None,
        }
        if base64_used + encoded_size > max_attachments:
            truncated["attachments"].append(filename or f"(part {len(attachments) + 1})")
        else:
            base64_used += encoded_size
            entry["content_base64"] = base64.b64encode(content).decode("ascii")
        attachments.append(entry)
    return {
        "envelope": {"mail_from": mail_from, "rcpt_to": list(rcpt_to)},
        "message_id": _one(message, "Message-ID"),
        "subject": _one(message, "Subject"),
        "from": _one(message, "From"),
        "to": _addresses(message, "To"),
        "cc": _addresses(message, "Cc"),
        "date": _one(message, "Date"),
        "headers": headers,
        "text": text,
        "html": html,
        "attachments": attachments,
        "authentication_results": [
            *authentication_results,
            *(_all(message, "Authentication-Results")),
        ],
        "truncated": truncated,
    }


def _raw(value: Any) -> str:
    """A header value as written, unfolded, as text."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return " ".join(str(value).split())


def _headers(message: Message) -> Iterator[tuple[str, str]]:
    for name, raw in message.raw_items():
        try:
            value = str(message.policy.header_fetch_parse(name, raw))
        except Exception:  # a header the parser chokes on: as written
            value = _raw(raw)
        yield name, " ".join(value.split()) if "\n" in value else value


def _all(message: Message, name: str) -> list[str]:
    wanted = name.lower()
    return [value for n, value in _headers(message) if n.lower() == wanted]


def _one(message: Message, name: str) -> str | None:
    values = _all(message, name)
    return values[0].strip() if values else None


def _addresses(message: Message, name: str) -> list[str]:
    """Each address of every `name` header (`Name <a@b>`), or the raw values if unparsable."""
    wanted = name.lower()
    found: list[str] = []
    for raw_name, raw in message.raw_items():
        if raw_name.lower() != wanted:
            continue
        try:
            header: Any = message.policy.header_fetch_parse(raw_name, raw)
            found.extend(str(address) for address in header.addresses)
        except Exception:
            found.append(_raw(raw))
    return found


def _leaves(message: Message) -> Iterator[tuple[Message, bool]]:
    """Each part that holds content, with whether it is an attachment, depth-first."""
    count = 0
    stack: list[tuple[Message, int]] = [(message, 0)]
    while stack and count < MAX_PARTS:
        part, depth = stack.pop()
        count += 1
        if part.get_content_maintype() == "multipart" and depth < MAX_DEPTH:
            children = part.get_payload()
            if isinstance(children, list) and children:
                stack.extend(
                    (child, depth + 1) for child in reversed(children) if isinstance(child, Message)
                )
                continue
            if not isinstance(children, list):  # a multipart with no parts it could find
                yield part, True
            continue
        yield part, _attached(part)


def _attached(part: Message) -> bool:
    try:
        disposition = part.get_content_disposition()
        filename = part.get_filename()
    except Exception:
        return True
    if disposition == "attachment" or filename is not None:
        return True
    return _content_type(part) not in ("text/plain", "text/html")


def _content_type(part: Message) -> str:
    try:
        return part.get_content_type()
    except Exception:
        return "application/octet-stream"


def _filename(part: Message) -> str | None:
    try:
        return part.get_filename()
    except Exception:
        return None


def _content(part: Message) -> bytes:
    """A part's content as bytes: decoded from its transfer encoding when that works."""
    try:
        if part.get_content_maintype() == "message" or part.is_multipart():
            inner = part.get_payload()
            if isinstance(inner, list):
                return b"".join(
                    p.as_bytes() if isinstance(p, Message) else b"" for p in inner
                ).rstrip(b"\n")
        decoded = part.get_payload(decode=True)
        if isinstance(decoded, bytes):
            return decoded
        raw = part.get_payload()
        return raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else b""
    except Exception:
        raw = part.get_payload()
        return raw.encode("utf-8", "replace") if isinstance(raw, str) else b""


def _text(part: Message) -> str:
    """A text part as a string, by its charset (unknown or wrong ones: UTF-8, replaced)."""
    if isinstance(part, EmailMessage):
        try:
            content = part.get_content()
        except Exception:  # an unknown charset, a broken encoding: decoded below
            content = None
        if isinstance(content, str):
            return content
    charset = "utf-8"
    try:
        charset = part.get_content_charset() or "utf-8"
        "".encode(charset)
    except Exception:
        charset = "utf-8"
    return _content(part).decode(charset, "replace")
