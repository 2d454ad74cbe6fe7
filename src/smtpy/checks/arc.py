"""ARC chain validation (RFC 8617) of an incoming message.

    chain = await verify_chain(lookups, message)
    chain.result        # "none", "pass" or "fail"
    chain.vouches(trusted={"forwarder.example"})   # a trusted sealer saw DMARC pass

Keys of every ARC-Seal and ARC-Message-Signature are fetched first through the
daemon's cached resolver. The validation (RFC 8617 §5.2) then runs on
`smtpy.dkim.verify` (OpenSSL): the sets must be complete and numbered
1..N, cv= must be none for the first and pass for the others, the newest
ARC-Message-Signature and every ARC-Seal must verify. A key this module cannot
read sends the message to dkimpy's ARC verifier instead.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

from smtpy.checks.dkim import THREAD_THRESHOLD
from smtpy.checks.dns_keys import FetchedKeys, fetch_keys, key_name, parse_tags
from smtpy.dkim import verify as dkimcrypto
from smtpy.dns import Lookups
from smtpy.mail.headers import Field, Parsed, parse

__all__ = ["ARC_FIELDS", "ArcChain", "ArcSet", "reports_dmarc_pass", "verify_chain"]

ArcStatus = Literal["none", "pass", "fail"]
ARC_FIELDS = frozenset({"arc-seal", "arc-message-signature", "arc-authentication-results"})
MAX_INSTANCE = 50

_quiet = logging.getLogger("smtpy.dkimpy.arc")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False
_INSTANCE = re.compile(rb"(?:^|;)\s*i\s*=\s*(\d+)")
_DMARC_PASS = re.compile(rb"\s*dmarc\s*=\s*pass\b", re.IGNORECASE)
_QUOTED = re.compile(rb'"(?:[^"\\]|\\.)*"')
_COMMENT = re.compile(rb"\([^()]*\)")


@dataclass(frozen=True)
class ArcSet:
    """One verified ARC set: its instance, the sealer's domain and its AAR value."""

    instance: int
    sealer: str  # d= of the ARC-Seal
    aar: bytes


@dataclass(frozen=True)
class ArcChain:
    result: ArcStatus
    sets: tuple[ArcSet, ...]  # newest first; empty unless the chain was read
    reason: str

    @property
    def last_sealer(self) -> str | None:
        return self.sets[0].sealer if self.sets else None

    def vouches(self, trusted: Collection[str]) -> str | None:
        """The trusted sealer whose ARC-Authentication-Results records dmarc=pass, if the
        chain is valid; None otherwise."""
        if self.result != "pass":
            return None
        wanted = {d.lower().rstrip(".") for d in trusted}
        for arc_set in self.sets:
            if arc_set.sealer in wanted and reports_dmarc_pass(arc_set.aar):
                return arc_set.sealer
        return None


def reports_dmarc_pass(results: bytes) -> bool:
    """Whether an ARC-Authentication-Results value holds a `dmarc=pass` result, not
    counting quoted strings and comments (which may echo what a sender wrote)."""
    text = _QUOTED.sub(b'""', results)
    previous = None
    while previous != text:  # innermost comments first
        previous, text = text, _COMMENT.sub(b" ", text)
    return any(_DMARC_PASS.match(part) for part in text.split(b";"))


async def verify_chain(lookups: Lookups, message: bytes | Parsed) -> ArcChain:
    """Validate the ARC chain of `message` (CRLF line endings). Never raises."""
    parsed = message if isinstance(message, Parsed) else parse(message)
    names = []
    count = 0
    for field in parsed.fields:
        if field.name in ("arc-seal", "arc-message-signature"):
            count += 1
            tags = parse_tags(field.value)
            if b"s" in tags and b"d" in tags:
                names.append(key_name(tags[b"s"], tags[b"d"]))
        elif field.name == "arc-authentication-results":
            count += 1
    if count == 0:
        return ArcChain("none", (), "no ARC header fields")
    if count > 3 * MAX_INSTANCE:
        return ArcChain("fail", (), "more than 50 ARC sets")
    keys = await fetch_keys(lookups, names)
    if keys.failures:
        # RFC 8617 §5.2: a lookup that fails makes the chain fail validation.
        return ArcChain("fail", (), next(iter(keys.failures.values())))
    if len(parsed.data) > THREAD_THRESHOLD:
        return await asyncio.to_thread(_verify, parsed, keys)
    return _verify(parsed, keys)


def _verify(parsed: Parsed, keys: FetchedKeys) -> ArcChain:
    fast = _verify_fast(parsed, keys)
    if fast is not None:
        return fast
    import dkim  # dkimpy, for what the OpenSSL path leaves to it: loaded only then

    try:
        cv, results, reason = dkim.ARC(parsed.data, logger=_quiet).verify(dnsfunc=keys.dnsfunc())
    except dkim.DKIMException as exc:
        return ArcChain("fail", (), str(exc)[:200])
    except Exception as exc:  # dkimpy on malformed input
        return ArcChain("fail", (), f"{type(exc).__name__}: {str(exc)[:150]}")
    sets = tuple(
        ArcSet(
            instance=int(r["instance"]),
            sealer=bytes(r.get("as-domain") or b"").decode("ascii", "replace").lower(),
            aar=bytes(r.get("aar-value") or b""),
        )
        for r in results
    )
    if cv == dkim.CV_Pass:
        return ArcChain("pass", sets, "chain verified")
    if cv == dkim.CV_None:
        return ArcChain("none", sets, str(reason))
    return ArcChain("fail", sets, str(reason))


def _fail(reason: str, sets: tuple[ArcSet, ...] = ()) -> ArcChain:
    return ArcChain("fail", sets, reason)


def _verify_fast(parsed: Parsed, keys: FetchedKeys) -> ArcChain | None:
    """RFC 8617 §5.2 on OpenSSL; None when a key needs dkimpy."""
    fields = parsed.fields
    sets: dict[int, dict[str, int]] = {}
    for position, field in enumerate(fields):
        if field.name not in ARC_FIELDS:
            continue
        match = _INSTANCE.search(field.value)
        if match is None:
            return _fail(f"{field.name} without an instance number")
        instance = sets.setdefault(int(match.group(1)), {})
        if field.name in instance:
            return _fail(f"two {field.name} fields with i={match.group(1).decode()}")
        instance[field.name] = position
    newest = max(sets)
    if newest > MAX_INSTANCE:
        return _fail(f"more than {MAX_INSTANCE} ARC sets")
    if sorted(sets) != list(range(1, newest + 1)) or any(len(s) != 3 for s in sets.values()):
        return _fail("the ARC sets are incomplete or not numbered 1..N")
    seals = {i: parse_tags(fields[sets[i]["arc-seal"]].value) for i in sets}
    verified = tuple(
        ArcSet(
            i,
            seals[i].get(b"d", b"").decode("ascii", "replace").lower(),
            fields[sets[i]["arc-authentication-results"]].value.strip(),
        )
        for i in range(newest, 0, -1)
    )
    if seals[newest].get(b"cv", b"").lower() == b"fail":
        return _fail(f"ARC-Seal i={newest} says the chain had already failed", verified)
    for i, tags in seals.items():
        if tags.get(b"cv", b"").lower() != (b"none" if i == 1 else b"pass"):
            return _fail(f"ARC-Seal i={i} has an invalid cv=", verified)

    ams_position = sets[newest]["arc-message-signature"]
    ams = parse_tags(fields[ams_position].value)
    record = _record(keys, ams)
    if record is None:
        return _fail(f"no key for ARC-Message-Signature i={newest}", verified)
    outcome = dkimcrypto.verify(
        fields, parsed.body, ams_position, ams, record, arc=True, body_hashes=parsed.body_hashes
    )
    if outcome is None:
        return None
    if outcome[0] != "pass":
        return _fail(f"ARC-Message-Signature i={newest}: {outcome[1]}", verified)

    for i in range(newest, 0, -1):
        tags = seals[i]
        if b"h" in tags or not all(t in tags for t in (b"a", b"b", b"d", b"s")):
            return _fail(f"ARC-Seal i={i} is malformed", verified)
        record = _record(keys, tags)
        if record is None:
            return _fail(f"no key for ARC-Seal i={i}", verified)
        key = dkimcrypto.public_key(record, tags[b"a"].lower())
        if key is None:
            return None
        if not isinstance(key, dkimcrypto.PublicKey):
            return _fail(f"ARC-Seal i={i}: {key[1]}", verified)
        hasher = hashlib.sha256()
        for j in range(1, i + 1):
            for name in ("arc-authentication-results", "arc-message-signature", "arc-seal"):
                field = fields[sets[j][name]]
                if j == i and name == "arc-seal":
                    own = Field(field.name, dkimcrypto.without_b(field.raw))
                    hasher.update(dkimcrypto.relaxed_field(own).removesuffix(b"\r\n"))
                else:
                    hasher.update(dkimcrypto.relaxed_field(field))
        try:
            signature = base64.b64decode(b"".join(tags[b"b"].split()), validate=True)
        except (binascii.Error, ValueError):
            return _fail(f"ARC-Seal i={i} has invalid base64 in b=", verified)
        status, reason = dkimcrypto.check(key, signature, hasher.digest())
        if status != "pass":
            return _fail(f"ARC-Seal i={i}: {reason}", verified)
    return ArcChain("pass", verified, "chain verified")


def _record(keys: FetchedKeys, tags: dict[bytes, bytes]) -> str | None:
    if b"s" not in tags or b"d" not in tags:
        return None
    return keys.records.get(key_name(tags[b"s"], tags[b"d"]))
