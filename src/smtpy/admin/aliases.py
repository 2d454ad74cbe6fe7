"""Aliases: add, list, remove, enable and disable; and loading rules for the router."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from smtpy.admin.domains import domain_id
from smtpy.errors import Conflict, InvalidInput, NotFound
from smtpy.mail.addresses import (
    display_domain,
    local_key,
    normalize_domain,
    parse_address,
    split_address,
    validate_local_part,
)
from smtpy.route.aliases import (
    CATCHALL,
    AliasRule,
    DomainRules,
    Kind,
    Mode,
    compile_pattern,
    parse_alias_address,
)
from smtpy.store.db import Database

MODES: tuple[Mode, ...] = ("forward", "reject", "discard")
MAX_DESTINATIONS = 50


@dataclass(frozen=True, slots=True)
class AliasInfo:
    rule: AliasRule
    created_at: float

    @property
    def display_address(self) -> str:
        rule = self.rule
        local = f"/{rule.local_part}/" if rule.kind == "regex" else rule.local_part
        return f"{local}@{display_domain(rule.domain)}"

    @property
    def display_destinations(self) -> list[str]:
        """The destinations with their domains as U-labels (stored as A-labels)."""
        shown = []
        for destination in self.rule.destinations:
            local, domain = split_address(destination)
            shown.append(f"{local}@{display_domain(domain)}")
        return shown

    def public(self) -> dict[str, Any]:
        rule = self.rule
        return {
            "id": rule.id,
            "address": self.display_address,
            "domain": display_domain(rule.domain),
            "kind": rule.kind,
            "destinations": self.display_destinations,
            "mode": rule.mode,
            "reject_message": rule.reject_message,
            "enabled": rule.enabled,
            "created_at": self.created_at,
        }


@dataclass(frozen=True, slots=True)
class AliasKey:
    """Where an alias lives in the store."""

    domain_id: int
    domain: str
    kind: Kind
    local_part: str
    local_key: str


def _key(db: Database, address: str) -> AliasKey:
    kind, local, domain_text = parse_alias_address(address)
    if not domain_text:
        raise InvalidInput(f"{address!r} has no domain after @")
    did, alabel = domain_id(db, domain_text)
    if kind == "exact":
        try:
            validate_local_part(local)
        except InvalidInput as exc:
            raise InvalidInput(f"{address!r} is not a valid alias: {exc}") from None
        key = local_key(local)
    elif kind == "regex":
        compile_pattern(local)
        key = local
    else:
        key = CATCHALL
    return AliasKey(did, alabel, kind, local, key)


def _destinations(values: Sequence[str], alias: AliasKey) -> tuple[str, ...]:
    if len(values) > MAX_DESTINATIONS:
        raise InvalidInput(f"an alias has at most {MAX_DESTINATIONS} destinations")
    seen: dict[str, None] = {}
    for value in values:
        address = parse_address(value)
        if alias.kind == "exact" and address.key == f"{alias.local_key}@{alias.domain}":
            raise InvalidInput(f"{value!r} is the alias itself: that would be a mail loop")
        seen.setdefault(str(address), None)
    return tuple(seen)


def add_alias(
    db: Database,
    address: str,
    destinations: Sequence[str],
    *,
    mode: str = "forward",
    reject_message: str | None = None,
) -> AliasInfo:
    """Add an alias; nothing is written unless every part of the input is valid."""
    if mode not in MODES:
        raise InvalidInput(f"mode {mode!r} is not one of {', '.join(MODES)}")
    key = _key(db, address)
    targets = _destinations(destinations, key)
    if mode == "forward" and not targets:
        raise InvalidInput("a forwarding alias needs at least one destination address")
    if mode != "forward" and targets:
        raise InvalidInput(f"a {mode} alias takes no destinations")
    if reject_message is not None:
        if mode != "reject":
            raise InvalidInput("--message only applies to reject aliases")
        if not reject_message.isprintable() or len(reject_message) > 200:
            raise InvalidInput(
                "the reject message must be one printable line of at most 200 characters"
            )
    try:
        with db.transaction():
            new_id = db.insert(
                "INSERT INTO aliases (domain_id, kind, local_part, local_key, destinations, mode,"
                " reject_message, enabled, created_at) VALUES (:domain_id, :kind, :local_part,"
                " :local_key, :destinations, :mode, :reject_message, :enabled, :now) RETURNING id",
                {
                    "domain_id": key.domain_id,
                    "kind": key.kind,
                    "local_part": key.local_part,
                    "local_key": key.local_key,
                    "destinations": json.dumps(list(targets), ensure_ascii=False),
                    "mode": mode,
                    "reject_message": reject_message,
                    "enabled": True,
                    "now": time.time(),
                },
            )
    except Exception as exc:
        if Database.is_unique_violation(exc):
            raise Conflict(
                f"the alias {address} already exists; remove it first to change it"
            ) from None
        raise
    return _get(db, new_id)


_SELECT = (
    "SELECT a.id, a.kind, a.local_part, a.destinations, a.mode, a.reject_message, a.enabled,"
    " a.created_at, d.name AS domain FROM aliases a JOIN domains d ON d.id = a.domain_id"
)


def _info(row: dict[str, Any]) -> AliasInfo:
    return AliasInfo(AliasRule.from_row(row, row["domain"]), float(row["created_at"]))


def _get(db: Database, alias_id: int) -> AliasInfo:
    row = db.one(_SELECT + " WHERE a.id = :id", {"id": alias_id})
    if row is None:
        raise NotFound(f"alias #{alias_id} does not exist")
    return _info(row)


def find_alias(db: Database, address: str) -> AliasInfo:
    key = _key(db, address)
    row = db.one(
        _SELECT + " WHERE a.domain_id = :d AND a.kind = :k AND a.local_key = :l",
        {"d": key.domain_id, "k": key.kind, "l": key.local_key},
    )
    if row is None:
        raise NotFound(f"there is no alias {address}; see `smtpy alias list`")
    return _info(row)


def list_aliases(db: Database, *, domain: str | None = None) -> list[AliasInfo]:
    order = " ORDER BY d.name, CASE a.kind WHEN 'exact' THEN 0 WHEN 'regex' THEN 1 ELSE 2 END, a.local_key, a.id"
    if domain is None:
        return [_info(row) for row in db.all(_SELECT + order)]
    did, _ = domain_id(db, domain)
    return [_info(row) for row in db.all(_SELECT + " WHERE a.domain_id = :d" + order, {"d": did})]


def remove_alias(db: Database, address: str) -> AliasInfo:
    info = find_alias(db, address)
    db.execute("DELETE FROM aliases WHERE id = :id", {"id": info.rule.id})
    return info


def set_enabled(db: Database, address: str, enabled: bool) -> AliasInfo:
    info = find_alias(db, address)
    db.execute("UPDATE aliases SET enabled = :e WHERE id = :id", {"e": enabled, "id": info.rule.id})
    return _get(db, info.rule.id)


def domain_rules(db: Database, domain: str) -> DomainRules | None:
    """The router's view of one domain, or None when the domain is not served."""
    alabel = normalize_domain(domain)
    row = db.one("SELECT id, dmarc_reject FROM domains WHERE name = :name", {"name": alabel})
    if row is None:
        return None
    rows = db.all(_SELECT + " WHERE a.domain_id = :d", {"d": row["id"]})
    dmarc_reject = None if row["dmarc_reject"] is None else bool(row["dmarc_reject"])
    return DomainRules.build(
        alabel, (AliasRule.from_row(r, alabel) for r in rows), dmarc_reject=dmarc_reject
    )
