"""Whether forwarding needs From rewritten to keep passing DMARC: decided at reception (pure).

A forwarded message keeps its DMARC pass at the destination only through an
aligned DKIM signature that survives forwarding: SRS changes the envelope
sender, so SPF never aligns after a forward. So, per message:

- the From domain publishes no policy, or p=none: keep From (nothing gets lost);
- a valid DKIM signature aligned with From exists and survives forwarding
  (smtpy only prepends header fields, so a valid signature does): keep From,
  SRS and the ARC seal suffice;
- p=quarantine or p=reject and no aligned signature survives: rewrite From.

The decision is recorded in an `X-Smtpy-From-Rewrite` field (`yes` or `no`,
and the reason in a comment), which inbound removes from what clients send;
the delivery worker applies it (`smtpy.outbound.from_rewrite`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from smtpy.checks.auth_results import FROM_REWRITE_FIELD

__all__ = ["FromDecision", "decide", "decision_field"]

_UNSAFE = re.compile(r"[^\x20-\x7e]|[()\\]")


@dataclass(frozen=True)
class FromDecision:
    rewrite: bool
    reason: str


def decide(*, disposition: str | None, aligned_dkim: bool, survives: bool) -> FromDecision:
    """Whether to rewrite From, given the From domain's DMARC policy (`none`,
    `quarantine`, `reject`, or None when it publishes none or it is unknown),
    whether a valid DKIM signature aligned with From exists, and whether it will
    survive forwarding."""
    if disposition not in ("quarantine", "reject"):
        why = "no DMARC policy" if disposition is None else f"DMARC policy p={disposition}"
        return FromDecision(False, f"{why}: forwarding cannot make it fail")
    if aligned_dkim and survives:
        return FromDecision(False, "an aligned DKIM signature survives forwarding")
    if aligned_dkim:
        return FromDecision(
            True, f"p={disposition} and the aligned DKIM signature will not survive forwarding"
        )
    return FromDecision(True, f"p={disposition} and no aligned DKIM signature")


def decision_field(decision: FromDecision) -> bytes:
    """The `X-Smtpy-From-Rewrite: yes|no (reason)` field, ending with CRLF."""
    verdict = "yes" if decision.rewrite else "no"
    reason = _UNSAFE.sub("?", decision.reason)[:200]
    return f"{FROM_REWRITE_FIELD}: {verdict} ({reason})\r\n".encode()
