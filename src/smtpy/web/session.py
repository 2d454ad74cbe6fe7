"""Who is looking at a page: the browser's session, as the API sees it (smtpy.api.deps).

Pages declare what they need:

    @router.get("/domains")
    def domains(request: Request, db: Db, user: PageUser) -> Response:
        ...  # user.principal: the Principal (org, role, actor...), user.csrf_token

- `PageUser`: a signed-in user past the second factor, in an organization. Not signed
  in (or the session ended) -> 303 to /login?next=<this page>; signed in but the
  two-factor code not given yet -> 303 to /login/2fa?next=…; no organization -> 403.
- `PageSession`: any live session, also before the second factor (the 2FA step, and
  the settings pages of a user without an organization).
- `MaybeSession`: the session if there is one, else None (signed-out pages).

Changes (POST, PUT, PATCH, DELETE) need the session's CSRF token, exactly as in the
API (`deps.check_csrf`): htmx sends it as the `X-CSRF-Token` header (set once on
<body> with `hx-headers:inherited`); a plain form post without JavaScript sends the
same token as the hidden field `csrf_token`, which is checked by the same function.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated
from urllib.parse import quote, urlsplit

from fastapi import Depends, Request

from smtpy.accounts import members, sessions
from smtpy.accounts.actor import Actor
from smtpy.api.deps import (
    UNSAFE_METHODS,
    Db,
    SettingsDep,
    check_csrf,
    client_ip,
    cookie_name,
)
from smtpy.api.principal import Principal
from smtpy.errors import Forbidden, Unauthorized

CSRF_FIELD = "csrf_token"
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


class Redirect(Exception):  # control flow, not an error
    """Send the browser to `location` with 303 (handled by smtpy.web.app)."""

    def __init__(self, location: str, *, clear_cookie: bool = False) -> None:
        super().__init__(location)
        self.location = location
        self.clear_cookie = clear_cookie


def safe_next(value: str | None, default: str = "/") -> str:
    """`value` if it is a path on this site (never another host: no open redirect)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return default
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return default
    return value


def _here(request: Request) -> str:
    path = request.url.path
    if request.url.query:
        path += "?" + request.url.query
    return path


def login_url(request: Request, step: str = "/login") -> str:
    """The sign-in page (or the 2FA step), coming back here afterwards."""
    here = _here(request) if request.method == "GET" else request.headers.get("hx-current-url")
    target = safe_next(urlsplit(here).path if here and "://" in here else here, "")
    if not target or target in ("/", "/login", "/login/2fa"):
        return step
    return f"{step}?next={quote(target, safe='/')}"


@dataclass(frozen=True, slots=True)
class BrowserSession:
    """The browser's live session (perhaps before its second factor)."""

    token: str  # the cookie's value
    info: sessions.SessionInfo

    @property
    def csrf_token(self) -> str:
        return sessions.csrf_token(self.token)


@dataclass(frozen=True, slots=True)
class SignedIn:
    """A signed-in user past 2FA, acting in their session's organization."""

    session: BrowserSession
    principal: Principal

    @property
    def csrf_token(self) -> str:
        return self.session.csrf_token

    @property
    def email(self) -> str:
        return self.session.info.email


async def _check_csrf(request: Request, token: str) -> None:
    """`deps.check_csrf`, also for a plain form whose token is in the `csrf_token` field."""
    try:
        await _check_csrf_carriers(request, token)
    except Forbidden as exc:
        raise Forbidden(
            "this form has expired or came from another site: reload the page and send it again"
        ) from exc


async def _check_csrf_carriers(request: Request, token: str) -> None:
    if request.method not in UNSAFE_METHODS:
        return
    if "x-csrf-token" not in request.headers:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith(FORM_TYPES):
            form = await request.form()  # Starlette keeps it: the route reads it again
            sent = form.get(CSRF_FIELD)
            if isinstance(sent, str) and sent:
                # The API's check on the same token: only its carrier differs.
                headers = [*request.scope["headers"], (b"x-csrf-token", sent.encode())]
                check_csrf(Request({**request.scope, "headers": headers}), token)
                return
    check_csrf(request, token)


def _find_session(request: Request, db: Db, settings: SettingsDep) -> BrowserSession | None:
    token = request.cookies.get(cookie_name(settings))
    if not token:
        return None
    try:
        info = sessions.authenticate(db=db, token=token, idle_timeout=settings.session_idle_timeout)
    except Unauthorized:
        return None
    return BrowserSession(token=token, info=info)


async def get_maybe_session(
    request: Request, db: Db, settings: SettingsDep
) -> BrowserSession | None:
    """The session if the browser has a live one (CSRF checked on changes), else None."""
    session = _find_session(request, db, settings)
    if session is not None:
        await _check_csrf(request, session.token)
    return session


MaybeSession = Annotated[BrowserSession | None, Depends(get_maybe_session)]


async def get_page_session(request: Request, session: MaybeSession) -> BrowserSession:
    """A live session, else 303 to the sign-in page (which comes back here)."""
    if session is None:
        clear = bool(request.cookies)
        raise Redirect(login_url(request), clear_cookie=clear)
    return session


PageSession = Annotated[BrowserSession, Depends(get_page_session)]


def get_page_user(request: Request, db: Db, session: PageSession) -> SignedIn:
    """The signed-in user past the second factor, in their organization."""
    info = session.info
    if not info.mfa_passed:
        raise Redirect(login_url(request, "/login/2fa"))
    role = (
        None
        if info.organization_id is None
        else members.role_of(db=db, org=info.organization_id, user_id=info.user_id)
    )
    if role is None or info.organization_id is None:
        raise Forbidden("you are not a member of an organization: ask an owner for an invitation")
    actor = Actor(
        via="session", name=info.email, user_id=info.user_id, client_ip=client_ip(request)
    )
    principal = Principal(
        org=info.organization_id,
        role=role,
        actor=actor,
        user_id=info.user_id,
        session_id=info.id,
    )
    return SignedIn(session=session, principal=principal)


PageUser = Annotated[SignedIn, Depends(get_page_user)]


class Landing(Exception):  # control flow, not an error
    """Show the signed-out landing page (handled by smtpy.web.routing)."""


def get_home_user(
    request: Request, db: Db, settings: SettingsDep, session: MaybeSession
) -> SignedIn:
    """For `/`: the signed-in user; a visitor sees the landing page when sign-up is open,
    else goes to /login."""
    if session is None:
        if settings.signup == "open":
            raise Landing()
        raise Redirect("/login", clear_cookie=bool(request.cookies))
    return get_page_user(request, db, session)


HomeUser = Annotated[SignedIn, Depends(get_home_user)]
