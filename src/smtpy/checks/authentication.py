"""The authentication checks: SPF, DKIM, DMARC and ARC, then the verdict.

    checker = InboundChecker(lookups, AuthPolicy(hostname="mx.example.net"))
    spf = checker.start_spf(client_ip=..., helo=..., sender=...)     # at MAIL FROM
    verdict = await checker.check(content, spf=spf, ...)             # at end of DATA
    if verdict.reply: return verdict.reply                           # 550 or 451
    data = verdict.headers + received + verdict.message

SPF starts at MAIL FROM, so its DNS overlaps the transfer of the message;
DKIM, ARC and the DMARC policy lookup run concurrently at the end of DATA.
The policy (`decide_action`, pure): a DMARC failure whose policy is p=reject is
refused with 550 5.7.1, unless a valid ARC chain sealed by a trusted sealer
recorded dmarc=pass; when SPF or DKIM failed temporarily the failure may not be
real, so the client gets 451 and retries. Everything else is accepted and
marked. The decision and its inputs are logged (event "authenticated" or
"auth_refused"; at info level unless DMARC passed or found no policy and From
stays, which is logged at debug level).

The stage checks (`smtpy.checks.stages`) over one `InboundChecker`:

    OnePolicyPerTransaction   RCPT TO: recipients whose domains differ on DMARC
                              rejection go to separate transactions (452)
    StartSpf                  RCPT TO: starts SPF at the first accepted recipient
    Authenticate              end of DATA: the verdict; forged results removed,
                              ours added on top and kept with the message

Every Authentication-Results field that claims one of our names (this node's
and every node's the store knows, `OurNames`) is removed before anything
reads the message: only results smtpy computed may carry them.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from email.utils import getaddresses

from smtpy import log
from smtpy.checks import from_decision as fromrewrite
from smtpy.checks.arc import ARC_FIELDS, ArcChain, verify_chain
from smtpy.checks.auth_results import remove_forged, results, results_field
from smtpy.checks.dkim import DkimResult, verify_signatures
from smtpy.checks.dmarc import DmarcOutcome, DmarcPolicy, evaluate, lookup_policy
from smtpy.checks.recipients import Accepted
from smtpy.checks.spf import SpfResult, check_host
from smtpy.checks.stages import Client, Message, Refusal, Transaction
from smtpy.dns import DNSTemporaryError, Lookups
from smtpy.errors import InvalidInput
from smtpy.mail.addresses import normalize_domain
from smtpy.mail.headers import Parsed, parse
from smtpy.smtp.replies import DMARC_INCOMPLETE, OTHER_POLICY, dmarc_rejected

__all__ = [
    "AuthPolicy",
    "Authenticate",
    "InboundChecker",
    "OnePolicyPerTransaction",
    "OurNames",
    "SpfCheck",
    "StartSpf",
    "Verdict",
    "decide_action",
    "from_domain",
]

logger = log.get(__name__)

SPF_TIMEOUT = 20.0  # RFC 7208 §4.6.4: at least 20 seconds for the whole evaluation
# `Name <local@domain>` (a name without quotes, commas, or @) or a bare `local@domain`.
_SIMPLE_FROM = re.compile(
    r'^[^"<>@,;:()\\]*<[^<>@\s",;:()\\]+@([A-Za-z0-9.-]+)>\s*$'
    r'|^\s*[^<>@\s",;:()\\]+@([A-Za-z0-9.-]+)\s*$'
)
_NO_CHAIN = ArcChain("none", (), "no ARC header fields")
_LITERAL = re.compile(r"^\[.*\]$|^[0-9.]+$|:")


@dataclass(frozen=True)
class AuthPolicy:
    hostname: str  # the authserv-id
    dmarc_reject: bool = True
    trusted_sealers: frozenset[str] = frozenset()
    from_rewrite: bool = True


@dataclass(frozen=True)
class SpfCheck:
    """SPF results for the MAIL FROM identity and the HELO identity."""

    mailfrom: SpfResult
    helo: SpfResult | None  # None when the HELO name is not a domain


@dataclass(frozen=True)
class Verdict:
    reply: str | None  # a refusal to send instead of queueing, else None
    message: bytes  # the content with forged Authentication-Results removed
    headers: bytes  # Authentication-Results and the From-rewrite decision, to prepend
    reason: str
    results: str | None = None  # our Authentication-Results value (`auth_results.results`)
    spf: SpfCheck | None = None
    dkim: tuple[DkimResult, ...] = ()
    dmarc: DmarcOutcome | None = None
    arc: ArcChain | None = None
    from_rewrite: fromrewrite.FromDecision | None = None


def from_domain(message: bytes | Parsed) -> tuple[str | None, str]:
    """The RFC5322.From domain, or None and why it cannot be determined (RFC 7489 §6.6.1)."""
    parsed = message if isinstance(message, Parsed) else parse(message)
    froms = [f for f in parsed.fields if f.name == "from"]
    if not froms:
        return None, "no From header field"
    if len(froms) > 1:
        return None, "several From header fields"
    value = froms[0].value.decode("utf-8", "replace")
    simple = _SIMPLE_FROM.match(value)
    if simple:  # the common forms, without the cost of the full RFC 5322 parser
        return (simple.group(1) or simple.group(2)).lower().rstrip("."), ""
    domains = {
        addr.rpartition("@")[2].strip().lower().rstrip(".") for _n, addr in getaddresses([value])
    }
    domains.discard("")
    if len(domains) != 1:
        return None, "no single domain in From"
    try:
        return normalize_domain(domains.pop()), ""
    except InvalidInput:
        return None, "the From domain is not a domain name"


def decide_action(
    dmarc: DmarcOutcome,
    *,
    reject_enabled: bool,
    arc: ArcChain | None,
    trusted_sealers: Collection[str],
    temporary: bool,
    sampled: bool = True,
) -> tuple[str | None, str]:
    """The reply refusing a message (or None to accept it) and the reason (pure).

    `temporary`: SPF or DKIM failed temporarily; `sampled`: the message falls
    within the policy's pct= (RFC 7489 §6.6.4).
    """
    if dmarc.result != "fail" or dmarc.disposition != "reject":
        return None, f"dmarc={dmarc.result}: accepted"
    if not reject_enabled:
        return None, "dmarc=fail with p=reject: marked only (SMTPY_DMARC_REJECT is off)"
    vouching = arc.vouches(trusted_sealers) if arc is not None else None
    if vouching is not None:
        return None, f"dmarc=fail with p=reject, but the trusted ARC sealer {vouching} saw it pass"
    if not sampled:
        return None, "dmarc=fail with p=reject, outside the policy's pct= sample: accepted"
    if temporary:
        return (
            DMARC_INCOMPLETE,
            "dmarc=fail with p=reject while SPF or DKIM failed temporarily: deferred",
        )
    return dmarc_rejected(dmarc.from_domain, dmarc.reason), "dmarc=fail with p=reject: rejected"


class InboundChecker:
    """Runs the checks for the receive handler, over the daemon's DNS lookups."""

    def __init__(
        self,
        lookups: Lookups,
        policy: AuthPolicy,
        *,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.lookups = lookups
        self.policy = policy
        self._rng = rng

    def start_spf(
        self, *, client_ip: str | None, helo: str | None, sender: str
    ) -> asyncio.Task[SpfCheck]:
        """Start the SPF checks of the MAIL FROM and HELO identities (a task that never fails)."""
        return asyncio.ensure_future(self._spf(client_ip or "", helo or "", sender))

    async def _spf(self, client_ip: str, helo: str, sender: str) -> SpfCheck:
        helo_name = helo.strip().rstrip(".").lower()
        helo_is_name = bool(helo_name) and not _LITERAL.search(helo_name)

        async def one(domain: str, identity: str) -> SpfResult:
            try:
                async with asyncio.timeout(SPF_TIMEOUT):
                    return await check_host(
                        self.lookups, ip=client_ip, domain=domain, sender=identity, helo=helo
                    )
            except TimeoutError:
                return SpfResult("temperror", domain, f"no answer within {SPF_TIMEOUT:.0f} s")

        sender_domain = sender.rpartition("@")[2]
        if not helo_is_name:
            if not sender:
                return SpfCheck(SpfResult("none", helo_name, "the HELO name is not a domain"), None)
            return SpfCheck(await one(sender_domain, sender), None)
        if not sender:  # the null sender: the HELO identity is the MAIL FROM identity
            helo_result = await one(helo_name, f"postmaster@{helo_name}")
            return SpfCheck(helo_result, helo_result)
        mailfrom, helo_result = await asyncio.gather(
            one(sender_domain, sender), one(helo_name, f"postmaster@{helo_name}")
        )
        return SpfCheck(mailfrom, helo_result)

    def rejects_dmarc(self, domain_setting: bool | None) -> bool:
        """Whether DMARC p=reject failures are refused for a domain with this setting."""
        return self.policy.dmarc_reject if domain_setting is None else domain_setting

    async def check(
        self,
        content: bytes,
        *,
        spf: asyncio.Task[SpfCheck] | None,
        client_ip: str | None,
        helo: str | None,
        sender: str,
        queue_id: str,
        dmarc_reject: bool | None = None,
        ours: Collection[str] = (),
    ) -> Verdict:
        """Check a message (CRLF content, as received) and decide; never raises.

        `dmarc_reject` is the recipients' domain's own switch (None: the policy's default).
        `ours`: the other nodes' hostnames; results claiming them are forged too.
        """
        parsed = remove_forged(parse(content), {self.policy.hostname, *ours})
        if spf is None:
            spf = self.start_spf(client_ip=client_ip, helo=helo, sender=sender)
        domain, why_no_domain = from_domain(parsed)
        names = {f.name for f in parsed.fields}
        # Tasks only for what the message needs: a task costs more than a check that
        # finds nothing to do. They run concurrently with each other and with SPF.
        dkim_task = (
            asyncio.ensure_future(verify_signatures(self.lookups, parsed))
            if "dkim-signature" in names
            else None
        )
        arc_task = (
            asyncio.ensure_future(verify_chain(self.lookups, parsed))
            if not names.isdisjoint(ARC_FIELDS)
            else None
        )
        policy = await self._policy(domain)
        spf_check = await spf
        dkim = await dkim_task if dkim_task is not None else []
        arc = await arc_task if arc_task is not None else _NO_CHAIN
        mailfrom_domain = (sender or f"postmaster@{helo or ''}").rpartition("@")[2].lower()
        if domain is None:
            dmarc = DmarcOutcome("permerror", "", None, False, False, why_no_domain)
        elif isinstance(policy, str):
            dmarc = DmarcOutcome("temperror", domain, None, False, False, policy)
        else:
            dmarc = evaluate(
                domain, policy, spf=spf_check.mailfrom, spf_domain=mailfrom_domain, dkim=dkim
            )
        temporary = spf_check.mailfrom.result == "temperror" or any(
            r.result == "temperror" for r in dkim
        )
        sampled = not isinstance(policy, DmarcPolicy) or self._rng() * 100 < policy.pct
        reply, reason = decide_action(
            dmarc,
            reject_enabled=self.rejects_dmarc(dmarc_reject),
            arc=arc,
            trusted_sealers=self.policy.trusted_sealers,
            temporary=temporary,
            sampled=sampled,
        )
        value = results(
            self.policy.hostname,
            spf=spf_check.mailfrom,
            mailfrom=sender,
            helo_spf=spf_check.helo,
            helo=helo or "",
            dkim=dkim,
            dmarc=dmarc,
            arc=arc,
        )
        headers = results_field(value)
        decision = None
        if self.policy.from_rewrite and reply is None:
            decision = fromrewrite.decide(
                disposition=dmarc.disposition,
                aligned_dkim=dmarc.dkim_aligned,
                survives=True,  # smtpy only prepends header fields: a valid signature survives
            )
            headers += fromrewrite.decision_field(decision)
        # A clean pass is logged at debug level only: one more JSON line per message costs.
        notable = (
            reply is not None
            or dmarc.result not in ("pass", "none")
            or (decision is not None and decision.rewrite)
        )
        log_event = logger.info if notable else logger.debug
        log_event(
            "authenticated" if reply is None else "auth_refused",
            queue_id=queue_id,
            client=client_ip,
            sender=sender,
            helo=helo,
            spf=spf_check.mailfrom.result,
            spf_reason=spf_check.mailfrom.reason,
            spf_helo=spf_check.helo.result if spf_check.helo else None,
            dkim=[f"{r.result}:{r.domain}" for r in dkim],
            from_domain=domain,
            dmarc=dmarc.result,
            dmarc_policy=dmarc.disposition,
            dmarc_reason=dmarc.reason,
            arc=arc.result,
            arc_sealer=arc.last_sealer,
            decision=reason,
            reply=reply,
            from_rewrite=None if decision is None else decision.rewrite,
        )
        return Verdict(
            reply=reply,
            message=parsed.data,
            headers=headers,
            reason=reason,
            results=value,
            spf=spf_check,
            dkim=tuple(dkim),
            dmarc=dmarc,
            arc=arc,
            from_rewrite=decision,
        )

    async def _policy(self, domain: str | None) -> DmarcPolicy | str | None:
        """The DMARC policy, None without one, or the DNS failure as text."""
        if domain is None:
            return None
        try:
            return await lookup_policy(self.lookups, domain)
        except DNSTemporaryError as exc:
            return str(exc)


class OurNames:
    """Every authserv-id of ours: this node's hostname and each node's the store knows.

    `load` reads the nodes' hostnames (`smtpy.queue.nodes`); they are read again
    when older than `ttl` seconds, and a failed read keeps the previous ones.
    """

    def __init__(
        self,
        hostname: str,
        load: Callable[[], Awaitable[Collection[str]]] | None = None,
        *,
        ttl: float = 10.0,
    ) -> None:
        self._load = load
        self._ttl = ttl
        self._names = frozenset({hostname.lower().rstrip(".")})
        self._loaded_at = -ttl
        self._loading: asyncio.Future[None] | None = None

    async def get(self) -> frozenset[str]:
        if self._load is not None and time.monotonic() - self._loaded_at >= self._ttl:
            if self._loading is None:
                self._loading = asyncio.ensure_future(self._reload(self._load))
            await asyncio.shield(self._loading)
        return self._names

    async def _reload(self, load: Callable[[], Awaitable[Collection[str]]]) -> None:
        try:
            found = await load()
        except Exception as exc:
            logger.warning("node_names_unavailable", error=str(exc)[:200])
        else:
            names = {name.lower().rstrip(".") for name in found if name}
            self._names = self._names | frozenset(names)
        finally:
            self._loaded_at = time.monotonic()
            self._loading = None


@dataclass(frozen=True)
class OnePolicyPerTransaction:
    """RCPT TO: one DATA gets one answer, so a domain with another DMARC policy waits
    for a transaction of its own (the client sends it right after this one)."""

    checker: InboundChecker

    async def check_rcpt(
        self, client: Client, txn: Transaction, recipient: Accepted
    ) -> Refusal | None:
        if txn.accepted and self.checker.rejects_dmarc(
            recipient.dmarc_reject
        ) != self.checker.rejects_dmarc(txn.accepted[0].dmarc_reject):
            return Refusal(OTHER_POLICY, "policy_split")
        return None


@dataclass(frozen=True)
class StartSpf:
    """RCPT TO: SPF starts at the first accepted recipient, so its DNS overlaps DATA."""

    checker: InboundChecker

    async def check_rcpt(
        self, client: Client, txn: Transaction, recipient: Accepted
    ) -> Refusal | None:
        if txn.spf is None:
            txn.spf = self.checker.start_spf(
                client_ip=client.ip, helo=client.helo, sender=txn.sender
            )
        return None


@dataclass(frozen=True)
class Authenticate:
    """End of DATA: the verdict; the message gets our results, kept for the ARC seal."""

    checker: InboundChecker
    names: OurNames | None = None

    async def check_data(
        self, client: Client, txn: Transaction, message: Message
    ) -> Refusal | None:
        verdict = await self.checker.check(
            message.content,
            spf=txn.spf,
            client_ip=client.ip,
            helo=client.helo,
            sender=txn.sender,
            queue_id=message.queue_id,
            dmarc_reject=txn.accepted[0].dmarc_reject,
            ours=await self.names.get() if self.names is not None else (),
        )
        if verdict.reply is not None:
            return Refusal(verdict.reply, "dmarc", verdict.reason)
        message.content = verdict.headers + verdict.message
        message.auth_results = verdict.results
        return None
