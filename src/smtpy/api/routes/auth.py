"""/api/v1/auth: sign in (password, then the second factor), sign out, sign up, confirm an
address, reset a password (API.md "Authentication"). Every rule is in
`smtpy.accounts.signin`; this module translates HTTP to it and back."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field

from smtpy.accounts import signin
from smtpy.accounts.actor import Actor, acting
from smtpy.accounts.sessions import NewSession, csrf_token
from smtpy.accounts.users import UserPublic
from smtpy.api.deps import Db, SessionDep, SettingsDep, client_ip, cookie_name
from smtpy.api.shapes import rfc3339
from smtpy.config import Settings
from smtpy.errors import Forbidden

router = APIRouter(tags=["auth"])


class UserOut(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    email: str
    name: str
    email_confirmed: bool
    two_factor: bool
    created_at: str

    @classmethod
    def of(cls, user: UserPublic) -> UserOut:
        return cls(
            id=str(user.id),
            email=user.email,
            name=user.name,
            email_confirmed=user.email_confirmed,
            two_factor=user.two_factor,
            created_at=rfc3339(user.created_at),
        )


class LoginIn(BaseModel):
    email: str = Field(max_length=320)
    password: str = Field(max_length=4096)


class LoginOut(BaseModel):
    user: UserOut
    mfa_required: bool
    csrf_token: str


class CodeIn(BaseModel):
    code: str = Field(max_length=100)


class SessionOut(BaseModel):
    mfa_required: bool
    csrf_token: str


class CsrfOut(BaseModel):
    csrf_token: str


class RegisterIn(BaseModel):
    email: str = Field(max_length=320)
    password: str = Field(max_length=4096)
    organization: str = Field(max_length=400)


class UserAnswer(BaseModel):
    user: UserOut


class TokenIn(BaseModel):
    token: str = Field(max_length=400)


class EmailIn(BaseModel):
    email: str = Field(max_length=400)


class ResetIn(BaseModel):
    token: str = Field(max_length=400)
    password: str = Field(max_length=4096)


class Accepted(BaseModel):
    detail: str


def secure_cookies(settings: Settings) -> bool:
    return settings.public_url is not None and settings.public_url.startswith("https://")


def set_session_cookie(response: Response, settings: Settings, new: NewSession) -> None:
    """The session cookie: HttpOnly, SameSite=Lax, Path=/, Secure under https."""
    response.set_cookie(
        cookie_name(settings),
        new.token,
        httponly=True,
        samesite="lax",
        path="/",
        secure=secure_cookies(settings),
    )


def clear_session_cookie(response: Response, settings: Settings) -> None:
    response.delete_cookie(
        cookie_name(settings),
        httponly=True,
        samesite="lax",
        path="/",
        secure=secure_cookies(settings),
    )


def not_cross_site(request: Request) -> None:
    """Refuse a sign-in or sign-up another site's page makes the browser send (login CSRF)."""
    if request.headers.get("sec-fetch-site", "").lower() == "cross-site":
        raise Forbidden("cross-site requests may not sign in or change anything")


SameSite = Annotated[None, Depends(not_cross_site)]


def visitor(request: Request, email: str | None = None) -> Actor:
    """Who acts before signing in: the address they give, from their client address."""
    return Actor(via="session", name=(email or "anonymous")[:320], client_ip=client_ip(request))


def session_actor(request: Request, session: SessionDep) -> Actor:
    info = session.info
    return Actor(via="session", name=info.email, user_id=info.user_id, client_ip=client_ip(request))


@router.post("/auth/login", response_model=LoginOut)
def login(
    body: LoginIn,
    request: Request,
    response: Response,
    db: Db,
    settings: SettingsDep,
    _same_site: SameSite,
) -> LoginOut:
    """Sign in with e-mail and password: sets the session cookie. With `mfa_required`, the
    session is limited until `POST /auth/mfa`."""
    with acting(visitor(request, body.email.strip().lower())):
        result = signin.login(
            db=db,
            settings=settings,
            email=body.email,
            password=body.password,
            client_ip=client_ip(request),
            user_agent=request.headers.get("user-agent"),
        )
    set_session_cookie(response, settings, result.new)
    return LoginOut(
        user=UserOut.of(result.user),
        mfa_required=result.mfa_required,
        csrf_token=csrf_token(result.new.token),
    )


@router.post("/auth/mfa", response_model=SessionOut)
def second_factor(
    body: CodeIn,
    request: Request,
    response: Response,
    db: Db,
    settings: SettingsDep,
    session: SessionDep,
) -> SessionOut:
    """The second factor: a TOTP code or a recovery code. The session gets a new cookie and
    a new CSRF token."""
    with acting(session_actor(request, session)):
        new = signin.second_factor(
            db=db,
            session_id=session.info.id,
            user_id=session.info.user_id,
            code=body.code,
            client_ip=client_ip(request),
        )
    set_session_cookie(response, settings, new)
    return SessionOut(mfa_required=False, csrf_token=csrf_token(new.token))


@router.post("/auth/logout", status_code=status.HTTP_204_NO_CONTENT)
def logout(
    request: Request, response: Response, db: Db, settings: SettingsDep, session: SessionDep
) -> None:
    """End this session."""
    with acting(session_actor(request, session)):
        signin.logout(db=db, session_id=session.info.id)
    clear_session_cookie(response, settings)


@router.get("/auth/csrf", response_model=CsrfOut)
def csrf(session: SessionDep) -> CsrfOut:
    """The CSRF token of this session, for X-CSRF-Token."""
    return CsrfOut(csrf_token=session.csrf_token)


@router.post("/auth/register", response_model=UserAnswer, status_code=status.HTTP_201_CREATED)
def register(
    body: RegisterIn, request: Request, db: Db, settings: SettingsDep, _same_site: SameSite
) -> UserAnswer:
    """Sign up (when SMTPY_SIGNUP is open): a confirmation link is mailed."""
    with acting(visitor(request, body.email.strip().lower())):
        user = signin.register(
            db=db,
            settings=settings,
            email=body.email,
            password=body.password,
            organization=body.organization,
        )
    return UserAnswer(user=UserOut.of(user))


@router.post("/auth/confirm", response_model=UserAnswer)
def confirm(body: TokenIn, request: Request, db: Db, _same_site: SameSite) -> UserAnswer:
    """Confirm an e-mail address with the token of the mailed link."""
    with acting(visitor(request)):
        user = signin.confirm_email(db=db, token=body.token)
    return UserAnswer(user=UserOut.of(user))


@router.post("/auth/password-reset", response_model=Accepted, status_code=status.HTTP_202_ACCEPTED)
def password_reset(
    body: EmailIn, request: Request, db: Db, settings: SettingsDep, _same_site: SameSite
) -> Accepted:
    """Mail a link to choose a new password; the same answer whether the address has an
    account or not."""
    with acting(visitor(request, body.email.strip().lower())):
        signin.request_password_reset(db=db, settings=settings, email=body.email)
    return Accepted(
        detail="if an account has this address, a link to choose a new password is on its way"
    )


@router.post("/auth/password-reset/confirm", response_model=UserAnswer)
def password_reset_confirm(
    body: ResetIn, request: Request, db: Db, _same_site: SameSite
) -> UserAnswer:
    """Set a new password with the token of the mailed link; every session ends."""
    with acting(visitor(request)):
        user = signin.reset_password(db=db, token=body.token, password=body.password)
    return UserAnswer(user=UserOut.of(user))
