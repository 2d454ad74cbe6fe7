"""RCPT-time decisions: accept a recipient with its final destinations, or refuse it.

Decided during the SMTP session, never by accepting and bouncing later
(backscatter). The order of checks:

1. an SRS address of ours is reversed (bad hash or too old → 550 5.1.1);
2. a domain we do not serve → 550 5.7.1 (smtpy never relays);
3. the alias rules of the domain (`route.resolve`): no match → 550 5.1.1,
   disabled → 550 5.2.1, reject mode → 550 5.7.1 with its message, discard →
   accepted and dropped;
4. destinations on served domains are resolved again, at most `MAX_DEPTH`
   levels deep; a chain that comes back to itself → 554 5.4.6. A destination
   there that is unknown, disabled or rejecting is dropped; when that leaves
   nothing (and no discard rule was met) → 550 5.1.1, for accepting would
   answer 250 for mail that then goes nowhere;
5. a final destination the organization added through the API or dashboard and
   whose owner has not confirmed it yet (`DomainRules.unconfirmed`) is held:
   when every final destination is held → 450 4.2.1 (the sender retries); when
   some are confirmed, the recipient is accepted and the held ones wait in the
   queue (`Accepted.held`) until confirmed or the queue lifetime ends.

An accepted recipient carries the fallbacks of the alias it matched, for all of
its final destinations; aliases reached through it lend theirs to nobody.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from smtpy.checks.stages import Refusal
from smtpy.errors import InvalidInput
from smtpy.mail.addresses import parse_address
from smtpy.mail.parsed import is_url
from smtpy.route.aliases import DomainRules, How, resolve
from smtpy.route.srs import SRS, SRSError, is_srs_address
from smtpy.smtp import replies

MAX_DEPTH = 8

RulesFor = Callable[[str], Awaitable[DomainRules | None]]


@dataclass(frozen=True, slots=True)
class Accepted:
    original: str  # the address as the sender wrote it
    alias_domain: str  # the served domain it belongs to (DKIM signing domain)
    destinations: tuple[str, ...]  # final addresses; empty for discard
    how: How | None  # the rule kind that matched; None for a reversed SRS address
    alias: str | None  # the matched alias, for logs
    srs_reversed: bool = False
    dmarc_reject: bool | None = None  # the served domain's DMARC switch; None: the default
    fallbacks: tuple[str, ...] = ()  # the matched alias's, in order (`smtpy.queue.fallbacks`)
    held: frozenset[str] = frozenset()  # destinations awaiting confirmation: queued, not sent


Refused = Refusal  # the reply, and a short key for logs and stats


Decision = Accepted | Refused


async def decide(
    recipient: str, *, rules_for: RulesFor, srs: SRS | None, srs_domain: str, plus_separator: str
) -> Decision:
    """Decide what to do with one RCPT TO address."""
    try:
        address = parse_address(recipient)
    except InvalidInput:
        return Refused(replies.BAD_RECIPIENT, "bad_address")
    original = str(address)

    if address.domain == srs_domain and srs is not None and is_srs_address(original):
        try:
            reversed_to = srs.reverse(original)
        except SRSError:
            return Refused(replies.SRS_INVALID, "srs_invalid")
        return Accepted(original, address.domain, (reversed_to,), None, None, srs_reversed=True)

    rules = await rules_for(address.domain)
    if rules is None:
        return Refused(replies.RELAY_DENIED, "relay")

    expanded = {address.key}
    destinations: dict[str, None] = {}
    held: set[str] = set()
    first_how: How | None = None
    first_alias: str | None = None
    fallbacks: tuple[str, ...] = ()
    discarded = False
    # (local, rules, depth, the addresses on the path to this one)
    pending: list[tuple[str, DomainRules, int, frozenset[str]]] = [
        (address.local, rules, 0, frozenset({address.key}))
    ]
    while pending:
        local, domain_rules, depth, path = pending.pop(0)
        match = resolve(local, domain_rules, plus_separator=plus_separator)
        is_first = depth == 0
        if match is None:
            if is_first:
                return Refused(replies.UNKNOWN_USER, "unknown_user")
            continue  # a destination on a served domain that matches nothing: dropped
        rule = match.rule
        if is_first:
            first_how, first_alias = match.how, rule.address
        if not rule.enabled:
            if is_first:
                return Refused(replies.MAILBOX_DISABLED, "disabled")
            continue
        if rule.mode == "reject":
            if is_first:
                return Refused(replies.alias_rejected(rule.reject_message), "alias_reject")
            continue
        if rule.mode == "discard":
            discarded = True
            continue
        if is_first:
            fallbacks = rule.fallbacks
        for target in rule.destinations:
            if is_url(target):  # a webhook destination: posted, never resolved further
                destinations.setdefault(target, None)
                continue
            target_address = parse_address(target)
            target_rules = await rules_for(target_address.domain)
            if target_rules is None:
                destinations.setdefault(str(target_address), None)
                if target_address.key in domain_rules.unconfirmed:
                    held.add(str(target_address))
                continue
            key = target_address.key
            if key in path or depth + 1 > MAX_DEPTH:
                return Refused(replies.ROUTING_LOOP, "loop")
            if key in expanded:
                continue  # reached through another alias already
            expanded.add(key)
            pending.append((target_address.local, target_rules, depth + 1, path | {key}))

    if not destinations and not discarded:
        return Refused(replies.NO_DESTINATION, "no_destination")
    if held and len(held) == len(destinations) and not discarded:
        return Refused(replies.AWAITING_CONFIRMATION, "unconfirmed", detail=", ".join(sorted(held)))
    return Accepted(
        original,
        address.domain,
        tuple(destinations),
        first_how,
        first_alias,
        dmarc_reject=rules.dmarc_reject,
        # Those of the alias the sender addressed; one that is a destination already is not
        # a fallback for it.
        fallbacks=tuple(f for f in fallbacks if f not in destinations),
        held=frozenset(held),
    )
