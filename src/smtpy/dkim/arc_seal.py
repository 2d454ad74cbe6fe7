"""ARC sealing on delivery (RFC 8617): the ARC set smtpy adds to what it forwards.

    key = signer.seal_key()                       # the alias domain's DKIM key
    wire = seal(message, key, results=stored) + message

The ARC set (ARC-Seal, ARC-Message-Signature, ARC-Authentication-Results, in
that order on top of the message) gets instance i = the highest instance on
the message + 1. ARC-Authentication-Results copies `results`: the value of
the Authentication-Results field the receiving node computed, which the queue
keeps with the message (never one read back from the message, which a client
could have forged under any node's name). Its arc= result gives the chain
validation status cv= (none for the first set, pass or fail after; a set with
cv=fail covers only itself, RFC 8617 §5.1.2). Without `results`, the first
Authentication-Results field of `authserv_id` in the message is used: only
for a message whose such fields are known to be ours.
Not sealed: a message without results (the checks were off, or it is a bounce
smtpy made), a chain already at instance 50, and a chain whose newest seal
already says cv=fail (RFC 8617 §5.1).

Signing reuses `smtpy.dkim.sign`: relaxed canonicalization, the same header list
and OpenSSL's RSA through the parsed key, so a seal costs two private-key
operations and no pure-Python RSA. Pure: no I/O.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time

from smtpy.dkim.sign import (
    PreparedKey,
    canonical_body,
    canonical_headers,
    compress_wsp,
    fold,
    signed_names,
    split_fields,
)
from smtpy.mail.framing import crlf_line_endings

__all__ = ["MAX_INSTANCE", "chain_status", "seal"]

MAX_INSTANCE = 50
_ARC_NAMES = (b"arc-authentication-results", b"arc-message-signature", b"arc-seal")
_INSTANCE = re.compile(rb"^\s*i\s*=\s*(\d+)\s*(?:;|$)")
_CV_FAIL = re.compile(rb"(?:^|;)\s*cv\s*=\s*fail\b", re.IGNORECASE)
_ARC_RESULT = re.compile(rb"(?:^|[;\s])arc\s*=\s*([a-z]+)", re.IGNORECASE)
_LEADING_COMMENT = re.compile(rb"^\s*(?:\([^()]*\)\s*)*")
_AAR = b"ARC-Authentication-Results"
_AMS = b"ARC-Message-Signature"
_AS = b"ARC-Seal"


def _relaxed(name: bytes, value: bytes) -> bytes:
    """The relaxed canonical form of one field given its (folded) value."""
    value = value.replace(b"\r\n", b"").replace(b"\n", b"")
    return name.lower() + b":" + compress_wsp(value).strip(b" ") + b"\r\n"


def _own_results(fields: list[tuple[bytes, bytes]], authserv_id: str) -> bytes | None:
    """The value of the first Authentication-Results field of `authserv_id` (unfolded)."""
    ours = authserv_id.lower().encode("ascii", "replace")
    for name, value in fields:
        if name != b"authentication-results":
            continue
        rest = value[_LEADING_COMMENT.match(value).end() :]  # type: ignore[union-attr]
        token = re.split(rb"[;\s(]", rest.strip(), maxsplit=1)[0].lower().rstrip(b".")
        if token == ours:
            return value.strip()
    return None


def chain_status(instance: int, results: bytes) -> bytes:
    """cv= for a new set: none for the first, else what our check found (pass or fail)."""
    if instance == 1:
        return b"none"
    match = _ARC_RESULT.search(results)
    return b"pass" if match and match.group(1).lower() == b"pass" else b"fail"


def seal(
    message: bytes,
    key: PreparedKey,
    *,
    results: str | bytes | None = None,
    authserv_id: str | None = None,
    timestamp: int | None = None,
    body_hash: bytes | None = None,
    crlf: bool = False,
) -> bytes:
    """The ARC set for `message` signed with `key`, CRLF-terminated fields to put
    on top of it; b"" when the message cannot be sealed (see the module doc).

    `body_hash` is `smtpy.dkim.sign.message_body_hash(message)` if the caller has it;
    `crlf` says the message has CRLF line endings only (no need to check)."""
    if not crlf:
        message = crlf_line_endings(message)
    fields, body = split_fields(message)
    if isinstance(results, str):
        results = results.encode("utf-8")
    elif results is None and authserv_id is not None:
        results = _own_results(fields, authserv_id)
    if not results:
        return b""
    sets: dict[int, dict[bytes, bytes]] = {}
    for name, value in fields:
        if name in _ARC_NAMES:
            match = _INSTANCE.match(value)
            instance = int(match.group(1)) if match else 0
            sets.setdefault(instance, {}).setdefault(name, value)
    instance = max(sets, default=0) + 1
    if instance > MAX_INSTANCE:
        return b""
    newest_seal = sets.get(instance - 1, {}).get(b"arc-seal", b"")
    if _CV_FAIL.search(newest_seal):
        return b""  # RFC 8617 §5.1: a chain that already failed gets no further set
    cv = chain_status(instance, results)
    when = str(int(time.time()) if timestamp is None else int(timestamp)).encode("ascii")
    d = key.domain.encode("ascii")
    s = key.selector.encode("ascii")
    a = key.a_tag.encode("ascii")

    aar_value = b"i=%d; " % instance + results
    aar = _AAR + b": " + aar_value.replace(b";\t", b";\r\n\t") + b"\r\n"

    names = signed_names(fields)
    if body_hash is None:
        body_hash = base64.b64encode(hashlib.sha256(canonical_body(body)).digest())
    ams_value = b"i=%d; a=%s; c=relaxed/relaxed; d=%s; s=%s; t=%s; h=%s; bh=%s; b=" % (
        instance,
        a,
        d,
        s,
        when,
        b" : ".join(names),
        body_hash,
    )
    digest = hashlib.sha256(canonical_headers(fields, names))
    digest.update(_relaxed(_AMS, ams_value).removesuffix(b"\r\n"))
    ams_value += base64.b64encode(key.sign_digest(digest.digest()))
    ams = _AMS + b": " + fold(ams_value, _AMS)

    seal_input = []
    if cv != b"fail":
        for number in range(1, instance):
            prior = sets.get(number, {})
            for name, field_name in zip(_ARC_NAMES, (_AAR, _AMS, _AS), strict=True):
                if name in prior:
                    seal_input.append(_relaxed(field_name, prior[name]))
    seal_input.append(_relaxed(_AAR, aar_value))
    seal_input.append(_relaxed(_AMS, ams.partition(b":")[2]))
    as_value = b"i=%d; cv=%s; a=%s; d=%s; s=%s; t=%s; b=" % (instance, cv, a, d, s, when)
    seal_input.append(_relaxed(_AS, as_value).removesuffix(b"\r\n"))
    as_value += base64.b64encode(key.sign_digest(hashlib.sha256(b"".join(seal_input)).digest()))
    arc_seal = _AS + b": " + fold(as_value, _AS)
    return arc_seal + ams + aar
