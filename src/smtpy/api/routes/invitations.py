"""/api/v1 invitations: an owner invites an address into the acting organization
(`POST /org/members`), and the invited person accepts with the mailed token
(`POST /auth/invitations/accept`). The rules are in `smtpy.accounts.signin`."""

from __future__ import annotations

from fastapi import APIRouter, Request, status
from pydantic import BaseModel, Field

from smtpy.accounts import signin
from smtpy.accounts.actor import acting
from smtpy.accounts.roles import parse_role
from smtpy.api.deps import Auth, Db, SettingsDep
from smtpy.api.routes.auth import SameSite, UserOut, visitor

router = APIRouter(tags=["invitations"])


class InviteIn(BaseModel):
    email: str = Field(max_length=400)
    role: str = Field(default="member", max_length=32)


class Invited(BaseModel):
    email: str
    role: str
    detail: str


class AcceptIn(BaseModel):
    token: str = Field(max_length=400)
    password: str | None = Field(default=None, max_length=4096)


class OrganizationRef(BaseModel):
    id: str
    name: str


class JoinedOut(BaseModel):
    user: UserOut
    organization: OrganizationRef
    role: str


@router.post("/org/members", response_model=Invited, status_code=status.HTTP_202_ACCEPTED)
def invite(body: InviteIn, db: Db, settings: SettingsDep, principal: Auth) -> Invited:
    """Invite an address into the acting organization with a role (owners only): an
    invitation link is mailed; they become a member once they accept."""
    principal.require("members")
    role = parse_role(body.role)
    with acting(principal.actor):
        signin.invite(
            db=db,
            settings=settings,
            org=principal.org,
            email=body.email,
            role=role,
            invited_by=principal.user_id,
        )
    return Invited(
        email=body.email.strip().lower(), role=role, detail="the invitation is on its way"
    )


@router.post("/auth/invitations/accept", response_model=JoinedOut)
def accept(body: AcceptIn, request: Request, db: Db, _same_site: SameSite) -> JoinedOut:
    """Accept an invitation with the mailed token: an existing account joins; a new one is
    made with `password`."""
    with acting(visitor(request)):
        joined = signin.accept_invitation(
            db=db, token=body.token, password=body.password, user_id=None
        )
    return JoinedOut(
        user=UserOut.of(joined.user),
        organization=OrganizationRef(id=str(joined.organization_id), name=joined.organization),
        role=joined.role,
    )
