"""What routes declare they need: the store, the settings, and the authenticated caller.

Two kinds of callers (API.md "Authentication"):
- an API key, `Authorization: Bearer smtpy_<id>_<secret>`: acts in its organization
  with the `admin` role; no CSRF (a browser never sends it by itself);
- a browser session, the `smtpy_session` cookie: acts as its user in the session's
  organization, with their role there, once the second factor is given; a POST, PUT,
  PATCH or DELETE needs `X-CSRF-Token` and must not be `Sec-Fetch-Site: cross-site`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer

from smtpy.accounts import api_keys, members, sessions
from smtpy.accounts.actor import Actor
from smtpy.accounts.tokens import same
from smtpy.api.principal import Principal
from smtpy.config import Settings
from smtpy.errors import Forbidden, Unauthorized
from smtpy.store.db import Database

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_db(request: Request) -> Iterator[Database]:
    """A connection to the store for this request (from the app's pool)."""
    with request.app.state.pool.connection() as db:
        yield db


def client_ip(request: Request) -> str | None:
    """The client's address (the proxy's, unless SMTPY_TRUSTED_PROXIES trusts it)."""
    forwarded: str | None = getattr(request.state, "client_ip", None)
    if forwarded:
        return forwarded
    return request.client.host if request.client else None


SettingsDep = Annotated[Settings, Depends(get_settings)]
Db = Annotated[Database, Depends(get_db)]


def cookie_name(settings: Settings) -> str:
    """`__Host-smtpy_session` when the public URL is https, else `smtpy_session`."""
    secure = settings.public_url is not None and settings.public_url.startswith("https://")
    return sessions.SECURE_COOKIE if secure else sessions.COOKIE


@dataclass(frozen=True, slots=True)
class CurrentSession:
    """The browser's session, whether or not its second factor was given yet."""

    token: str  # the cookie's value
    info: sessions.SessionInfo

    @property
    def csrf_token(self) -> str:
        return sessions.csrf_token(self.token)


def check_csrf(request: Request, token: str) -> None:
    """Refuse (403) a cookie-authenticated change without the session's CSRF token, or
    sent from another site."""
    if request.method not in UNSAFE_METHODS:
        return
    if request.headers.get("sec-fetch-site", "").lower() == "cross-site":
        raise Forbidden("cross-site requests may not change anything")
    sent = request.headers.get("x-csrf-token", "")
    if not sent or not same(sent, sessions.csrf_token(token)):
        raise Forbidden(
            "the X-CSRF-Token header is missing or wrong: take it from the login answer "
            "or GET /api/v1/auth/csrf"
        )


# The two ways in, as the OpenAPI document names them (`security` of each operation);
# they check nothing themselves: the functions below do.
bearer_scheme = HTTPBearer(
    scheme_name="apiKey", auto_error=False, description="An API key: smtpy_<id>_<secret>."
)
session_scheme = APIKeyCookie(
    name=sessions.COOKIE,
    scheme_name="session",
    auto_error=False,
    description="The dashboard's session (__Host-smtpy_session under https).",
)
BearerDoc = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]
SessionDoc = Annotated[str | None, Depends(session_scheme)]


def _session(request: Request, db: Database, settings: Settings) -> CurrentSession:
    """The live session of the request's cookie, CSRF checked on changes."""
    token = request.cookies.get(cookie_name(settings))
    if not token:
        raise Unauthorized("sign in first")
    info = sessions.authenticate(db=db, token=token, idle_timeout=settings.session_idle_timeout)
    check_csrf(request, token)
    return CurrentSession(token=token, info=info)


def get_session(
    request: Request, db: Db, settings: SettingsDep, _cookie: SessionDoc = None
) -> CurrentSession:
    """The session of the cookie (CSRF checked on changes); `Unauthorized` without one."""
    return _session(request, db, settings)


SessionDep = Annotated[CurrentSession, Depends(get_session)]


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def get_principal(
    request: Request,
    db: Db,
    settings: SettingsDep,
    _bearer_doc: BearerDoc = None,
    _cookie_doc: SessionDoc = None,
) -> Principal:
    """The caller: an API key, else a session past its second factor; `Unauthorized` (401)."""
    token = _bearer(request)
    if token is not None:
        key = api_keys.authenticate(db=db, key=token)
        actor = Actor(
            via="api_key",
            name=f"key {key.name} ({key.id})",
            api_key_id=key.id,
            client_ip=client_ip(request),
        )
        return Principal(org=key.organization_id, role="admin", actor=actor, api_key_id=key.id)
    if request.headers.get("authorization"):
        raise Unauthorized("send an API key as Authorization: Bearer smtpy_<id>_<secret>")
    account = _signed_in(request, db, settings)
    org = account.organization_id
    role = None if org is None else members.role_of(db=db, org=org, user_id=account.user_id)
    if role is None or org is None:
        raise Forbidden(
            "you are not a member of an organization: create one (POST /api/v1/orgs) "
            "or ask an owner for an invitation"
        )
    return Principal(
        org=org,
        role=role,
        actor=account.actor,
        user_id=account.user_id,
        session_id=account.session_id,
    )


@dataclass(frozen=True, slots=True)
class Account:
    """A signed-in user past the second factor, in an organization or not."""

    user_id: int
    session_id: int
    organization_id: int | None  # the session's acting organization
    actor: Actor


def _signed_in(request: Request, db: Database, settings: Settings) -> Account:
    info = _session(request, db, settings).info
    if not info.mfa_passed:
        raise Unauthorized("enter your two-factor code first (POST /api/v1/auth/mfa)")
    actor = Actor(
        via="session", name=info.email, user_id=info.user_id, client_ip=client_ip(request)
    )
    return Account(
        user_id=info.user_id,
        session_id=info.id,
        organization_id=info.organization_id,
        actor=actor,
    )


def is_api_key(request: Request) -> bool:
    """Whether the request authenticates with an Authorization header (an API key)."""
    return bool(request.headers.get("authorization"))


def get_account(
    request: Request, db: Db, settings: SettingsDep, _cookie_doc: SessionDoc = None
) -> Account:
    """A signed-in user, whether or not in an organization (creating or listing theirs);
    API keys get 403."""
    if is_api_key(request):
        raise Forbidden("this needs a signed-in user, not an API key")
    return _signed_in(request, db, settings)


AccountDep = Annotated[Account, Depends(get_account)]


Auth = Annotated[Principal, Depends(get_principal)]


def get_user(principal: Auth) -> Principal:
    """A caller that is a signed-in user (for /me): API keys get 403."""
    if principal.user_id is None:
        raise Forbidden("this needs a signed-in user, not an API key")
    return principal


UserAuth = Annotated[Principal, Depends(get_user)]
