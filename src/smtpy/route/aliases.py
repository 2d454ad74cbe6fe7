"""Alias resolution: which rule a recipient matches, and where its mail goes.

One pure function, `resolve`, decides for one recipient local part against the
rules of its domain, in this order:

1. exact    `alice@example.org` (local parts compare case-insensitively)
2. plus-tag `alice+news@example.org` matches `alice` when no exact rule exists
            for the whole local part (the separator is a setting; "" turns it off)
3. regex    RE2 patterns matched against the whole local part, case-insensitive,
            in the order they were added; RE2 runs in linear time, so no pattern
            can hang the server
4. catch-all `*@example.org`

A disabled rule still matches (and the caller rejects the recipient): disabling
`alice@` must not quietly hand her mail to the catch-all.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

import re2

from smtpy.errors import InvalidInput
from smtpy.mail.addresses import local_key

Kind = Literal["exact", "regex", "catchall"]
Mode = Literal["forward", "reject", "discard"]
How = Literal["exact", "plus", "regex", "catchall"]

MAX_PATTERN = 200
CATCHALL = "*"


@dataclass(frozen=True, slots=True)
class AliasRule:
    """An alias as the router sees it."""

    id: int
    domain: str  # A-label
    kind: Kind
    local_part: str  # as given; the RE2 pattern for regex rules; "*" for the catch-all
    destinations: tuple[str, ...]
    mode: Mode = "forward"
    reject_message: str | None = None
    enabled: bool = True
    # In order, where a forwarding alias's mail goes when one of its destinations fails
    # for good (a permanent refusal, or retries until the queue lifetime ran out).
    fallbacks: tuple[str, ...] = ()

    @property
    def address(self) -> str:
        """The alias as an admin writes it: `alice@d`, `/pattern/@d` or `*@d`."""
        if self.kind == "regex":
            return f"/{self.local_part}/@{self.domain}"
        return f"{self.local_part}@{self.domain}"

    @classmethod
    def from_row(cls, row: dict[str, Any], domain: str) -> AliasRule:
        return cls(
            id=int(row["id"]),
            domain=domain,
            kind=row["kind"],
            local_part=row["local_part"],
            destinations=tuple(json.loads(row["destinations"])),
            mode=row["mode"],
            reject_message=row["reject_message"],
            enabled=bool(row["enabled"]),
            fallbacks=tuple(json.loads(row.get("fallbacks") or "[]")),
        )


@lru_cache(maxsize=4096)
def compile_pattern(pattern: str) -> Any:
    """Compile an alias pattern with RE2, or raise InvalidInput saying why not."""
    if not pattern:
        raise InvalidInput("the regex pattern is empty")
    if len(pattern) > MAX_PATTERN:
        raise InvalidInput(f"the regex pattern is longer than {MAX_PATTERN} characters")
    options = re2.Options()
    options.case_sensitive = False
    options.max_mem = 1 << 20
    options.log_errors = False  # else RE2 prints its own lines on stderr
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise InvalidInput(
            f"the regex pattern {pattern!r} is not valid RE2 syntax: {reason}"
        ) from None


@dataclass(frozen=True)
class DomainRules:
    """The rules of one domain, indexed for resolution."""

    domain: str
    exact: dict[str, AliasRule] = field(default_factory=dict)
    regex: tuple[tuple[Any, AliasRule], ...] = ()
    catchall: AliasRule | None = None
    dmarc_reject: bool | None = None  # the domain's DMARC policy switch; None: the default
    # Keys (`Address.key`) of the owning organization's destinations awaiting confirmation:
    # nothing is sent to them yet (smtpy.admin.destinations).
    unconfirmed: frozenset[str] = frozenset()

    @classmethod
    def build(
        cls,
        domain: str,
        rules: Iterable[AliasRule],
        *,
        dmarc_reject: bool | None = None,
        unconfirmed: frozenset[str] = frozenset(),
    ) -> DomainRules:
        exact: dict[str, AliasRule] = {}
        regex: list[tuple[Any, AliasRule]] = []
        catchall = None
        for rule in sorted(rules, key=lambda r: r.id):
            if rule.kind == "exact":
                exact[local_key(rule.local_part)] = rule
            elif rule.kind == "regex":
                regex.append((compile_pattern(rule.local_part), rule))
            else:
                catchall = rule
        return cls(domain, exact, tuple(regex), catchall, dmarc_reject, unconfirmed)


@dataclass(frozen=True, slots=True)
class Match:
    """The rule a recipient matched, and how."""

    rule: AliasRule
    how: How
    tag: str | None = None


def resolve(local: str, rules: DomainRules, *, plus_separator: str = "+") -> Match | None:
    """Find the rule for `local` in its domain's rules; None when nothing matches."""
    key = local_key(local)
    rule = rules.exact.get(key)
    if rule is not None:
        return Match(rule, "exact")
    if plus_separator and plus_separator in local:
        base, _, tag = local.partition(plus_separator)
        rule = rules.exact.get(local_key(base)) if base else None
        if rule is not None:
            return Match(rule, "plus", tag=tag)
    for pattern, rule in rules.regex:
        if pattern.fullmatch(local):
            return Match(rule, "regex")
    if rules.catchall is not None:
        return Match(rules.catchall, "catchall")
    return None


def parse_alias_address(text: str) -> tuple[Kind, str, str]:
    """Split an alias as typed by an admin into (kind, local part or pattern, domain text).

    `alice@example.org` is exact, `*@example.org` the catch-all, and
    `/^sales-[0-9]+$/@example.org` (slashes around the pattern) a regex rule.
    """
    value = text.strip()
    if value.startswith("/"):
        end = value.rfind("/@")
        if end <= 0:
            raise InvalidInput(
                f"{text!r}: a regex alias is written /PATTERN/@domain, e.g. /^sales-.*$/@example.org"
            )
        return "regex", value[1:end], value[end + 2 :]
    local, at, domain = value.rpartition("@")
    if not at or not local:
        raise InvalidInput(f"{text!r} is not an alias address: expected local@domain or *@domain")
    if local == CATCHALL:
        return "catchall", CATCHALL, domain
    return "exact", local, domain


def fan_out(matches: Sequence[Match]) -> list[str]:
    """Every destination of the given matches, each once, in order."""
    seen: dict[str, None] = {}
    for match in matches:
        for destination in match.rule.destinations:
            seen.setdefault(destination, None)
    return list(seen)
