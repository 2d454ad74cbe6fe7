"""Import aliases from a Postfix `virtual` map, all or nothing.

The input is the text file `postmap` reads (virtual(5)): one entry per logical
line, `KEY VALUE`; a line that starts with whitespace continues the one
before; empty lines and lines whose first non-blank character is `#` are
ignored (as in Postfix, a `#` later in a line is data, not a comment).

Accepted keys, each with destinations separated by commas and/or blanks:

    alice@example.org   a@x.example, b@y.example    an exact alias
    @example.org        me@x.example                the domain's catch-all (*@example.org)
    alice               a@x.example                 alice@DOMAIN, with --domain DOMAIN only
    example.org         anything                    a virtual alias domain: it must be served

Refused, each with its line number: regexp and pcre table lines (`/PATTERN/`,
`if`, `endif`; write those as `smtpy alias add '/PATTERN/@DOMAIN'`), keys with
no domain when --domain is not given, destinations with no domain (local
mailboxes of the Postfix host), `|command`, `/file` and `:include:`
destinations, `@domain` destinations (domain-to-domain rewriting), a key given
twice with different destinations, an alias that already exists with other
destinations, and everything `smtpy alias add` refuses (unknown domain, bad
address, mail loop...).

An alias that already exists with the same destinations is left as it is, so
running the same import twice is harmless. All aliases are added through the
alias service inside one transaction (each alias in a savepoint of it, so every
bad line is found and reported): one bad line and nothing is written. A dry
run does the same work and rolls it back.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    SerializerFunctionWrapHandler,
    computed_field,
    model_serializer,
)

from smtpy.accounts.audit import record
from smtpy.admin.aliases import AliasCreate, AliasPublic, add_alias, find_alias
from smtpy.admin.domains import domain_id
from smtpy.errors import InvalidInput, NotFound
from smtpy.mail.addresses import normalize_domain, parse_address
from smtpy.mail.parsed import is_url
from smtpy.store.db import Database

# What a Postfix virtual map may hold that smtpy cannot express, by first character.
_REFUSED_DESTINATIONS = {
    "|": "delivery to a command is not supported: smtpy only forwards to mail addresses",
    "/": "delivery to a file is not supported: smtpy only forwards to mail addresses",
    ":": ":include: lists are not supported: list the addresses themselves",
    "@": "domain-to-domain rewriting (@a @b) is not supported: add one alias per address",
}
_REGEXP_HINT = (
    "regexp/pcre table entries are not imported; add the rule by hand, e.g. "
    "smtpy alias add '/^sales-.*$/@example.org' sales@corp.example"
)


class LineError(BaseModel):
    """A line of the map that cannot be imported, and why."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass(frozen=True, slots=True)
class MapEntry:
    """One logical line of the map, as written."""

    line: int
    key: str
    values: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PlannedAlias:
    """An alias the map asks for, in `smtpy alias add` form."""

    line: int
    address: str
    destinations: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DomainLine:
    """`example.org anything`: the map declares a virtual alias domain."""

    line: int
    domain: str


class Skipped(BaseModel):
    """A line left out on purpose (another domain than --domain)."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    line: int
    key: str
    reason: str


@dataclass(slots=True)
class VirtualMap:
    """What the parser made of a map: aliases to add, domains to check, and errors."""

    aliases: list[PlannedAlias] = field(default_factory=list)
    domains: list[DomainLine] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    errors: list[LineError] = field(default_factory=list)


class ImportedAlias(AliasPublic):
    """An alias of the map, with the line it came from."""

    line: int


class ImportResult(BaseModel):
    """What an import did, or would do in a dry run (`alias import --json` prints these keys)."""

    model_config = ConfigDict(defer_build=True)

    dry_run: bool
    created: list[ImportedAlias] = []
    unchanged: list[ImportedAlias] = []  # already there with the same destinations
    skipped: list[Skipped] = []
    errors: list[LineError] = []

    @computed_field  # type: ignore[prop-decorator]
    @property
    def imported(self) -> bool:
        """Whether the aliases are in the store now."""
        return not self.errors and not self.dry_run

    @model_serializer(mode="wrap")
    def _rolled_back_rows_have_no_id(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if self.dry_run:  # the rows were rolled back: their ids and times never existed
            for alias in data["created"]:
                alias.pop("id", None)
                alias.pop("created_at", None)
        return data


class MapRejected(InvalidInput):
    """The map has bad lines; nothing was written. `result.errors` lists them all."""

    def __init__(self, result: ImportResult) -> None:
        count = len(result.errors)
        first = result.errors[0]
        more = f" (and {count - 1} more)" if count > 1 else ""
        super().__init__(f"{first}{more}; nothing was imported")
        self.result = result


# -- reading the map (pure) ----------------------------------------------------


def logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """(number of the first physical line, joined text) of each entry, as postmap reads them."""
    start = 0
    parts: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if raw[0].isspace():
            if parts:
                parts.append(stripped)
                continue
            yield number, raw  # a continuation with nothing to continue: reported by the caller
            continue
        if parts:
            yield start, " ".join(parts)
        start, parts = number, [stripped]
    if parts:
        yield start, " ".join(parts)


def split_entry(number: int, text: str) -> MapEntry:
    key, *rest = text.split(None, 1)
    values = tuple(" ".join(rest).replace(",", " ").split())
    return MapEntry(number, key, values)


def _same_domain(domain_text: str, wanted: str | None) -> bool:
    if wanted is None:
        return True
    try:
        return normalize_domain(domain_text) == wanted
    except InvalidInput:
        return True  # let the alias service report the bad domain


def _plan(entry: MapEntry, only: str | None, out: VirtualMap) -> None:
    key = entry.key
    if key.startswith("/") or key.lower() in ("if", "endif"):
        out.errors.append(LineError(line=entry.line, message=_REGEXP_HINT))
        return
    if not entry.values:
        out.errors.append(LineError(line=entry.line, message=f"{key!r} has no destination"))
        return
    if "@" not in key:
        looks_like_domain = "." in key and len(entry.values) == 1 and "@" not in entry.values[0]
        if looks_like_domain:
            if _same_domain(key, only):
                out.domains.append(DomainLine(entry.line, key))
            else:
                out.skipped.append(
                    Skipped(line=entry.line, key=key, reason="another domain than --domain")
                )
            return
        if only is None:
            out.errors.append(
                LineError(
                    line=entry.line,
                    message=f"{key!r} has no domain (Postfix matches it in $myorigin): "
                    "import with --domain DOMAIN, or write it as user@domain",
                )
            )
            return
        address = f"{key}@{only}"
    else:
        local, _, domain_text = key.rpartition("@")
        if not _same_domain(domain_text, only):
            out.skipped.append(
                Skipped(line=entry.line, key=key, reason="another domain than --domain")
            )
            return
        address = f"*@{domain_text}" if not local else key
    for value in entry.values:
        refused = _REFUSED_DESTINATIONS.get(value[0])
        if refused is None and "@" not in value:
            refused = (
                f"destination {value!r} has no domain (a local mailbox of the Postfix host): "
                "write the full address it should go to"
            )
        if refused is not None:
            out.errors.append(LineError(line=entry.line, message=refused))
            return
    out.aliases.append(PlannedAlias(entry.line, address, entry.values))


def parse_virtual_map(text: str, *, domain: str | None = None) -> VirtualMap:
    """Read a Postfix virtual map; with `domain`, keep only that domain's entries."""
    only = normalize_domain(domain) if domain is not None else None
    out = VirtualMap()
    seen: dict[str, MapEntry] = {}
    for number, line in logical_lines(text):
        if line[0].isspace():
            out.errors.append(
                LineError(
                    line=number,
                    message="a continuation line (starting with a blank) follows no entry",
                )
            )
            continue
        entry = split_entry(number, line)
        earlier = seen.get(entry.key.lower())
        if earlier is not None:
            if earlier.values != entry.values:
                out.errors.append(
                    LineError(
                        line=number,
                        message=f"{entry.key!r} is already given on line {earlier.line} "
                        "with other destinations",
                    )
                )
            continue
        seen[entry.key.lower()] = entry
        _plan(entry, only, out)
    return out


# -- writing (one transaction) -----------------------------------------------------


class _RollBack(Exception):
    """Raised inside the transaction to undo a dry run or a rejected import."""


def _destination_keys(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(v if is_url(v) else str(parse_address(v)) for v in values))


def _apply(db: Database, org: int, planned: VirtualMap, result: ImportResult) -> None:
    for line in planned.domains:
        try:
            domain_id(db=db, org=org, name=line.domain)
        except InvalidInput as exc:
            result.errors.append(LineError(line=line.line, message=str(exc)))
    for alias in planned.aliases:
        try:
            try:
                existing: AliasPublic | None = find_alias(db=db, org=org, address=alias.address)
            except NotFound:
                existing = None
            if existing is None:
                info = add_alias(
                    db=db,
                    org=org,
                    alias=AliasCreate(address=alias.address, destinations=list(alias.destinations)),
                )
                result.created.append(ImportedAlias(line=alias.line, **info.model_dump()))
            elif existing.mode == "forward" and set(
                _destination_keys(tuple(existing.destinations))
            ) == set(_destination_keys(alias.destinations)):
                result.unchanged.append(ImportedAlias(line=alias.line, **existing.model_dump()))
            else:
                result.errors.append(
                    LineError(
                        line=alias.line,
                        message=f"the alias {existing.address} already exists with other "
                        "destinations; remove it first (smtpy alias remove) to replace it",
                    )
                )
        except InvalidInput as exc:
            result.errors.append(LineError(line=alias.line, message=str(exc)))


def import_virtual_map(
    *, db: Database, org: int, text: str, domain: str | None = None, dry_run: bool = False
) -> ImportResult:
    """Add the aliases of a Postfix virtual map, all or nothing.

    Returns what was (or, in a dry run, would be) created. Raises `MapRejected`
    listing every bad line when any line is bad; nothing is written then.
    """
    if domain is not None:
        domain_id(
            db=db, org=org, name=domain
        )  # one clear error for an unserved --domain, not one per line
    planned = parse_virtual_map(text, domain=domain)
    result = ImportResult(dry_run=dry_run, skipped=planned.skipped, errors=list(planned.errors))
    try:
        with db.transaction():
            _apply(db, org, planned, result)
            if result.errors or dry_run:
                raise _RollBack
            record(
                db,
                org=org,
                action="alias.import",
                target=domain,
                detail={"created": len(result.created), "unchanged": len(result.unchanged)},
            )
    except _RollBack:
        pass
    result.errors.sort(key=lambda error: error.line)
    if result.errors:
        result.created.clear()  # rolled back: nothing was created
        result.unchanged.clear()
        raise MapRejected(result)
    return result


def describe(result: ImportResult) -> str:
    """One line that sums up an import."""
    verb = "would import" if result.dry_run else "imported"
    parts = [f"{verb} {len(result.created)} alias{'es' if len(result.created) != 1 else ''}"]
    if result.unchanged:
        parts.append(f"{len(result.unchanged)} already present")
    if result.skipped:
        parts.append(f"{len(result.skipped)} skipped (other domains)")
    return ", ".join(parts) + ("; nothing was written (dry run)" if result.dry_run else "")
