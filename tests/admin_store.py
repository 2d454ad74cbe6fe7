"""Shortcuts over the admin services for tests that only need served domains and aliases.

They act in the default organization, as the CLI does without `--org`, through
the same service calls the shells make.
"""

from __future__ import annotations

from collections.abc import Sequence

from smtpy.admin.aliases import AliasCreate, AliasPublic
from smtpy.admin.aliases import add_alias as create_alias
from smtpy.admin.domains import DomainCreate, DomainPublic
from smtpy.admin.domains import add_domain as create_domain
from smtpy.admin.organizations import resolve_organization
from smtpy.store.db import Database


def add_domain(db: Database, name: str, *, key_algorithm: str = "rsa") -> DomainPublic:
    org = resolve_organization(db=db).id
    return create_domain(
        db=db, org=org, domain=DomainCreate(name=name, key_algorithm=key_algorithm)
    )


def add_alias(
    db: Database,
    address: str,
    destinations: Sequence[str],
    *,
    mode: str = "forward",
    reject_message: str | None = None,
) -> AliasPublic:
    org = resolve_organization(db=db).id
    alias = AliasCreate(
        address=address, destinations=list(destinations), mode=mode, reject_message=reject_message
    )
    return create_alias(db=db, org=org, alias=alias)
