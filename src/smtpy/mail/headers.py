"""The header section of a CRLF message as a list of raw fields (tolerant, pure).

Inbound mail may be malformed; these helpers never raise. A line that is
neither a field nor a continuation stays in the list under the name "" so
that removing fields never loses anything else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

__all__ = [
    "Field",
    "Parsed",
    "header_fields",
    "join_fields",
    "parse",
    "split_message",
    "unfolded",
    "without",
]


class Field(NamedTuple):
    """One header field: lower-case name and the raw bytes, continuation lines and CRLF included."""

    name: str
    raw: bytes

    @property
    def value(self) -> bytes:
        """The value after the colon, unfolded (CRLFs removed), not stripped."""
        return unfolded(self.raw.partition(b":")[2])


class Parsed(NamedTuple):
    """A message split once for every check: its fields, its body, the whole bytes."""

    fields: list[Field]
    body: bytes  # after the empty line
    data: bytes
    # Body hashes already computed, by (canonicalization, l=): DKIM and ARC share them.
    body_hashes: dict[tuple[bytes, int | None], bytes]


def parse(data: bytes) -> Parsed:
    head, rest = split_message(data)
    return Parsed(header_fields(head), rest[2:], data, {})


def unfolded(value: bytes) -> bytes:
    return value.replace(b"\r\n", b"").replace(b"\n", b"")


def split_message(data: bytes) -> tuple[bytes, bytes]:
    """(header section with its last CRLF, the rest starting with the empty line)."""
    if data.startswith(b"\r\n"):
        return b"", data
    end = data.find(b"\r\n\r\n")
    if end == -1:
        return data, b""
    return data[: end + 2], data[end + 2 :]


def header_fields(head: bytes) -> list[Field]:
    """The fields of a header section, in order."""
    raw: list[bytes] = []
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and raw:
            raw[-1] += line
        else:
            raw.append(line)
    fields = []
    for text in raw:
        name, colon, _ = text.partition(b":")
        fields.append(
            Field(name.rstrip(b" \t").lower().decode("ascii", "replace") if colon else "", text)
        )
    return fields


def join_fields(fields: list[Field]) -> bytes:
    return b"".join(f.raw for f in fields)


def without(data: bytes, drop: Callable[[Field], bool]) -> bytes:
    """`data` with the header fields `drop` selects removed; the same object if none is."""
    head, rest = split_message(data)
    fields = header_fields(head)
    kept = [f for f in fields if not drop(f)]
    if len(kept) == len(fields):
        return data
    return join_fields(kept) + rest
