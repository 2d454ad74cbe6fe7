"""DKIM signing (RFC 6376, RFC 8463): rsa-sha256 and ed25519-sha256, relaxed/relaxed.

    signer = Signer([SigningKey("example.org", "smtpy202611", "rsa", pem)])  # parse once
    wire = signer.sign(message) + message   # DKIM-Signature field(s) go on top

`Signer` parses its keys once and signs each message with every key it holds:
the body is canonicalized and hashed once, and the selected header fields
once, then each key adds its own DKIM-Signature field. The private-key step
runs in OpenSSL through `cryptography`: an RSA-2048 signature is over ten
times faster than dkimpy's pure-Python RSA, and byte-identical to it
(`bench/bench_sign.py` prints the figures).

What is signed:

- The message as it goes on the wire: bare LF and CR line endings become
  CRLF (`smtpy.mail.framing.crlf_line_endings`, as DATA sends them) and a body
  that does not end with a line break gets one (SMTP adds it), so the
  signature verifies on what the receiver sees. A caller that has the
  message in CRLF form already says so (`crlf=True`) and saves the scan. Header fields and body
  may hold 8-bit UTF-8 (RFC 6532): canonicalization works on bytes.
- The header fields of `SIGNED_HEADERS` that the message has, each occurrence,
  in message order, plus one more `from` than there are From fields
  (over-signing): a From added later breaks the signature instead of
  changing what the reader sees.
- Tags, in dkimpy's order and with dkimpy's folding (lines of at most 74
  characters; within b= and bh= the base64 is folded anywhere):
  `v=1; a=...; c=relaxed/relaxed; d=...; i=@d; q=dns/txt; s=...; t=...;
  h=...; bh=...; b=...`. No l= (a body length limit lets others append
  content) and no x=.

The canonicalization and folding helpers are public for the ARC sealer
(`smtpy.dkim.arc_seal`), which signs with the same parsed keys.

Errors are `smtpy.errors.InvalidInput`: a key that does not parse or does not
fit its domain and selector (raised by `Signer()`), and a header section that
is not a list of `Name: value` fields (raised by `sign`; receive should have
refused such a message, and it can still be forwarded unsigned).
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

from smtpy.dkim.keys import Algorithm, check_algorithm, load_private_key, validate_selector
from smtpy.errors import InvalidInput
from smtpy.mail.framing import crlf_line_endings

__all__ = [
    "OVERSIGNED_HEADERS",
    "SIGNED_HEADERS",
    "PreparedKey",
    "Signer",
    "SigningKey",
    "canonical_body",
    "canonical_headers",
    "compress_wsp",
    "fold",
    "message_body_hash",
    "signed_names",
    "split_fields",
]

#: Header fields signed when present: RFC 6376 §5.4.1's list plus
#: List-Unsubscribe-Post, which RFC 8058 requires to be signed.
SIGNED_HEADERS: frozenset[bytes] = frozenset(
    {
        b"from",
        b"sender",
        b"reply-to",
        b"subject",
        b"date",
        b"message-id",
        b"to",
        b"cc",
        b"mime-version",
        b"content-type",
        b"content-transfer-encoding",
        b"content-id",
        b"content-description",
        b"resent-date",
        b"resent-from",
        b"resent-sender",
        b"resent-to",
        b"resent-cc",
        b"resent-message-id",
        b"in-reply-to",
        b"references",
        b"list-id",
        b"list-help",
        b"list-unsubscribe",
        b"list-unsubscribe-post",
        b"list-subscribe",
        b"list-post",
        b"list-owner",
        b"list-archive",
    }
)
#: Header fields listed in h= once more than they occur, so none can be added.
OVERSIGNED_HEADERS: tuple[bytes, ...] = (b"from",)

_CRLF = b"\r\n"
_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+")
_DOMAIN_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_SIG_NAME = b"DKIM-Signature"
# dkimpy's folding: the first line holds 72 - len("DKIM-Signature") characters
# of value after "DKIM-Signature: ", the next ones 71 after the leading space.
_NEXT_WIDTH = 71
_PKCS1 = padding.PKCS1v15()
_PREHASHED_SHA256 = utils.Prehashed(hashes.SHA256())


@dataclass(frozen=True)
class SigningKey:
    """One DKIM key to sign with, as stored (see `smtpy.dkim.keys`)."""

    domain: str  # IDNA A-label
    selector: str
    algorithm: Algorithm
    private_key: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class PreparedKey:
    """A parsed key: the constant start of its tag list and its signing step."""

    tags: bytes  # "v=1; a=...; c=...; d=...; i=...; q=...; s=...; t="
    sign_digest: Callable[[bytes], bytes]  # SHA-256 digest of the header data -> b=
    domain: str = ""  # A-label, lower-case
    selector: str = ""
    a_tag: str = ""  # "rsa-sha256" or "ed25519-sha256"


class Signer:
    """Signs messages with a fixed set of DKIM keys, parsed once."""

    def __init__(self, keys: Sequence[SigningKey]) -> None:
        """Parse `keys`; raise `InvalidInput` if one of them is unusable.

        With no keys, `sign` returns an empty string.
        """
        self._keys = tuple(_prepare(key) for key in keys)

    def __repr__(self) -> str:
        return f"Signer({len(self._keys)} keys)"

    def __len__(self) -> int:
        """The number of keys (0: `sign` adds nothing)."""
        return len(self._keys)

    def seal_key(self) -> PreparedKey | None:
        """The key for ARC sealing (`smtpy.dkim.arc_seal`): the first RSA key, since
        RFC 8617 defines rsa-sha256 only (verifiers refuse Ed25519); None without one."""
        return next((key for key in self._keys if key.a_tag == "rsa-sha256"), None)

    def sign(
        self,
        message: bytes,
        *,
        timestamp: int | None = None,
        body_hash: bytes | None = None,
        crlf: bool = False,
    ) -> bytes:
        """Return the DKIM-Signature header fields for `message`, one per key.

        The result ends with CRLF and goes in front of the message; `message`
        may use LF or CRLF line endings. `timestamp` (Unix seconds, default
        now) goes into t=. `body_hash` is `message_body_hash(message)` when the
        caller has it already (the ARC seal needs the same one); `crlf` that
        the message has CRLF line endings only (no need to check).
        """
        if not self._keys:
            return b""
        if not crlf:
            message = crlf_line_endings(message)
        fields, body = split_fields(message)
        names = signed_names(fields)
        header_data = canonical_headers(fields, names)
        if body_hash is None:
            body_hash = base64.b64encode(hashlib.sha256(canonical_body(body)).digest())
        when = str(int(time.time()) if timestamp is None else int(timestamp)).encode("ascii")
        rest = b"; h=" + b" : ".join(names) + b"; bh=" + body_hash + b"; b="
        headers_hash = hashlib.sha256(header_data)
        signatures = []
        for key in self._keys:
            value = key.tags + when + rest
            hasher = headers_hash.copy()
            hasher.update(b"dkim-signature:" + value)  # relaxed form; b= empty, no CRLF
            value += base64.b64encode(key.sign_digest(hasher.digest()))
            signatures.append(_SIG_NAME + b": " + fold(value))
        return b"".join(signatures)


def _prepare(key: SigningKey) -> PreparedKey:
    algorithm = check_algorithm(key.algorithm)
    domain = _check_domain(key.domain)
    selector = validate_selector(key.selector)
    parsed = load_private_key(algorithm, key.private_key)
    sign_digest: Callable[[bytes], bytes]
    if isinstance(parsed, rsa.RSAPrivateKey):
        rsa_key = parsed

        def sign_digest(digest: bytes) -> bytes:
            # EMSA-PKCS1-v1_5 in OpenSSL: the same bytes as dkimpy's pure-Python RSA.
            return rsa_key.sign(digest, _PKCS1, _PREHASHED_SHA256)

        a_tag = "rsa-sha256"
    else:
        # RFC 8463: PureEdDSA over the SHA-256 hash of the header data.
        sign_digest = parsed.sign
        a_tag = "ed25519-sha256"
    tags = (
        f"v=1; a={a_tag}; c=relaxed/relaxed; d={domain}; i=@{domain}; q=dns/txt; s={selector}; t="
    )
    return PreparedKey(
        tags=tags.encode("ascii"),
        sign_digest=sign_digest,
        domain=domain,
        selector=selector,
        a_tag=a_tag,
    )


def _check_domain(domain: str) -> str:
    """Return the A-label `domain` lower-cased without a final dot, or raise."""
    shown = repr(domain[:80])
    name = domain.lower().removesuffix(".")
    if not name.isascii():
        raise InvalidInput(f"DKIM domain {shown} must be an A-label (xn--...), not a U-label")
    if len(name) > 253 or not all(_DOMAIN_LABEL.fullmatch(label) for label in name.split(".")):
        raise InvalidInput(f"DKIM domain {shown} is not a domain name")
    return name


def message_body_hash(message: bytes, *, crlf: bool = False) -> bytes:
    """The bh= value of a message: base64 SHA-256 of its relaxed canonical body."""
    if not crlf:
        message = crlf_line_endings(message)
    if message.startswith(_CRLF):
        body = message[2:]
    else:
        end = message.find(b"\r\n\r\n")
        body = b"" if end == -1 else message[end + 4 :]
    return base64.b64encode(hashlib.sha256(canonical_body(body)).digest())


def split_fields(message: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Split a CRLF message into (lower-case name, unfolded value) pairs and body."""
    if message.startswith(_CRLF):
        return [], message[2:]
    end = message.find(b"\r\n\r\n")
    if end == -1:
        head, body = message.removesuffix(_CRLF), b""
    else:
        head, body = message[:end], message[end + 4 :]
    fields: list[tuple[bytes, bytes]] = []
    for line in head.split(_CRLF):
        if line[:1] in (b" ", b"\t"):
            if not fields:
                raise InvalidInput("the message header starts with a continuation line")
            name, value = fields[-1]
            fields[-1] = (name, value + line)  # unfolding removes the CRLF
            continue
        name, colon, value = line.partition(b":")
        name = name.rstrip(b" \t")  # obsolete syntax: WSP before the colon
        if not colon or not _FIELD_NAME.fullmatch(name):
            raise InvalidInput(f"the message header has a line that is not a field: {line[:60]!r}")
        fields.append((name.lower(), value))
    return fields, body


def signed_names(fields: list[tuple[bytes, bytes]]) -> list[bytes]:
    """The h= list: signed fields in message order, over-signed ones once more."""
    names = [name for name, _value in fields if name in SIGNED_HEADERS]
    names.extend(OVERSIGNED_HEADERS)
    return names


def canonical_headers(fields: list[tuple[bytes, bytes]], names: list[bytes]) -> bytes:
    """The relaxed canonical form of the fields `names` selects (RFC 6376 §5.4.2).

    Each name takes the last occurrence not yet taken, from the bottom up; a
    name with no occurrence left adds nothing.
    """
    positions: dict[bytes, list[int]] = {}
    for index, (name, _value) in enumerate(fields):
        positions.setdefault(name, []).append(index)
    parts = []
    for name in names:
        left = positions.get(name)
        if not left:
            continue
        value = compress_wsp(fields[left.pop()][1])
        parts.append(name + b":" + value.strip(b" ") + _CRLF)
    return b"".join(parts)


def compress_wsp(data: bytes) -> bytes:
    """Turn every run of spaces and tabs into one space.

    bytes.replace runs at memory speed where a regular expression would stop
    at every space: each pass halves the runs, and runs are short.
    """
    if b"\t" in data:
        data = data.replace(b"\t", b" ")
    while b"  " in data:
        data = data.replace(b"  ", b" ")
    return data


def canonical_body(body: bytes) -> bytes:
    """The relaxed canonical form of a CRLF body (RFC 6376 §3.4.4)."""
    if not body:
        return b""
    if not body.endswith(_CRLF):
        body += _CRLF
    body = compress_wsp(body).replace(b" \r\n", _CRLF)  # runs are one space by now
    end = len(body)
    while body.endswith(b"\r\n\r\n", 0, end):
        end -= 2
    if end == 2:  # nothing but empty lines
        return b""
    return body[:end] if end < len(body) else body


def fold(value: bytes, name: bytes = _SIG_NAME) -> bytes:
    """Fold the value of a field `name` (DKIM-Signature) as dkimpy does, ending with CRLF.

    Lines break at spaces; a token longer than a line is cut anywhere only in
    b= and bh= (base64 admits folding white space), and is otherwise left
    whole. Unlike dkimpy, never leaves a line of white space alone or cuts
    the final CRLF in two.
    """
    first_width = 72 - len(name)
    if len(value) <= first_width:
        return value + _CRLF
    lines = []
    width = first_width
    rest = value
    in_base64 = False  # inside a b= or bh= token already cut once
    while len(rest) + 2 > width:
        cut = rest.rfind(b" ", 0, width)
        if cut > 0:
            lines.append(rest[:cut])
            rest = rest[cut + 1 :]
            in_base64 = False
        elif in_base64 or rest.startswith((b"b=", b"bh=")):
            if len(rest) <= width:
                break
            lines.append(rest[:width])
            rest = rest[width:]
            in_base64 = True
        else:
            cut = rest.find(b" ", width)
            if cut == -1:
                break
            lines.append(rest[:cut])
            rest = rest[cut + 1 :]
        width = _NEXT_WIDTH
    lines.append(rest)
    return b"\r\n ".join(lines) + _CRLF
