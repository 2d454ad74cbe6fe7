"""DKIM verification (RFC 6376, RFC 8463) of every signature of a message.

    results = await verify_signatures(lookups, message)   # one DkimResult per signature

The keys of all signatures are fetched first, concurrently, through the
daemon's cached resolver (`smtpy.checks.dns_keys`); each signature is then
verified from those records by `smtpy.dkim.verify` (canonicalization
on bytes, RSA and Ed25519 in OpenSSL), or by dkimpy when the key is in a form
that module does not read. No DNS happens during verification. Messages above
`THREAD_THRESHOLD` bytes are verified in a worker thread rather than on the
event loop.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from smtpy.checks.dns_keys import FetchedKeys, fetch_keys, key_name, parse_tags
from smtpy.dkim import verify as dkimcrypto
from smtpy.dns import Lookups
from smtpy.mail.headers import Parsed, parse

if TYPE_CHECKING:
    import dkim

__all__ = ["MAX_SIGNATURES", "THREAD_THRESHOLD", "DkimResult", "verify_signatures"]

DkimStatus = Literal["pass", "fail", "neutral", "temperror", "permerror", "policy"]

MAX_SIGNATURES = 8  # signatures beyond this are reported as "policy", not verified
THREAD_THRESHOLD = 256 * 1024

_quiet = logging.getLogger("smtpy.dkimpy")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False


@dataclass(frozen=True)
class DkimResult:
    """The result of one DKIM-Signature."""

    result: DkimStatus
    domain: str  # d=, lower-case
    selector: str
    algorithm: str
    reason: str
    b: str  # the first characters of b= (RFC 6008 header.b)

    @property
    def passed(self) -> bool:
        return self.result == "pass"


def _text(value: bytes | None) -> str:
    return (value or b"").decode("ascii", "replace")


async def verify_signatures(lookups: Lookups, message: bytes | Parsed) -> list[DkimResult]:
    """Verify every DKIM-Signature of `message` (CRLF line endings); [] if it has none."""
    parsed = message if isinstance(message, Parsed) else parse(message)
    fields = parsed.fields
    signatures = [
        (i, parse_tags(f.value)) for i, f in enumerate(fields) if f.name == "dkim-signature"
    ]
    if not signatures:
        return []
    checked = signatures[:MAX_SIGNATURES]
    names = [key_name(t[b"s"], t[b"d"]) for _i, t in checked if b"s" in t and b"d" in t]
    keys = await fetch_keys(lookups, names)
    if len(parsed.data) > THREAD_THRESHOLD:
        results = await asyncio.to_thread(_verify_all, parsed, checked, keys)
    else:
        results = _verify_all(parsed, checked, keys)
    results.extend(
        DkimResult(
            "policy",
            _text(tags.get(b"d")).lower(),
            _text(tags.get(b"s")),
            _text(tags.get(b"a")),
            f"more than {MAX_SIGNATURES} signatures",
            _text(tags.get(b"b"))[:8],
        )
        for _i, tags in signatures[MAX_SIGNATURES:]
    )
    return results


def _verify_all(
    parsed: Parsed,
    signatures: list[tuple[int, dict[bytes, bytes]]],
    keys: FetchedKeys,
) -> list[DkimResult]:
    verifier: dkim.DKIM | None = None  # dkimpy, made on the first signature it must verify
    results = []
    for index, (position, tags) in enumerate(signatures):
        domain = _text(tags.get(b"d")).lower()
        selector = _text(tags.get(b"s"))
        algorithm = _text(tags.get(b"a"))
        b = _text(tags.get(b"b"))[:8]

        def result(status: DkimStatus, reason: str) -> DkimResult:
            return DkimResult(status, domain, selector, algorithm, reason, b)  # noqa: B023

        if not domain or not selector:
            results.append(result("permerror", "the signature lacks d= or s="))
            continue
        name = key_name(tags[b"s"], tags[b"d"])
        if name in keys.failures:
            results.append(result("temperror", keys.failures[name]))
            continue
        record = keys.records.get(name)
        if record is None:
            results.append(result("permerror", f"no key published at {name}"))
            continue
        fast = dkimcrypto.verify(
            parsed.fields, parsed.body, position, tags, record, body_hashes=parsed.body_hashes
        )
        if fast is not None:
            results.append(result(*fast))
            continue
        import dkim  # dkimpy, for what the OpenSSL path leaves to it: loaded only then

        if verifier is None:
            verifier = dkim.DKIM(parsed.data, logger=_quiet)
        try:
            ok = verifier.verify(index, dnsfunc=keys.dnsfunc())
        except dkim.DKIMException as exc:
            reason = str(exc)[:200]
            status: DkimStatus = "fail" if "mismatch" in reason else "permerror"
            results.append(result(status, reason))
            continue
        except Exception as exc:  # dkimpy on malformed input: a bad signature, not a bug of ours
            results.append(result("permerror", f"{type(exc).__name__}: {str(exc)[:150]}"))
            continue
        results.append(
            result("pass", "signature verified") if ok else result("fail", "bad signature")
        )
    return results
