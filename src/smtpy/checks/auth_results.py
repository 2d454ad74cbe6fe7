"""The Authentication-Results header field (RFC 8601) smtpy adds, and the ones it removes.

    value = results("mx.example.net", spf=..., helo_spf=..., dkim=[...], dmarc=..., arc=...)
    header = results_field(value)         # what receive puts on top of the message
    data = remove_forged_results(data, {"mx.example.net", "mx2.example.net"})

`results` gives the value unfolded (its parts joined by ";<TAB>"), as an ARC
seal copies it into ARC-Authentication-Results; the queue keeps it with the
message, so the seal never reads it back from the message.

Pure functions. Property values are sanitized: an address that is not a plain
RFC 5322 dot-atom is reported by its domain only, and comments never carry
parentheses, backslashes or control characters.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from functools import partial
from typing import TYPE_CHECKING

from smtpy.mail.headers import Field, Parsed, join_fields, without

if TYPE_CHECKING:
    from smtpy.checks.arc import ArcChain
    from smtpy.checks.dkim import DkimResult
    from smtpy.checks.dmarc import DmarcOutcome
    from smtpy.checks.spf import SpfResult

__all__ = [
    "FROM_REWRITE_FIELD",
    "authentication_results",
    "authserv_id",
    "remove_forged",
    "remove_forged_results",
    "results",
    "results_field",
]

#: The header field that records smtpy's From-rewrite decision (`smtpy.outbound.from_rewrite`).
FROM_REWRITE_FIELD = "X-Smtpy-From-Rewrite"

_DECISION = FROM_REWRITE_FIELD.lower()
_ATOM_ADDRESS = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@[A-Za-z0-9.-]{1,253}$")
_DOMAIN = re.compile(r"^[A-Za-z0-9.-]{1,253}$")
_TOKEN = re.compile(r"^[A-Za-z0-9+/=._-]{1,64}$")
_UNSAFE_COMMENT = re.compile(r"[^\x20-\x7e]|[()\\]")
_COMMENT = re.compile(rb"^\s*(?:\([^()]*\)\s*)*")


def _comment(text: str) -> str:
    return " (" + _UNSAFE_COMMENT.sub("?", text)[:120] + ")" if text else ""


def _address(value: str) -> str | None:
    if _ATOM_ADDRESS.match(value):
        return value
    domain = value.rpartition("@")[2]
    return domain if _DOMAIN.match(domain) else None


def _property(name: str, value: str | None) -> str:
    return f" {name}={value}" if value else ""


def authentication_results(
    authserv_id: str,
    *,
    spf: SpfResult | None,
    mailfrom: str,
    helo_spf: SpfResult | None,
    helo: str,
    dkim: Sequence[DkimResult],
    dmarc: DmarcOutcome | None,
    arc: ArcChain | None,
) -> bytes:
    """The `Authentication-Results:` field, folded, ending with CRLF (see `results`)."""
    return results_field(
        results(
            authserv_id,
            spf=spf,
            mailfrom=mailfrom,
            helo_spf=helo_spf,
            helo=helo,
            dkim=dkim,
            dmarc=dmarc,
            arc=arc,
        )
    )


def results_field(value: str) -> bytes:
    """The `Authentication-Results:` field of a `results` value: folded, ending with CRLF."""
    folded = value.replace(";\t", ";\r\n\t")
    return f"Authentication-Results: {folded}\r\n".encode()


def results(
    authserv_id: str,
    *,
    spf: SpfResult | None,
    mailfrom: str,
    helo_spf: SpfResult | None,
    helo: str,
    dkim: Sequence[DkimResult],
    dmarc: DmarcOutcome | None,
    arc: ArcChain | None,
) -> str:
    """The value of our Authentication-Results field, unfolded: "authserv-id; part;<TAB>part".

    `mailfrom` is the MAIL FROM address (empty for the null sender), `helo`
    the HELO name. A check that was not run is left out.
    """
    parts: list[str] = []
    if spf is not None:
        identity = _address(mailfrom) if mailfrom else None
        parts.append(
            f"spf={spf.result}{_comment(spf.reason)}"
            + (
                _property("smtp.mailfrom", identity)
                if identity
                else _property("smtp.helo", _address(helo))
            )
        )
    if helo_spf is not None and mailfrom:
        parts.append(f"spf={helo_spf.result}{_property('smtp.helo', _address(helo))}")
    if not dkim:
        parts.append("dkim=none (no signature)")
    for result in dkim:
        text = f"dkim={result.result}{_comment(result.reason if not result.passed else '')}"
        text += _property("header.d", result.domain if _DOMAIN.match(result.domain) else None)
        text += _property("header.s", result.selector if _TOKEN.match(result.selector) else None)
        text += _property("header.b", result.b if _TOKEN.match(result.b) else None)
        parts.append(text)
    if dmarc is not None:
        policy = f"p={dmarc.disposition}" if dmarc.disposition else ""
        from_domain = dmarc.from_domain if _DOMAIN.match(dmarc.from_domain) else None
        parts.append(
            f"dmarc={dmarc.result}{_comment(policy)}{_property('header.from', from_domain)}"
        )
    if arc is not None:
        sealer = arc.last_sealer if arc.last_sealer and _DOMAIN.match(arc.last_sealer) else None
        parts.append(f"arc={arc.result}{_comment(sealer or '')}")
    return ";\t".join([authserv_id, *parts]) if parts else f"{authserv_id}; none"


def authserv_id(field: Field) -> str:
    """The authserv-id of an Authentication-Results field, lower-case ("" if unreadable)."""
    value = field.value
    value = value[_COMMENT.match(value).end() :]  # type: ignore[union-attr]
    token = re.split(rb"[;\s(]", value.strip(), maxsplit=1)[0]
    return token.decode("ascii", "replace").lower().rstrip(".")


def remove_forged_results(data: bytes, ours: str | Collection[str]) -> bytes:
    """Remove every Authentication-Results field that claims to be ours (RFC 8601 §5),
    and any From-rewrite decision field, which only smtpy may set.

    `ours`: every authserv-id of ours (the hostnames of all nodes), or one."""
    return without(data, partial(_forged, _names(ours)))


def remove_forged(message: Parsed, ours: str | Collection[str]) -> Parsed:
    """`remove_forged_results` on a parsed message; the same object if nothing is removed."""
    forged = partial(_forged, _names(ours))
    kept = [f for f in message.fields if not forged(f)]
    if len(kept) == len(message.fields):
        return message
    head_length = sum(len(f.raw) for f in message.fields)
    return Parsed(kept, message.body, join_fields(kept) + message.data[head_length:], {})


def _names(ours: str | Collection[str]) -> frozenset[str]:
    names = (ours,) if isinstance(ours, str) else ours
    return frozenset(name.lower().rstrip(".") for name in names)


def _forged(ours: frozenset[str], field: Field) -> bool:
    if field.name == "authentication-results":
        return authserv_id(field) in ours
    return field.name == _DECISION
