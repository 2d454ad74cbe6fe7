"""Aliases: add, list, update, remove; and loading rules for the router.

The admin functions act inside one organization (`org`); `domain_rules` is the
daemon's, for any served domain.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from smtpy.accounts.audit import record
from smtpy.accounts.roles import Role, allows
from smtpy.admin import destinations
from smtpy.admin.domains import domain_id
from smtpy.admin.url_destinations import check_url, ensure_url_destination
from smtpy.billing import plans as billing
from smtpy.billing.plans import Catalog
from smtpy.errors import Conflict, Forbidden, InvalidInput, NotFound
from smtpy.mail.addresses import (
    display_domain,
    local_key,
    normalize_domain,
    parse_address,
    split_address,
    validate_local_part,
)
from smtpy.mail.parsed import is_url
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
from smtpy.store.pages import Page, check_limit, keyset, page_of

if TYPE_CHECKING:
    from smtpy.config import Settings

MODES: tuple[Mode, ...] = ("forward", "reject", "discard")
MAX_DESTINATIONS = 50
MAX_FALLBACKS = 10


class AliasCreate(BaseModel):
    model_config = ConfigDict(defer_build=True)

    address: str  # alice@example.org, *@example.org or /PATTERN/@example.org
    destinations: list[str] = []
    mode: str = "forward"  # forward | reject | discard
    reject_message: str | None = None  # the 550 text of a reject alias
    enabled: bool = True
    fallbacks: list[str] = []  # in order: where mail goes when a destination fails for good


class AliasUpdate(BaseModel):
    """What may change on an existing alias; None leaves a field as it is."""

    model_config = ConfigDict(defer_build=True)

    enabled: bool | None = None
    destinations: list[str] | None = None  # of a forwarding alias: replaces them all
    fallbacks: list[str] | None = None  # of a forwarding alias: replaces them all ([]: none)


class FieldInvalid(InvalidInput):
    """Invalid input in one field of the request (`destinations.2`): the API names it."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


class AliasPublic(BaseModel):
    """An alias as shells show it (`alias list --json` prints these keys)."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    id: int
    address: str  # as people write it: U-label domain, /pattern/ for regex
    domain: str  # U-label
    kind: Kind
    destinations: list[str]  # domains as U-labels
    # Those of `destinations` awaiting their owner's confirmation: nothing is sent to them
    # yet (added through the API or dashboard; see smtpy.admin.destinations).
    pending_destinations: list[str] = []
    mode: Mode
    reject_message: str | None
    enabled: bool
    created_at: float
    fallbacks: list[str] = []  # in order, domains as U-labels


class AliasSaved(AliasPublic):
    """An alias just saved, with the signing secrets of the URL destinations it made
    (`{url: "whsec_…"}`): shown to the admin once, never listed again."""

    secrets: dict[str, str] = {}


def _saved(alias: AliasPublic, secrets: dict[str, str]) -> AliasSaved:
    return AliasSaved(**alias.model_dump(), secrets=secrets)


def _shown(destination: str) -> str:
    if is_url(destination):
        return destination
    local, domain = split_address(destination)
    return f"{local}@{display_domain(domain)}"


def _waiting(db: Database, rows: Sequence[dict[str, Any]]) -> dict[int, frozenset[str]]:
    """The destinations awaiting confirmation of each organization the rows belong to."""
    return {org: destinations.unconfirmed_keys(db, org) for org in {int(r["org"]) for r in rows}}


def _pending(targets: Sequence[str], waiting: frozenset[str]) -> list[str]:
    if not waiting:
        return []
    return [_shown(d) for d in targets if destinations.address_key_or_none(d) in waiting]


def _public(row: dict[str, Any], waiting: frozenset[str] = frozenset()) -> AliasPublic:
    rule = AliasRule.from_row(row, row["domain"])
    local = f"/{rule.local_part}/" if rule.kind == "regex" else rule.local_part
    return AliasPublic(
        id=rule.id,
        address=f"{local}@{display_domain(rule.domain)}",
        domain=display_domain(rule.domain),
        kind=rule.kind,
        destinations=[_shown(d) for d in rule.destinations],
        pending_destinations=_pending(rule.destinations, waiting),
        mode=rule.mode,
        reject_message=rule.reject_message,
        enabled=rule.enabled,
        created_at=float(row["created_at"]),
        fallbacks=[_shown(f) for f in rule.fallbacks],
    )


@dataclass(frozen=True, slots=True)
class AliasKey:
    """Where an alias lives in the store."""

    domain_id: int
    domain: str
    kind: Kind
    local_part: str
    local_key: str


def _key(db: Database, org: int, address: str) -> AliasKey:
    kind, local, domain_text = parse_alias_address(address)
    if not domain_text:
        raise InvalidInput(f"{address!r} has no domain after @")
    did, alabel = domain_id(db=db, org=org, name=domain_text)
    if kind == "exact":
        try:
            validate_local_part(local)
        except InvalidInput as exc:
            raise FieldInvalid(
                f"{address!r} is not a valid alias: {exc}", field="local_part"
            ) from None
        key = local_key(local)
    elif kind == "regex":
        try:
            compile_pattern(local)
        except InvalidInput as exc:
            raise FieldInvalid(exc.message, field="local_part") from None
        key = local
    else:
        key = CATCHALL
    return AliasKey(did, alabel, kind, local, key)


def _destinations(
    values: Sequence[str],
    alias: AliasKey,
    *,
    field: str = "destinations",
    limit: int = MAX_DESTINATIONS,
    allow_private: bool = False,
) -> tuple[str, ...]:
    """Valid destinations for an alias (its destinations, or its fallbacks with `field`),
    each once, as stored: mail addresses, and https URLs (webhook destinations) checked by
    the SSRF rules (`allow_private`: SMTPY_WEBHOOK_ALLOW_PRIVATE)."""
    if len(values) > limit:
        raise FieldInvalid(f"an alias has at most {limit} {field}", field=field)
    seen: dict[str, None] = {}
    for n, value in enumerate(values):
        if is_url(value.strip()):
            try:
                url = check_url(value, allow_private=allow_private).url
            except InvalidInput as exc:
                raise FieldInvalid(f"{value[:80]!r}: {exc.message}", field=f"{field}.{n}") from None
            seen.setdefault(url, None)
            continue
        try:
            address = parse_address(value)
        except InvalidInput as exc:
            raise FieldInvalid(exc.message, field=f"{field}.{n}") from None
        if alias.kind == "exact" and address.key == f"{alias.local_key}@{alias.domain}":
            raise FieldInvalid(
                f"{value!r} is the alias itself: that would be a mail loop",
                field=f"{field}.{n}",
            )
        seen.setdefault(str(address), None)
    return tuple(seen)


def _url_rows(db: Database, org: int, targets: Sequence[str]) -> dict[str, str]:
    """Make the organization's rows for the URLs among `targets` (inside the caller's
    transaction); the secrets of those made now, by URL."""
    made: dict[str, str] = {}
    for target in targets:
        if is_url(target):
            row = ensure_url_destination(db, org=org, url=target)
            if row.created:
                made[target] = row.secret
    return made


def _identity(destination: str) -> str:
    """What makes two destinations the same: a mail address's key, anything else as given."""
    return destinations.address_key_or_none(destination) or destination


def _fallbacks(
    db: Database,
    values: Sequence[str],
    alias: AliasKey,
    targets: Sequence[str],
    *,
    allow_private: bool = False,
) -> tuple[str, ...]:
    """An alias's ordered fallbacks: addresses as for destinations, none of them one of its
    `targets`, none on a domain this forwarder serves (a fallback is delivered as written,
    never through aliases)."""
    fallbacks = _destinations(
        values, alias, field="fallbacks", limit=MAX_FALLBACKS, allow_private=allow_private
    )
    own = {_identity(t) for t in targets}
    for n, value in enumerate(fallbacks):
        if _identity(value) in own:
            raise FieldInvalid(
                f"{value!r} is a destination of the alias already; a fallback must be another "
                "address",
                field=f"fallbacks.{n}",
            )
        try:
            address = parse_address(value)
        except InvalidInput:
            continue  # not a mail address (a destination of another kind): no domain of ours
        if db.scalar("SELECT 1 FROM domains WHERE name = :d", {"d": address.domain}):
            raise FieldInvalid(
                f"{value!r} is on {display_domain(address.domain)}, a domain this forwarder "
                "serves: name the final address its alias forwards to",
                field=f"fallbacks.{n}",
            )
    return fallbacks


def _authorize(db: Database, role: Role | None, did: int) -> None:
    """Admins (and the operator at the shell, `role` None) manage every alias; a member
    only those of a domain whose ownership is verified (not pending)."""
    if allows(role, "manage"):
        return
    if allows(role, "aliases"):
        pending = db.scalar("SELECT pending FROM domains WHERE id = :id", {"id": did})
        if not pending:
            return
        raise Forbidden(
            "a member may manage aliases only once the domain is verified: "
            "ask an admin, or verify the domain first"
        )
    raise Forbidden(f"your role ({role}) may not change aliases: ask an admin")


def add_alias(
    *,
    db: Database,
    org: int,
    alias: AliasCreate,
    role: Role | None = None,
    catalog: Catalog | None = None,
    allow_private: bool = False,
    settings: Settings | None = None,
) -> AliasSaved:
    """Add an alias; nothing is written unless every part of the input is valid. `role`:
    the caller's in the organization (None: the operator at the shell). `catalog`: the
    configured plans; the plan must allow one more alias and its new destinations.
    `allow_private` (SMTPY_WEBHOOK_ALLOW_PRIVATE) lets URL destinations reach loopback
    and private addresses. The answer's `secrets` holds the signing secret of each URL
    destination the organization did not have yet. `settings`: for the confirmation mail
    of destinations a user adds through the API or dashboard
    (`destinations.note_alias_destinations`)."""
    address, mode, reject_message = alias.address, alias.mode, alias.reject_message
    if mode not in MODES:
        raise FieldInvalid(f"mode {mode!r} is not one of {', '.join(MODES)}", field="mode")
    key = _key(db, org, address)
    _authorize(db, role, key.domain_id)
    targets = _destinations(alias.destinations, key, allow_private=allow_private)
    if mode == "forward" and not targets:
        raise FieldInvalid(
            "a forwarding alias needs at least one destination address", field="destinations"
        )
    if mode != "forward" and targets:
        raise InvalidInput(f"a {mode} alias takes no destinations")
    if mode != "forward" and alias.fallbacks:
        raise FieldInvalid(f"a {mode} alias takes no fallbacks", field="fallbacks")
    fallbacks = _fallbacks(db, alias.fallbacks, key, targets, allow_private=allow_private)
    if reject_message is not None:
        if mode != "reject":
            raise InvalidInput("--message only applies to reject aliases")
        if not reject_message.isprintable() or len(reject_message) > 200:
            raise InvalidInput(
                "the reject message must be one printable line of at most 200 characters"
            )
    try:
        with db.transaction():
            billing.check_limit(db, org, "aliases", catalog=catalog)
            billing.check_destinations(db, org, (*targets, *fallbacks), catalog=catalog)
            new_id = db.insert(
                "INSERT INTO aliases (domain_id, kind, local_part, local_key, destinations,"
                " fallbacks, mode, reject_message, enabled, created_at) VALUES (:domain_id, :kind,"
                " :local_part, :local_key, :destinations, :fallbacks, :mode, :reject_message,"
                " :enabled, :now) RETURNING id",
                {
                    "domain_id": key.domain_id,
                    "kind": key.kind,
                    "local_part": key.local_part,
                    "local_key": key.local_key,
                    "destinations": json.dumps(list(targets), ensure_ascii=False),
                    "fallbacks": json.dumps(list(fallbacks), ensure_ascii=False),
                    "mode": mode,
                    "reject_message": reject_message,
                    "enabled": alias.enabled,
                    "now": time.time(),
                },
            )
            destinations.note_alias_destinations(
                db, org=org, destinations=(*targets, *fallbacks), settings=settings
            )
            created = _get(db, new_id)
            secrets = _url_rows(db, org, (*targets, *fallbacks))
            record(
                db,
                org=org,
                action="alias.create",
                target=created.address,
                detail={
                    "mode": created.mode,
                    "destinations": created.destinations,
                    **({"fallbacks": created.fallbacks} if created.fallbacks else {}),
                },
            )
    except Conflict:
        raise Conflict(
            f"the alias {address} already exists; remove it first to change it"
        ) from None
    return _saved(created, secrets)


_SELECT = (
    "SELECT a.id, a.kind, a.local_part, a.destinations, a.fallbacks, a.mode, a.reject_message,"
    " a.enabled, a.created_at, d.name AS domain, d.organization_id AS org"
    " FROM aliases a JOIN domains d ON d.id = a.domain_id"
)


def _get(db: Database, alias_id: int) -> AliasPublic:
    row = db.one(_SELECT + " WHERE a.id = :id", {"id": alias_id})
    if row is None:
        raise NotFound(f"alias #{alias_id} does not exist")
    return _one(db, row)


def _find(db: Database, org: int, address: str) -> tuple[int, AliasPublic]:
    key = _key(db, org, address)
    row = db.one(
        _SELECT + " WHERE a.domain_id = :d AND a.kind = :k AND a.local_key = :l",
        {"d": key.domain_id, "k": key.kind, "l": key.local_key},
    )
    if row is None:
        raise NotFound(f"there is no alias {address}; see `smtpy alias list`")
    return int(row["id"]), _one(db, row)


def find_alias(*, db: Database, org: int, address: str) -> AliasPublic:
    """The alias `address` names, written in any case and either domain form."""
    return _find(db, org, address)[1]


def list_aliases(*, db: Database, org: int, domain: str | None = None) -> list[AliasPublic]:
    """The organization's aliases (or one domain's): by domain, then exact, regex, catch-all."""
    order = " ORDER BY d.name, CASE a.kind WHEN 'exact' THEN 0 WHEN 'regex' THEN 1 ELSE 2 END, a.local_key, a.id"
    if domain is None:
        rows = db.all(_SELECT + " WHERE d.organization_id = :org" + order, {"org": org})
    else:
        did, _ = domain_id(db=db, org=org, name=domain)
        rows = db.all(_SELECT + " WHERE a.domain_id = :d" + order, {"d": did})
    return _publics(db, rows)


def _publics(db: Database, rows: Sequence[dict[str, Any]]) -> list[AliasPublic]:
    waiting = _waiting(db, rows)
    return [_public(row, waiting[int(row["org"])]) for row in rows]


def _one(db: Database, row: dict[str, Any]) -> AliasPublic:
    return _publics(db, [row])[0]


def remove_alias(*, db: Database, org: int, address: str, role: Role | None = None) -> AliasPublic:
    alias_id, info = _find(db, org, address)
    return _remove(db, org, alias_id, info, role)


def _remove(
    db: Database, org: int, alias_id: int, info: AliasPublic, role: Role | None
) -> AliasPublic:
    _authorize(db, role, _domain_of(db, alias_id))
    with db.transaction():
        if db.execute("DELETE FROM aliases WHERE id = :id", {"id": alias_id}):
            record(db, org=org, action="alias.remove", target=info.address)
    return info


def update_alias(
    *,
    db: Database,
    org: int,
    address: str,
    update: AliasUpdate,
    role: Role | None = None,
    allow_private: bool = False,
    settings: Settings | None = None,
) -> AliasSaved:
    """Change an alias: `enabled` False refuses its mail with 550 until enabled again;
    `destinations` and `fallbacks` replace those of a forwarding alias (`secrets`: as
    `add_alias`)."""
    alias_id, _ = _find(db, org, address)
    return _update(db, org, alias_id, update, role, allow_private=allow_private, settings=settings)


def _domain_of(db: Database, alias_id: int) -> int:
    return int(db.scalar("SELECT domain_id FROM aliases WHERE id = :id", {"id": alias_id}))


def _update(
    db: Database,
    org: int,
    alias_id: int,
    update: AliasUpdate,
    role: Role | None,
    *,
    allow_private: bool = False,
    settings: Settings | None = None,
) -> AliasSaved:
    _authorize(db, role, _domain_of(db, alias_id))
    with db.transaction():
        targets = _apply(db, org, alias_id, update, allow_private=allow_private, settings=settings)
        secrets = _url_rows(db, org, targets)
        after = _get(db, alias_id)
        changed = update.model_dump(exclude_none=True)
        if changed:
            record(db, org=org, action="alias.update", target=after.address, detail=changed)
    return _saved(after, secrets)


def _apply(
    db: Database,
    org: int,
    alias_id: int,
    update: AliasUpdate,
    *,
    allow_private: bool = False,
    settings: Settings | None = None,
) -> tuple[str, ...]:
    """Write `update`; the destinations and fallbacks it set (none when it leaves them)."""
    targets: tuple[str, ...] = ()
    fallbacks: tuple[str, ...] = ()
    if update.destinations is not None or update.fallbacks is not None:
        current = _get(db, alias_id)
        for name in ("destinations", "fallbacks"):
            if current.mode != "forward" and getattr(update, name) is not None:
                raise FieldInvalid(f"a {current.mode} alias takes no {name}", field=name)
        kind, local, domain_text = parse_alias_address(current.address)
        key = AliasKey(
            _domain_of(db, alias_id),
            normalize_domain(domain_text),
            kind,
            local,
            local_key(local) if kind == "exact" else local,
        )
        targets = _destinations(
            current.destinations if update.destinations is None else update.destinations,
            key,
            allow_private=allow_private,
        )
        if not targets:
            raise FieldInvalid(
                "a forwarding alias needs at least one destination address", field="destinations"
            )
        fallbacks = _fallbacks(
            db,
            current.fallbacks if update.fallbacks is None else update.fallbacks,
            key,
            targets,
            allow_private=allow_private,
        )
        db.execute(
            "UPDATE aliases SET destinations = :t, fallbacks = :f WHERE id = :id",
            {
                "t": json.dumps(list(targets), ensure_ascii=False),
                "f": json.dumps(list(fallbacks), ensure_ascii=False),
                "id": alias_id,
            },
        )
        destinations.note_alias_destinations(
            db, org=org, destinations=(*targets, *fallbacks), settings=settings
        )
    if update.enabled is not None:
        db.execute(
            "UPDATE aliases SET enabled = :e WHERE id = :id", {"e": update.enabled, "id": alias_id}
        )
    return targets + fallbacks


def _by_id(db: Database, org: int, alias_id: str | int) -> tuple[int, AliasPublic]:
    """An alias of `org` by its id (as the API gives it); another organization's is not
    found, exactly as a missing one."""
    text = str(alias_id).strip()
    missing = NotFound(
        f"there is no alias with id {text}; list them with GET /domains/NAME/aliases"
    )
    if not text.isdigit() or len(text) > 18:
        raise missing
    row = db.one(
        _SELECT + " WHERE a.id = :id AND d.organization_id = :org", {"id": int(text), "org": org}
    )
    if row is None:
        raise missing
    return int(row["id"]), _one(db, row)


def get_alias(*, db: Database, org: int, alias_id: str | int) -> AliasPublic:
    """One alias of the organization by id."""
    return _by_id(db, org, alias_id)[1]


def update_alias_by_id(
    *,
    db: Database,
    org: int,
    alias_id: str | int,
    update: AliasUpdate,
    role: Role | None = None,
    allow_private: bool = False,
    settings: Settings | None = None,
) -> AliasSaved:
    return _update(
        db,
        org,
        _by_id(db, org, alias_id)[0],
        update,
        role,
        allow_private=allow_private,
        settings=settings,
    )


def remove_alias_by_id(
    *, db: Database, org: int, alias_id: str | int, role: Role | None = None
) -> AliasPublic:
    found, info = _by_id(db, org, alias_id)
    return _remove(db, org, found, info, role)


def alias_page(
    *,
    db: Database,
    org: int,
    domain: str,
    limit: int | None = None,
    cursor: str | None = None,
) -> Page[AliasPublic]:
    """A domain's aliases, newest first, a page at a time (keyset on creation)."""
    did, _ = domain_id(db=db, org=org, name=domain)
    size = check_limit(limit)
    after, params = keyset("a.created_at", "a.id", cursor)
    where = "a.domain_id = :d" + (f" AND {after}" if after else "")
    rows = db.all(
        f"{_SELECT} WHERE {where} ORDER BY a.created_at DESC, a.id DESC LIMIT :n",
        {**params, "d": did, "n": size + 1},
    )
    return page_of(_publics(db, rows), size, key=lambda a: (a.created_at, a.id))


def domain_rules(db: Database, domain: str) -> DomainRules | None:
    """The router's view of one domain, or None when the domain is not served (unknown, or
    added through the API and not verified yet)."""
    alabel = normalize_domain(domain)
    row = db.one(
        "SELECT id, organization_id, dmarc_reject FROM domains WHERE name = :name AND NOT pending",
        {"name": alabel},
    )
    if row is None:
        return None
    rows = db.all(_SELECT + " WHERE a.domain_id = :d", {"d": row["id"]})
    dmarc_reject = None if row["dmarc_reject"] is None else bool(row["dmarc_reject"])
    return DomainRules.build(
        alabel,
        (AliasRule.from_row(r, alabel) for r in rows),
        dmarc_reject=dmarc_reject,
        unconfirmed=destinations.unconfirmed_keys(db, int(row["organization_id"])),
    )
