"""Organizations: the tenant every domain belongs to, and what each one may see.

Every service takes the acting organization's id (`org`) and acts inside it:
listings and lookups show only its domains, aliases, keys, queued mail, log
events and figures. The CLI acts in the default organization (created on
first use) unless `--org NAME` names another; the HTTP API will take it from
the caller's account.

Queued mail and log events belong to the organization whose domain they were
sent to. Mail that no organization's domain received (bounces smtpy sends,
SRS bounces coming back, rejected relay attempts) is the operator's: the
default organization sees it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict

from smtpy.accounts.audit import record
from smtpy.accounts.organizations import (
    DEFAULT_ORGANIZATION,
    check_name,
    create_organization,
    taken,
    taken_message,
)
from smtpy.errors import Conflict, InvalidInput, NotFound
from smtpy.store.db import Database


class OrganizationPublic(BaseModel):
    model_config = ConfigDict(frozen=True, defer_build=True)

    id: int
    name: str
    created_at: float


def resolve_organization(*, db: Database, name: str | None = None) -> OrganizationPublic:
    """The organization called `name`; the default one (created on first use) when None.

    An unknown name is `NotFound`: only the default organization is created
    implicitly.
    """
    wanted = DEFAULT_ORGANIZATION if name is None else name.strip()
    row = db.one("SELECT id, name, created_at FROM organizations WHERE name = :n", {"n": wanted})
    if row is None and wanted == DEFAULT_ORGANIZATION:
        db.execute(
            "INSERT INTO organizations (name, created_at) VALUES (:n, :now)"
            " ON CONFLICT (name) DO NOTHING",
            {"n": wanted, "now": time.time()},
        )
        row = db.one(
            "SELECT id, name, created_at FROM organizations WHERE name = :n", {"n": wanted}
        )
    if row is None:
        raise NotFound(
            f"there is no organization named {wanted!r}; "
            "leave out --org to act in the default organization"
        )
    return OrganizationPublic(
        id=int(row["id"]), name=str(row["name"]), created_at=float(row["created_at"])
    )


@dataclass(frozen=True, slots=True)
class Scope:
    """Which served domains (A-labels) an organization sees mail for."""

    own: frozenset[str]  # its domains
    others: frozenset[str]  # every other organization's domains
    default: bool  # the default organization also sees mail no organization received

    def sees(self, domains: Iterable[str]) -> bool:
        """Whether mail to these domains (of its original recipients) is this organization's."""
        wanted = set(domains)
        if wanted & self.own:
            return True
        return self.default and not wanted & self.others

    def where(self, column: str) -> tuple[str, dict[str, Any]]:
        """An SQL condition on a domain `column` (a fixed name, never user text) and its
        parameters; "" when the organization sees everything."""
        if self.default and not self.others:
            return "", {}
        names, params = (self.own, "own") if not self.default else (self.others, "other")
        values = {f"scope_{params}{n}": name for n, name in enumerate(sorted(names))}
        listed = ", ".join(f":{key}" for key in values) or "NULL"
        if not self.default:
            return f"{column} IN ({listed})", values
        return f"({column} IS NULL OR {column} NOT IN ({listed}))", values


def scope(*, db: Database, org: int) -> Scope:
    """What `org` sees: one read of the domain table."""
    rows = db.all("SELECT d.name, d.organization_id FROM domains d")
    default = db.scalar("SELECT id FROM organizations WHERE name = :n", {"n": DEFAULT_ORGANIZATION})
    own = frozenset(str(r["name"]) for r in rows if int(r["organization_id"]) == org)
    others = frozenset(str(r["name"]) for r in rows if int(r["organization_id"]) != org)
    return Scope(own=own, others=others, default=default is not None and int(default) == org)


def organization_of(*, db: Database, domain: str) -> int:
    """The organization that serves `domain` (an A-label), else the default one."""
    row = db.scalar("SELECT organization_id FROM domains WHERE name = :name", {"name": domain})
    return int(row) if row is not None else resolve_organization(db=db).id


# -- managing organizations (`smtpy org`, /api/v1/orgs and /api/v1/org) ------------


class OrganizationDetail(OrganizationPublic):
    """An organization with the count of what it holds (`smtpy org show`, GET /org)."""

    members: int
    domains: int
    aliases: int
    api_keys: int  # not revoked


def _get(db: Database, org: int) -> OrganizationPublic:
    row = db.one("SELECT id, name, created_at FROM organizations WHERE id = :id", {"id": org})
    if row is None:
        raise NotFound(f"there is no organization with id {org}")
    return OrganizationPublic(
        id=int(row["id"]), name=str(row["name"]), created_at=float(row["created_at"])
    )


def add_organization(*, db: Database, name: str, owner: int | None = None) -> OrganizationPublic:
    """A new organization; `owner` (a user id) becomes its first owner. `Conflict` when the
    name is taken (in any case) or is the default organization's."""
    return _get(db, create_organization(db=db, name=name, owner=owner))


def list_organizations(*, db: Database) -> list[OrganizationDetail]:
    """Every organization, by name, with its counts (the operator's view)."""
    rows = db.all("SELECT id FROM organizations ORDER BY name, id")
    return [organization_detail(db=db, org=int(r["id"])) for r in rows]


def organization_detail(*, db: Database, org: int) -> OrganizationDetail:
    """One organization with the count of its members, domains, aliases and live API keys."""
    info = _get(db, org)
    counts = db.one(
        "SELECT"
        " (SELECT count(*) FROM memberships WHERE organization_id = :org) AS members,"
        " (SELECT count(*) FROM domains WHERE organization_id = :org) AS domains,"
        " (SELECT count(*) FROM aliases a JOIN domains d ON d.id = a.domain_id"
        "   WHERE d.organization_id = :org) AS aliases,"
        " (SELECT count(*) FROM api_keys WHERE organization_id = :org"
        "   AND revoked_at IS NULL) AS api_keys",
        {"org": org},
    )
    assert counts is not None
    return OrganizationDetail(
        id=info.id,
        name=info.name,
        created_at=info.created_at,
        members=int(counts["members"]),
        domains=int(counts["domains"]),
        aliases=int(counts["aliases"]),
        api_keys=int(counts["api_keys"]),
    )


def rename_organization(*, db: Database, org: int, name: str) -> OrganizationPublic:
    """Give an organization another name (the caller checked the `organization` permission).
    The default organization keeps its name: the CLI finds it by that name."""
    value = check_name(name)
    with db.transaction():
        before = _get(db, org)
        if before.name == DEFAULT_ORGANIZATION:
            raise InvalidInput("the default organization cannot be renamed")
        if value.lower() == DEFAULT_ORGANIZATION or taken(db, value, other_than=org):
            raise Conflict(taken_message(value))
        if value != before.name:
            try:
                db.execute(
                    "UPDATE organizations SET name = :n WHERE id = :id", {"n": value, "id": org}
                )
            except Conflict:
                raise Conflict(taken_message(value)) from None
            record(
                db,
                org=org,
                action="organization.rename",
                target=value,
                detail={"from": before.name},
            )
    return _get(db, org)
