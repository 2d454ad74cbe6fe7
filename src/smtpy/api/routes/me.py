"""/api/v1/me: the signed-in user's profile, password, two-factor authentication and
sessions (API.md "Resources"). API keys get 403 here: these belong to a person."""

from __future__ import annotations

from fastapi import APIRouter, Request, status
from pydantic import BaseModel, Field

from smtpy.accounts import members, mfa, sessions, signin, users
from smtpy.accounts.actor import acting
from smtpy.accounts.roles import Role
from smtpy.api.deps import Db, UserAuth, client_ip
from smtpy.api.routes.auth import UserOut
from smtpy.api.shapes import rfc3339
from smtpy.errors import InvalidInput, NotFound

router = APIRouter(tags=["me"])


class OrganizationOut(BaseModel):
    id: str
    name: str
    role: Role


class MeOut(UserOut):
    organization_id: str  # the organization this session acts in
    organizations: list[OrganizationOut]


class ProfileIn(BaseModel):
    name: str = Field(max_length=400)


class PasswordIn(BaseModel):
    current_password: str = Field(max_length=4096)
    new_password: str = Field(max_length=4096)


class EnrolmentOut(BaseModel):
    secret: str
    otpauth_uri: str
    qr_svg: str


class CodeIn(BaseModel):
    code: str = Field(max_length=100)


class RecoveryCodesOut(BaseModel):
    recovery_codes: list[str]


class DisableIn(BaseModel):
    code: str | None = Field(default=None, max_length=100)
    password: str | None = Field(default=None, max_length=4096)


class SessionOut(BaseModel):
    id: str
    current: bool
    mfa_passed: bool
    created_at: str
    last_seen_at: str
    expires_at: str
    client_ip: str | None
    user_agent: str | None


class SessionList(BaseModel):
    data: list[SessionOut]
    has_more: bool
    next_cursor: str | None


def _me(db: Db, principal: UserAuth) -> MeOut:
    assert principal.user_id is not None
    user = users.get_user(db=db, user_id=principal.user_id)
    orgs = members.organizations_of(db=db, user_id=principal.user_id)
    return MeOut(
        **UserOut.of(user).model_dump(),
        organization_id=str(principal.org),
        organizations=[OrganizationOut(id=str(o.id), name=o.name, role=o.role) for o in orgs],
    )


@router.get("/me", response_model=MeOut)
def get_me(db: Db, principal: UserAuth) -> MeOut:
    """The signed-in user and their organizations."""
    return _me(db, principal)


@router.patch("/me", response_model=MeOut)
def patch_me(body: ProfileIn, db: Db, principal: UserAuth) -> MeOut:
    """Change the display name."""
    assert principal.user_id is not None
    with acting(principal.actor):
        signin.update_profile(db=db, user_id=principal.user_id, name=body.name)
    return _me(db, principal)


@router.post("/me/password", status_code=status.HTTP_204_NO_CONTENT)
def change_password(body: PasswordIn, request: Request, db: Db, principal: UserAuth) -> None:
    """Change the password (the current one proves it is you); the other sessions end."""
    assert principal.user_id is not None
    with acting(principal.actor):
        signin.change_password(
            db=db,
            user_id=principal.user_id,
            session_id=principal.session_id,
            current=body.current_password,
            new=body.new_password,
            client_ip=client_ip(request),
        )


@router.post("/me/2fa", response_model=EnrolmentOut, status_code=status.HTTP_201_CREATED)
def start_2fa(db: Db, principal: UserAuth) -> EnrolmentOut:
    """Start enrolling an authenticator app: its secret, otpauth URI and QR code (SVG)."""
    assert principal.user_id is not None
    with acting(principal.actor):
        enrolment = mfa.start_enrolment(db=db, user_id=principal.user_id)
    return EnrolmentOut(**enrolment.model_dump())


@router.post("/me/2fa/confirm", response_model=RecoveryCodesOut)
def confirm_2fa(body: CodeIn, db: Db, principal: UserAuth) -> RecoveryCodesOut:
    """Turn 2FA on with a first code from the app; the recovery codes, shown this once."""
    assert principal.user_id is not None
    with acting(principal.actor):
        codes = mfa.confirm_enrolment(db=db, user_id=principal.user_id, code=body.code)
    return RecoveryCodesOut(recovery_codes=codes)


@router.delete("/me/2fa", status_code=status.HTTP_204_NO_CONTENT)
def disable_2fa(body: DisableIn, request: Request, db: Db, principal: UserAuth) -> None:
    """Turn 2FA off, proven by a current `code` (or a recovery code) or the `password`."""
    assert principal.user_id is not None
    proof = body.code or body.password
    if not proof:
        raise InvalidInput("send a current code or your password to turn 2FA off")
    with acting(principal.actor):
        mfa.disable(
            db=db, user_id=principal.user_id, code_or_password=proof, client_ip=client_ip(request)
        )


@router.get("/me/sessions", response_model=SessionList)
def list_sessions(db: Db, principal: UserAuth) -> SessionList:
    """The user's live sessions, most recently used first; `current` marks this one."""
    assert principal.user_id is not None
    rows = sessions.list_sessions(db=db, user_id=principal.user_id)
    return SessionList(
        data=[
            SessionOut(
                id=str(s.id),
                current=s.id == principal.session_id,
                mfa_passed=s.mfa_passed,
                created_at=rfc3339(s.created_at),
                last_seen_at=rfc3339(s.last_seen_at),
                expires_at=rfc3339(s.expires_at),
                client_ip=s.client_ip,
                user_agent=s.user_agent,
            )
            for s in rows
        ],
        has_more=False,
        next_cursor=None,
    )


@router.delete("/me/sessions/{session_id}", status_code=status.HTTP_204_NO_CONTENT)
def revoke_session(session_id: str, db: Db, principal: UserAuth) -> None:
    """End one of the user's sessions (this one too, if named)."""
    assert principal.user_id is not None
    if not session_id.isdigit() or len(session_id) > 18:
        raise NotFound(f"there is no session {session_id!r}")
    with acting(principal.actor):
        signin.revoke_session(db=db, user_id=principal.user_id, session_id=int(session_id))
