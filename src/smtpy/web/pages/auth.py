"""Signed-out pages: sign in (password, then the second factor), sign out, sign up, confirm an
address, reset a password, accept an invitation.

Every rule is in `smtpy.accounts.signin` (and `mfa`); these pages translate forms to it
and its errors to messages at the fields. A page reached from a mailed link (GET) only
shows a form: the change happens when the user sends it (POST), so a mail scanner that
opens links uses nothing up.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Form, Request
from fastapi.responses import RedirectResponse, Response

from smtpy.accounts import organizations, passwords, signin, users
from smtpy.accounts.actor import Actor, acting
from smtpy.accounts.mailer import CONFIRM_PATH, INVITATION_PATH, RESET_PATH
from smtpy.accounts.sessions import NewSession
from smtpy.api.deps import Db, SettingsDep, client_ip, cookie_name
from smtpy.config import Settings
from smtpy.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    SmtpyError,
    TooManyRequests,
    Unauthorized,
)
from smtpy.web.routing import page_router
from smtpy.web.session import BrowserSession, MaybeSession, PageSession, Redirect, safe_next
from smtpy.web.templating import FormErrors, done, render

router = page_router()

Text = Annotated[str, Form(max_length=4096)]


def _secure(settings: Settings) -> bool:
    return settings.public_url is not None and settings.public_url.startswith("https://")


def set_session_cookie(response: Response, settings: Settings, new: NewSession) -> None:
    """The session cookie, as the API sets it: HttpOnly, SameSite=Lax, Secure under https."""
    response.set_cookie(
        cookie_name(settings),
        new.token,
        httponly=True,
        samesite="lax",
        path="/",
        secure=_secure(settings),
    )


def not_cross_site(request: Request) -> None:
    """A form sent without a session (sign in, sign up, a mailed link's form) must come from
    this site's own pages, as in the API (login CSRF)."""
    if request.headers.get("sec-fetch-site", "").lower() == "cross-site":
        raise Forbidden("cross-site requests may not sign in or change anything")


def visitor(request: Request, email: str | None = None) -> Actor:
    """Who acts before signing in: the address they give, from their client address."""
    return Actor(via="session", name=(email or "anonymous")[:320], client_ip=client_ip(request))


def session_actor(request: Request, session: BrowserSession) -> Actor:
    info = session.info
    return Actor(via="session", name=info.email, user_id=info.user_id, client_ip=client_ip(request))


def _throttled(response: Response, exc: TooManyRequests) -> Response:
    response.headers["Retry-After"] = str(exc.retry_after)
    return response


def _next_query(target: str) -> str:
    return "" if target == "/" else f"?next={target}"


# -- sign in --------------------------------------------------------------------------


@router.get("/login")
def login_page(request: Request, session: MaybeSession, next: str | None = None) -> Response:
    target = safe_next(next)
    if session is not None:
        if session.info.mfa_passed:
            return RedirectResponse(target, status_code=303)
        return RedirectResponse("/login/2fa" + _next_query(target), status_code=303)
    return render(request, "auth/login.html", {"next": target, "email": ""})


@router.post("/login")
def login(
    request: Request,
    db: Db,
    settings: SettingsDep,
    email: Text = "",
    password: Text = "",
    next: Text = "/",
) -> Response:
    not_cross_site(request)
    target = safe_next(next)
    errors = FormErrors()
    if not email.strip():
        errors.add("email", "enter your e-mail address")
    if not password:
        errors.add("password", "enter your password")
    status = 422
    if not errors:
        try:
            with acting(visitor(request, email.strip().lower())):
                result = signin.login(
                    db=db,
                    settings=settings,
                    email=email,
                    password=password,
                    client_ip=client_ip(request),
                    user_agent=request.headers.get("user-agent"),
                )
        except TooManyRequests as exc:
            errors.add(None, exc.message)
            page = render(
                request,
                "auth/login.html",
                {"next": target, "email": email, "errors": errors},
                status_code=429,
            )
            return _throttled(page, exc)
        except Unauthorized as exc:
            errors.add(None, exc.message)
            status = 401
        else:
            if result.mfa_required:
                response = RedirectResponse("/login/2fa" + _next_query(target), status_code=303)
            else:
                response = RedirectResponse(target, status_code=303)
            set_session_cookie(response, settings, result.new)
            return response
    return render(
        request,
        "auth/login.html",
        {"next": target, "email": email, "errors": errors},
        status_code=status,
    )


@router.get("/login/2fa")
def second_factor_page(request: Request, session: PageSession, next: str | None = None) -> Response:
    target = safe_next(next)
    if session.info.mfa_passed:
        return RedirectResponse(target, status_code=303)
    return render(request, "auth/second_factor.html", {"next": target}, session=session)


@router.post("/login/2fa")
def second_factor(
    request: Request,
    db: Db,
    settings: SettingsDep,
    session: PageSession,
    code: Text = "",
    next: Text = "/",
) -> Response:
    target = safe_next(next)
    if session.info.mfa_passed:
        return RedirectResponse(target, status_code=303)
    errors = FormErrors()
    status = 422
    if not code.strip():
        errors.add("code", "enter the 6-digit code from your app, or a recovery code")
    else:
        try:
            with acting(session_actor(request, session)):
                new = signin.second_factor(
                    db=db,
                    session_id=session.info.id,
                    user_id=session.info.user_id,
                    code=code,
                    client_ip=client_ip(request),
                )
        except TooManyRequests as exc:
            errors.add(None, exc.message)
            page = render(
                request,
                "auth/second_factor.html",
                {"next": target, "errors": errors},
                session=session,
                status_code=429,
            )
            return _throttled(page, exc)
        except Unauthorized as exc:
            errors.add("code", exc.message)
            status = 401
        else:
            response = RedirectResponse(target, status_code=303)
            set_session_cookie(response, settings, new)
            return response
    return render(
        request,
        "auth/second_factor.html",
        {"next": target, "errors": errors},
        session=session,
        status_code=status,
    )


@router.post("/logout")
def logout(request: Request, db: Db, settings: SettingsDep, session: MaybeSession) -> Response:
    if session is not None:
        with acting(session_actor(request, session)):
            signin.logout(db=db, session_id=session.info.id)
    response = done(request, "/login", "You are signed out.")
    response.delete_cookie(cookie_name(settings), path="/", secure=_secure(settings))
    return response


# -- sign up and confirmation ------------------------------------------------------------


@router.get("/register")
def register_page(request: Request, settings: SettingsDep, session: MaybeSession) -> Response:
    if session is not None and session.info.mfa_passed:
        return RedirectResponse("/", status_code=303)
    return render(
        request,
        "auth/register.html",
        {"open": settings.signup == "open", "email": "", "organization": ""},
        status_code=200 if settings.signup == "open" else 404,
    )


@router.post("/register")
def register(
    request: Request,
    db: Db,
    settings: SettingsDep,
    email: Text = "",
    password: Text = "",
    organization: Text = "",
) -> Response:
    not_cross_site(request)
    errors = FormErrors()
    # Each value through its own rule first, so that each error shows at its field.
    for field, check in (
        ("email", lambda: users.normalize_email(email)),
        ("password", lambda: passwords.check_strength(password)),
        ("organization", lambda: organizations.check_name(organization)),
    ):
        try:
            check()
        except InvalidInput as exc:
            errors.add(field, exc.message)
    status = 422
    if not errors:
        try:
            with acting(visitor(request, email.strip().lower())):
                signin.register(
                    db=db,
                    settings=settings,
                    email=email,
                    password=password,
                    organization=organization,
                )
        except Conflict as exc:
            errors.add("organization" if "organization" in exc.message else "email", exc.message)
            status = 409
        except Forbidden as exc:
            errors.add(None, exc.message)
            status = 403
        except InvalidInput as exc:
            errors.error(exc)
        else:
            return done(
                request,
                "/login",
                f"Almost there: open the link we sent to {email.strip()} to confirm your "
                "address, then sign in.",
            )
    return render(
        request,
        "auth/register.html",
        {
            "open": settings.signup == "open",
            "email": email,
            "organization": organization,
            "errors": errors,
        },
        status_code=status,
    )


@router.get(CONFIRM_PATH)
def confirm_page(request: Request, token: str = "") -> Response:
    return render(request, "auth/confirm.html", {"token": token})


@router.post(CONFIRM_PATH)
def confirm(request: Request, db: Db, token: Text = "") -> Response:
    not_cross_site(request)
    errors = FormErrors()
    try:
        with acting(visitor(request)):
            user = signin.confirm_email(db=db, token=token)
    except InvalidInput as exc:
        errors.error(exc)
        return render(
            request, "auth/confirm.html", {"token": token, "errors": errors}, status_code=422
        )
    return done(request, "/login", f"Your address {user.email} is confirmed: sign in.")


# -- password reset ----------------------------------------------------------------------


@router.get(RESET_PATH)
def password_reset_page(request: Request, token: str = "") -> Response:
    template = "auth/reset_set.html" if token else "auth/reset_request.html"
    return render(request, template, {"token": token, "email": ""})


@router.post(RESET_PATH)
def password_reset_request(
    request: Request, db: Db, settings: SettingsDep, email: Text = ""
) -> Response:
    not_cross_site(request)
    errors = FormErrors()
    try:
        users.normalize_email(email)
    except InvalidInput as exc:
        errors.add("email", exc.message)
        return render(
            request,
            "auth/reset_request.html",
            {"email": email, "errors": errors},
            status_code=422,
        )
    with acting(visitor(request, email.strip().lower())):
        signin.request_password_reset(db=db, settings=settings, email=email)
    return done(
        request,
        "/login",
        f"If {email.strip()} has an account, a link to set a new password is on its way. "
        "It works for an hour.",
    )


@router.post(RESET_PATH + "/confirm")
def password_reset_set(
    request: Request, db: Db, token: Text = "", password: Text = "", confirm: Text = ""
) -> Response:
    not_cross_site(request)
    errors = FormErrors()
    try:
        passwords.check_strength(password)
    except InvalidInput as exc:
        errors.add("password", exc.message)
    if not errors and password != confirm:
        errors.add("confirm", "the two passwords differ: type the same one twice")
    if not errors:
        try:
            with acting(visitor(request)):
                user = signin.reset_password(db=db, token=token, password=password)
        except InvalidInput as exc:
            errors.error(exc)
        else:
            return done(
                request, "/login", f"The password of {user.email} is changed: sign in with it."
            )
    return render(
        request, "auth/reset_set.html", {"token": token, "errors": errors}, status_code=422
    )


# -- invitations -------------------------------------------------------------------------


@router.get(INVITATION_PATH)
@router.get("/invitations/accept")
def invitation_page(request: Request, session: MaybeSession, token: str = "") -> Response:
    signed_in = session if session is not None and session.info.mfa_passed else None
    return render(
        request,
        "auth/invitation.html",
        {"token": token, "signed_in": signed_in},
        session=session,
    )


@router.post(INVITATION_PATH)
@router.post("/invitations/accept")
def accept_invitation(
    request: Request,
    db: Db,
    settings: SettingsDep,
    session: MaybeSession,
    token: Text = "",
    password: Text = "",
) -> Response:
    not_cross_site(request)
    signed_in = session if session is not None and session.info.mfa_passed else None
    errors = FormErrors()
    actor = session_actor(request, signed_in) if signed_in else visitor(request)
    try:
        with acting(actor):
            joined = signin.accept_invitation(
                db=db,
                token=token,
                password=password or None,
                user_id=signed_in.info.user_id if signed_in else None,
            )
    except InvalidInput as exc:
        errors.error(exc, "password" if "password" in exc.message else None)
    except SmtpyError as exc:
        errors.add(None, exc.message)
    else:
        message = f"You joined {joined.organization} as {joined.role}."
        if signed_in is None:
            return done(request, "/login", message + " Sign in to start.")
        return done(request, "/", message)
    return render(
        request,
        "auth/invitation.html",
        {"token": token, "signed_in": signed_in, "errors": errors},
        session=session,
        status_code=422,
    )


__all__ = ["Redirect", "router", "set_session_cookie"]
