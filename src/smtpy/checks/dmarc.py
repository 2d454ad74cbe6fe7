"""DMARC (RFC 7489): policy discovery, identifier alignment and evaluation.

    policy = await lookup_policy(lookups, "example.org")   # DmarcPolicy or None
    outcome = evaluate(from_domain, policy, spf=spf_result, dkim=dkim_results)

`lookup_policy` asks `_dmarc.DOMAIN`, then `_dmarc.ORGDOMAIN` (the
organizational domain from the Public Suffix List shipped in the
`publicsuffixlist` package: no download at run time). A DNS failure raises
`smtpy.dns.DNSTemporaryError`. `evaluate` and `organizational_domain` are pure.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from smtpy.dns import Lookups, NoSuchDomain

if TYPE_CHECKING:
    from publicsuffixlist import PublicSuffixList

    from smtpy.checks.dkim import DkimResult
    from smtpy.checks.spf import SpfResult

__all__ = [
    "DmarcOutcome",
    "DmarcPolicy",
    "aligned",
    "evaluate",
    "lookup_policy",
    "organizational_domain",
    "parse_record",
]

Disposition = Literal["none", "quarantine", "reject"]
DmarcStatus = Literal["pass", "fail", "none", "temperror", "permerror"]
_DISPOSITIONS: tuple[Disposition, ...] = ("none", "quarantine", "reject")


@functools.cache
def _psl() -> PublicSuffixList:
    from publicsuffixlist import PublicSuffixList

    return PublicSuffixList()


def organizational_domain(domain: str) -> str:
    """The registered domain under its public suffix (RFC 7489 §3.2); the domain itself
    when it is a public suffix or not under a known one."""
    domain = domain.lower().rstrip(".")
    return _psl().privatesuffix(domain) or domain


def aligned(identifier: str, from_domain: str, mode: str) -> bool:
    """Identifier alignment: strict is equality, relaxed shares the organizational domain."""
    identifier = identifier.lower().rstrip(".")
    from_domain = from_domain.lower().rstrip(".")
    if identifier == from_domain:
        return True
    if mode == "s":
        return False
    return organizational_domain(identifier) == organizational_domain(from_domain)


@dataclass(frozen=True)
class DmarcPolicy:
    """A published DMARC record and where it was found."""

    domain: str  # the From domain asked about
    record_domain: str  # the domain that published the record (itself or its org domain)
    p: Disposition
    sp: Disposition
    adkim: str  # "r" or "s"
    aspf: str
    pct: int
    record: str

    @property
    def disposition(self) -> Disposition:
        """The policy for `domain`: sp= when the record is the organizational domain's."""
        return self.p if self.record_domain == self.domain else self.sp


def parse_record(text: str) -> dict[str, str] | None:
    """The tags of a DMARC record, or None if it is not one (v=DMARC1 first, p= present)."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        name, sep, value = part.partition("=")
        if sep:
            tags.setdefault(name.strip().lower(), value.strip())
    if text.split(";", 1)[0].replace(" ", "") != "v=DMARC1":
        return None
    return tags


def _policy(domain: str, record_domain: str, record: str) -> DmarcPolicy | None:
    tags = parse_record(record)
    if tags is None:
        return None
    p = tags.get("p", "").lower()
    if p not in _DISPOSITIONS:
        if "rua" not in tags:
            return None  # RFC 7489 §6.6.3: an invalid p= without rua is no record
        p = "none"
    sp = tags.get("sp", p).lower()
    pct_text = tags.get("pct", "100")
    return DmarcPolicy(
        domain=domain,
        record_domain=record_domain,
        p=p,  # type: ignore[arg-type]
        sp=sp if sp in _DISPOSITIONS else p,  # type: ignore[arg-type]
        adkim="s" if tags.get("adkim", "r").lower() == "s" else "r",
        aspf="s" if tags.get("aspf", "r").lower() == "s" else "r",
        pct=min(100, max(0, int(pct_text))) if pct_text.isdigit() else 100,
        record=record,
    )


async def _record_at(lookups: Lookups, domain: str) -> str | None:
    try:
        texts = await lookups.txt(f"_dmarc.{domain}")
    except NoSuchDomain:
        return None
    records = [t for t in texts if t.replace(" ", "").startswith("v=DMARC1")]
    return records[0] if len(records) == 1 else None  # several records: none (§6.6.3)


async def lookup_policy(lookups: Lookups, domain: str) -> DmarcPolicy | None:
    """The DMARC policy that governs mail From `domain`, or None if none is published.

    Raises `smtpy.dns.DNSTemporaryError` when DNS fails.
    """
    domain = domain.lower().rstrip(".")
    record = await _record_at(lookups, domain)
    if record is not None:
        found = _policy(domain, domain, record)
        if found is not None:
            return found
    org = organizational_domain(domain)
    if org == domain:
        return None
    record = await _record_at(lookups, org)
    return None if record is None else _policy(domain, org, record)


@dataclass(frozen=True)
class DmarcOutcome:
    """The DMARC result for a message and what led to it."""

    result: DmarcStatus
    from_domain: str
    disposition: Disposition | None  # the policy that applies, None without one
    spf_aligned: bool
    dkim_aligned: bool  # a passing DKIM signature aligned with From exists
    reason: str


def evaluate(
    from_domain: str,
    policy: DmarcPolicy | None,
    *,
    spf: SpfResult | None,
    spf_domain: str,
    dkim: Sequence[DkimResult],
) -> DmarcOutcome:
    """DMARC evaluation (RFC 7489 §6.6.2) given the SPF result for `spf_domain`
    (the MAIL FROM domain) and the DKIM results."""
    dkim_aligned = bool(policy) and any(
        r.passed and aligned(r.domain, from_domain, policy.adkim if policy else "r") for r in dkim
    )
    spf_aligned = (
        policy is not None
        and spf is not None
        and spf.result == "pass"
        and aligned(spf_domain, from_domain, policy.aspf)
    )
    if policy is None:
        return DmarcOutcome("none", from_domain, None, False, False, "no DMARC policy published")
    if dkim_aligned or spf_aligned:
        how = " and ".join(
            name for name, ok in (("DKIM", dkim_aligned), ("SPF", spf_aligned)) if ok
        )
        return DmarcOutcome(
            "pass", from_domain, policy.disposition, spf_aligned, dkim_aligned, f"aligned {how}"
        )
    return DmarcOutcome(
        "fail",
        from_domain,
        policy.disposition,
        False,
        False,
        "neither SPF nor DKIM passed aligned with the From domain",
    )
