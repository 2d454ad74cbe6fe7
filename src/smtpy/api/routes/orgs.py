"""/api/v1 routes: the caller's organizations, the acting one, and its members (API.md).

Invitations (POST /org/members) are in `invitations.py`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict

from smtpy.accounts import members, sessions
from smtpy.accounts.actor import acting
from smtpy.accounts.roles import Role
from smtpy.admin import organizations
from smtpy.api.deps import (
    AccountDep,
    Auth,
    Db,
    SettingsDep,
    get_account,
    get_principal,
    is_api_key,
)
from smtpy.api.shapes import rfc3339
from smtpy.errors import NotFound
from smtpy.store.pages import Page

router = APIRouter(tags=["organizations"])

Limit = Annotated[int | None, Query(description="Items per page (1 to 200, default 50).")]
Cursor = Annotated[str | None, Query(description="The `next_cursor` of the previous page.")]


class OrgOut(BaseModel):
    """One of the caller's organizations, with the caller's role in it."""

    id: str
    name: str
    role: Role


class OrgDetailOut(BaseModel):
    """The acting organization, with the caller's role and what it holds."""

    id: str
    name: str
    role: Role
    created_at: str | None
    members: int
    domains: int
    aliases: int
    api_keys: int


class OrgCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str


class OrgUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str


class MemberOut(BaseModel):
    id: str  # the membership's id: /org/members/{id}
    user_id: str
    email: str
    name: str
    role: Role
    two_factor: bool
    created_at: str | None


class MemberUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role


def _member(m: members.MemberPublic) -> MemberOut:
    return MemberOut(
        id=str(m.id),
        user_id=str(m.user_id),
        email=m.email,
        name=m.name,
        role=m.role,
        two_factor=m.two_factor,
        created_at=rfc3339(m.created_at),
    )


def _member_id(text: str) -> int:
    """A membership id from the path; anything else is an unknown member (404)."""
    if not text.isdigit() or len(text) > 18:
        raise NotFound(f"there is no member {text!r} in this organization")
    return int(text)


def _detail(db: Db, principal: Auth) -> OrgDetailOut:
    info = organizations.organization_detail(db=db, org=principal.org)
    return OrgDetailOut(
        id=str(info.id),
        name=info.name,
        role=principal.role,
        created_at=rfc3339(info.created_at),
        members=info.members,
        domains=info.domains,
        aliases=info.aliases,
        api_keys=info.api_keys,
    )


@router.get("/orgs")
def list_orgs(
    request: Request, db: Db, settings: SettingsDep, limit: Limit = None, cursor: Cursor = None
) -> Page[OrgOut]:
    """The caller's organizations with their role in each (an API key: its own). A signed-in
    user who belongs to none gets an empty list."""
    if is_api_key(request):
        principal = get_principal(request, db, settings)
        org = organizations.organization_detail(db=db, org=principal.org)
        only = OrgOut(id=str(org.id), name=org.name, role=principal.role)
        return Page[OrgOut](data=[only], has_more=False, next_cursor=None)
    account = get_account(request, db, settings)
    page = members.page_organizations_of(db=db, user_id=account.user_id, limit=limit, cursor=cursor)
    return Page[OrgOut](
        data=[OrgOut(id=str(o.id), name=o.name, role=o.role) for o in page.data],
        has_more=page.has_more,
        next_cursor=page.next_cursor,
    )


@router.post("/orgs", status_code=201)
def create_org(body: OrgCreate, db: Db, account: AccountDep) -> OrgOut:
    """Create an organization; the signed-in caller becomes its owner (and acts in it, if
    their session had no organization)."""
    with acting(account.actor), db.transaction():
        org = organizations.add_organization(db=db, name=body.name, owner=account.user_id)
        if account.organization_id is None:
            sessions.set_organization(db=db, session_id=account.session_id, organization_id=org.id)
    return OrgOut(id=str(org.id), name=org.name, role="owner")


@router.get("/org")
def get_org(db: Db, principal: Auth) -> OrgDetailOut:
    """The acting organization."""
    principal.require("read")
    with acting(principal.actor):
        return _detail(db, principal)


@router.patch("/org")
def update_org(body: OrgUpdate, db: Db, principal: Auth) -> OrgDetailOut:
    """Rename the acting organization (owners)."""
    principal.require("organization")
    with acting(principal.actor):
        organizations.rename_organization(db=db, org=principal.org, name=body.name)
        return _detail(db, principal)


@router.get("/org/members")
def list_members(
    db: Db, principal: Auth, limit: Limit = None, cursor: Cursor = None
) -> Page[MemberOut]:
    """The acting organization's members, newest first."""
    principal.require("read")
    with acting(principal.actor):
        page = members.page_members(db=db, org=principal.org, limit=limit, cursor=cursor)
    return Page[MemberOut](
        data=[_member(m) for m in page.data], has_more=page.has_more, next_cursor=page.next_cursor
    )


@router.patch("/org/members/{member_id}")
def update_member(member_id: str, body: MemberUpdate, db: Db, principal: Auth) -> MemberOut:
    """Give a member another role (owners; the last owner stays one)."""
    principal.require("members")
    with acting(principal.actor):
        member = members.change_role(
            db=db, org=principal.org, member_id=_member_id(member_id), role=body.role
        )
    return _member(member)


@router.delete("/org/members/{member_id}", status_code=204)
def remove_member(member_id: str, db: Db, principal: Auth) -> Response:
    """Take a member out of the organization (owners; never the last owner)."""
    principal.require("members")
    with acting(principal.actor):
        members.remove_member(db=db, org=principal.org, member_id=_member_id(member_id))
    return Response(status_code=204)
