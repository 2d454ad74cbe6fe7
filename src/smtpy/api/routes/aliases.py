"""/api/v1 routes: aliases (see API.md).

`local_part` is `alice` (exact; `alice+tag@` reaches it too), `*` (the catch-all)
or `/PATTERN/` (an RE2 pattern matched against the whole local part). Admins
manage every alias; a member only those of verified (not pending) domains: the
core decides (`smtpy.admin.aliases`).
"""

from __future__ import annotations

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from smtpy.accounts.actor import acting
from smtpy.admin import aliases
from smtpy.api.deps import Auth, Db, SettingsDep
from smtpy.api.shapes import rfc3339
from smtpy.billing.plans import Catalog
from smtpy.store.pages import Page

router = APIRouter(tags=["aliases"])


class AliasIn(BaseModel):
    local_part: str = Field(min_length=1, max_length=500, examples=["alice", "*", "/^sales-.*$/"])
    destinations: list[str] = Field(default=[], examples=[["alice@mailbox.example"]])
    enabled: bool = True
    mode: str = "forward"  # forward | reject | discard
    reject_message: str | None = None
    # In order: where mail goes when a destination fails for good.
    fallbacks: list[str] = Field(default=[], examples=[["alice@backup.example"]])


class AliasPatch(BaseModel):
    destinations: list[str] | None = None
    enabled: bool | None = None
    fallbacks: list[str] | None = None  # replaces them all; [] removes them


class AliasOut(BaseModel):
    id: str
    address: str
    domain: str
    local_part: str  # as given: alice, *, /PATTERN/
    kind: str  # exact | regex | catchall
    destinations: list[str]
    fallbacks: list[str]
    pending_destinations: list[str]  # of `destinations`, those awaiting confirmation
    mode: str
    reject_message: str | None
    enabled: bool
    created_at: str


class AliasSavedOut(AliasOut):
    secrets: dict[str, str]  # {url: "whsec_…"} of the URL destinations made now; shown once


def _saved(a: aliases.AliasSaved) -> AliasSavedOut | AliasOut:
    """The alias, with `secrets` only when URL destinations were made now."""
    if not a.secrets:
        return _out(a)
    return AliasSavedOut(**_out(a).model_dump(), secrets=a.secrets)


def _out(a: aliases.AliasPublic) -> AliasOut:
    return AliasOut(
        id=str(a.id),
        address=a.address,
        domain=a.domain,
        local_part=a.address.rpartition("@")[0],
        kind=a.kind,
        destinations=a.destinations,
        fallbacks=a.fallbacks,
        pending_destinations=a.pending_destinations,
        mode=a.mode,
        reject_message=a.reject_message,
        enabled=a.enabled,
        created_at=rfc3339(a.created_at) or "",
    )


@router.get("/domains/{name}/aliases")
def list_aliases(
    name: str, db: Db, principal: Auth, limit: int | None = None, cursor: str | None = None
) -> Page[AliasOut]:
    """A domain's aliases, newest first."""
    page = aliases.alias_page(db=db, org=principal.org, domain=name, limit=limit, cursor=cursor)
    return Page[AliasOut](
        data=[_out(a) for a in page.data], has_more=page.has_more, next_cursor=page.next_cursor
    )


@router.post("/domains/{name}/aliases", status_code=201)
def add_alias(
    name: str, body: AliasIn, db: Db, principal: Auth, settings: SettingsDep
) -> AliasSavedOut | AliasOut:
    """Add an alias (409 when it exists). A destination may be an https URL: `secrets`
    holds, once, the signing secret of each URL the organization did not have yet
    (no `secrets` key when there is none)."""
    principal.require("aliases")
    create = aliases.AliasCreate(
        address=f"{body.local_part}@{name}",
        destinations=body.destinations,
        mode=body.mode,
        reject_message=body.reject_message,
        enabled=body.enabled,
        fallbacks=body.fallbacks,
    )
    with acting(principal.actor):
        added = aliases.add_alias(
            db=db,
            org=principal.org,
            alias=create,
            role=principal.role,
            catalog=Catalog.of(settings),
            allow_private=settings.webhook_allow_private,
            settings=settings,
        )
    return _saved(added)


@router.get("/aliases/{alias_id}")
def get_alias(alias_id: str, db: Db, principal: Auth) -> AliasOut:
    return _out(aliases.get_alias(db=db, org=principal.org, alias_id=alias_id))


@router.patch("/aliases/{alias_id}")
def update_alias(
    alias_id: str, body: AliasPatch, db: Db, principal: Auth, settings: SettingsDep
) -> AliasSavedOut | AliasOut:
    """Enable or disable an alias, or replace its destinations or fallbacks (`secrets`: as
    on create)."""
    principal.require("aliases")
    update = aliases.AliasUpdate(
        enabled=body.enabled, destinations=body.destinations, fallbacks=body.fallbacks
    )
    with acting(principal.actor):
        changed = aliases.update_alias_by_id(
            db=db,
            org=principal.org,
            alias_id=alias_id,
            update=update,
            role=principal.role,
            allow_private=settings.webhook_allow_private,
            settings=settings,
        )
    return _saved(changed)


@router.delete("/aliases/{alias_id}", status_code=204)
def delete_alias(alias_id: str, db: Db, principal: Auth) -> Response:
    principal.require("aliases")
    with acting(principal.actor):
        aliases.remove_alias_by_id(db=db, org=principal.org, alias_id=alias_id, role=principal.role)
    return Response(status_code=204)
