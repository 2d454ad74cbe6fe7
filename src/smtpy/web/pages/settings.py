"""Settings: profile, security (password, 2FA, sessions), API keys, the organization
(members, roles, invitations) and its audit log.

Forms over the core (`smtpy.accounts.signin`, `mfa`, `api_keys`, `members`,
`smtpy.admin.organizations`); permissions are the role's (`principal.require`), as in
the API. Secrets shown once (an API key, recovery codes, the TOTP secret) are in the
answer to the POST that made them and nowhere else: never in a redirect or a cookie.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import Form, Request
from fastapi.responses import RedirectResponse, Response

from smtpy.accounts import api_keys, audit, members, mfa, passwords, sessions, signin, users
from smtpy.accounts.actor import acting
from smtpy.accounts.roles import ROLES, allows, parse_role
from smtpy.admin import organizations
from smtpy.api.deps import Db, SettingsDep, client_ip, cookie_name
from smtpy.errors import Conflict, InvalidInput, NotFound, SmtpyError
from smtpy.web.routing import page_router
from smtpy.web.session import PageUser, SignedIn
from smtpy.web.templating import FormErrors, done, render

router = page_router()

Text = Annotated[str, Form(max_length=4096)]

SECTIONS = (
    ("Profile", "/settings/profile"),
    ("Security", "/settings/security"),
    ("API keys", "/settings/api-keys"),
    ("Organization", "/settings/organization"),
    ("Audit log", "/settings/audit-log"),
)


def _page(
    request: Request,
    user: SignedIn,
    template: str,
    context: dict[str, object],
    status_code: int = 200,
) -> Response:
    return render(
        request,
        template,
        {"sections": SECTIONS, **context},
        user=user,
        status_code=status_code,
    )


def _user_id(user: SignedIn) -> int:
    assert user.principal.user_id is not None  # sessions are users'
    return user.principal.user_id


@router.get("/settings")
def settings_index() -> Response:
    return RedirectResponse("/settings/profile", status_code=303)


# -- profile -----------------------------------------------------------------------------


def _profile(
    request: Request,
    db: Db,
    user: SignedIn,
    errors: FormErrors | None = None,
    name: str | None = None,
    status_code: int = 200,
) -> Response:
    me = users.get_user(db=db, user_id=_user_id(user))
    orgs = members.organizations_of(db=db, user_id=me.id)
    return _page(
        request,
        user,
        "settings/profile.html",
        {
            "me": me,
            "orgs": orgs,
            "name": me.name if name is None else name,
            "errors": errors or FormErrors(),
        },
        status_code,
    )


@router.get("/settings/profile")
def profile(request: Request, db: Db, user: PageUser) -> Response:
    return _profile(request, db, user)


@router.post("/settings/profile")
def profile_save(request: Request, db: Db, user: PageUser, name: Text = "") -> Response:
    try:
        with acting(user.principal.actor):
            signin.update_profile(db=db, user_id=_user_id(user), name=name)
    except InvalidInput as exc:
        return _profile(request, db, user, FormErrors().error(exc, "name"), name, 422)
    return done(request, "/settings/profile", "Your profile is saved.")


# -- security: password, 2FA, sessions ----------------------------------------------------


def _security(
    request: Request,
    db: Db,
    user: SignedIn,
    *,
    errors: FormErrors | None = None,
    status_code: int = 200,
    **extra: object,
) -> Response:
    uid = _user_id(user)
    me = users.get_user(db=db, user_id=uid)
    return _page(
        request,
        user,
        "settings/security.html",
        {
            "me": me,
            "sessions": sessions.list_sessions(db=db, user_id=uid),
            "current_session": user.principal.session_id,
            "recovery_left": mfa.recovery_codes_left(db=db, user_id=uid) if me.two_factor else 0,
            "errors": errors or FormErrors(),
            "form": extra.pop("form", None),
            **extra,
        },
        status_code,
    )


@router.get("/settings/security")
def security(request: Request, db: Db, user: PageUser) -> Response:
    return _security(request, db, user)


@router.post("/settings/security/password")
def password_change(
    request: Request,
    db: Db,
    user: PageUser,
    current: Text = "",
    new: Text = "",
    confirm: Text = "",
) -> Response:
    errors = FormErrors()
    if not current:
        errors.add("current", "enter your current password")
    try:
        passwords.check_strength(new)
    except InvalidInput as exc:
        errors.add("new", exc.message)
    if "new" not in errors.fields and new != confirm:
        errors.add("confirm", "the two new passwords differ: type the same one twice")
    if not errors:
        try:
            with acting(user.principal.actor):
                signin.change_password(
                    db=db,
                    user_id=_user_id(user),
                    session_id=user.principal.session_id,
                    current=current,
                    new=new,
                    client_ip=client_ip(request),
                )
        except InvalidInput as exc:
            errors.error(exc, "current" if "current" in exc.message else "new")
        except SmtpyError as exc:
            errors.add(None, exc.message)
        else:
            return done(
                request,
                "/settings/security",
                "Your password is changed; your other sessions have ended.",
            )
    return _security(request, db, user, errors=errors, form="password", status_code=422)


@router.post("/settings/security/2fa")
def two_factor_start(request: Request, db: Db, user: PageUser) -> Response:
    try:
        with acting(user.principal.actor):
            enrolment = mfa.start_enrolment(db=db, user_id=_user_id(user))
    except Conflict as exc:
        return _security(
            request, db, user, errors=FormErrors().error(exc), form="2fa", status_code=409
        )
    return _page(
        request,
        user,
        "settings/two_factor_enrol.html",
        {"enrolment": enrolment, "errors": FormErrors()},
    )


@router.post("/settings/security/2fa/confirm")
def two_factor_confirm(request: Request, db: Db, user: PageUser, code: Text = "") -> Response:
    errors = FormErrors()
    try:
        with acting(user.principal.actor):
            codes = mfa.confirm_enrolment(db=db, user_id=_user_id(user), code=code)
    except InvalidInput as exc:
        errors.error(exc, "code")
        return _page(
            request,
            user,
            "settings/two_factor_enrol.html",
            {"enrolment": None, "errors": errors},
            status_code=422,
        )
    return _page(request, user, "settings/recovery_codes.html", {"codes": codes})


@router.post("/settings/security/2fa/disable")
def two_factor_disable(request: Request, db: Db, user: PageUser, proof: Text = "") -> Response:
    errors = FormErrors()
    if not proof.strip():
        errors.add("proof", "enter a current code from your app, or your password")
    else:
        try:
            with acting(user.principal.actor):
                mfa.disable(
                    db=db,
                    user_id=_user_id(user),
                    code_or_password=proof,
                    client_ip=client_ip(request),
                )
        except InvalidInput as exc:
            errors.error(exc, "proof")
        except SmtpyError as exc:
            errors.add(None, exc.message)
        else:
            return done(request, "/settings/security", "Two-factor authentication is off.")
    return _security(request, db, user, errors=errors, form="2fa", status_code=422)


@router.post("/settings/security/sessions/{session_id}/revoke")
def session_revoke(
    request: Request, db: Db, settings: SettingsDep, user: PageUser, session_id: int
) -> Response:
    with acting(user.principal.actor):
        signin.revoke_session(db=db, user_id=_user_id(user), session_id=session_id)
    if session_id == user.principal.session_id:
        response = done(request, "/login", "You are signed out.")
        response.delete_cookie(cookie_name(settings), path="/")
        return response
    return done(request, "/settings/security", "The session has ended.")


# -- API keys ----------------------------------------------------------------------------


def _api_keys(
    request: Request,
    db: Db,
    user: SignedIn,
    *,
    errors: FormErrors | None = None,
    created: api_keys.ApiKeyCreated | None = None,
    name: str = "",
    status_code: int = 200,
) -> Response:
    may_manage = allows(user.principal.role, "manage")
    keys = api_keys.list_keys(db=db, org=user.principal.org) if may_manage else []
    now = time.time()
    return _page(
        request,
        user,
        "settings/api_keys.html",
        {
            "keys": [(k, api_keys.key_state(k, now)) for k in keys],
            "may_manage": may_manage,
            "created": created,
            "name": name,
            "errors": errors or FormErrors(),
        },
        status_code,
    )


@router.get("/settings/api-keys")
def api_keys_page(request: Request, db: Db, user: PageUser) -> Response:
    return _api_keys(request, db, user)


@router.post("/settings/api-keys")
def api_key_create(
    request: Request, db: Db, user: PageUser, name: Text = "", expires_days: Text = ""
) -> Response:
    user.principal.require("manage")
    errors = FormErrors()
    expires_at = None
    if expires_days.strip():
        days = expires_days.strip()
        if not days.isdigit() or not 1 <= int(days) <= 3650:
            errors.add("expires_days", "give the number of days, 1 to 3650, or leave it empty")
        else:
            expires_at = time.time() + int(days) * 86400
    if not errors:
        try:
            with acting(user.principal.actor):
                created = api_keys.create_key(
                    db=db,
                    org=user.principal.org,
                    name=name,
                    expires_at=expires_at,
                    created_by=user.principal.user_id,
                )
        except InvalidInput as exc:
            errors.error(exc, "expires_days" if "expiry" in exc.message else "name")
        else:
            return _api_keys(request, db, user, created=created)
    return _api_keys(request, db, user, errors=errors, name=name, status_code=422)


@router.post("/settings/api-keys/{key_id}/revoke")
def api_key_revoke(request: Request, db: Db, user: PageUser, key_id: str) -> Response:
    user.principal.require("manage")
    with acting(user.principal.actor):
        key = api_keys.revoke_key(db=db, org=user.principal.org, key_id=key_id)
    return done(request, "/settings/api-keys", f"The API key {key.name} is revoked.")


# -- organization: members, roles, invitations ---------------------------------------------


def _organization(
    request: Request,
    db: Db,
    user: SignedIn,
    *,
    errors: FormErrors | None = None,
    form: str | None = None,
    invite_email: str = "",
    org_name: str | None = None,
    status_code: int = 200,
) -> Response:
    org = organizations.organization_detail(db=db, org=user.principal.org)
    return _page(
        request,
        user,
        "settings/organization.html",
        {
            "org": org,
            "org_name": org.name if org_name is None else org_name,
            "members": members.list_members(db=db, org=user.principal.org),
            "roles": ROLES,
            "may_members": allows(user.principal.role, "members"),
            "may_rename": allows(user.principal.role, "organization"),
            "errors": errors or FormErrors(),
            "form": form,
            "invite_email": invite_email,
        },
        status_code,
    )


@router.get("/settings/organization")
def organization(request: Request, db: Db, user: PageUser) -> Response:
    return _organization(request, db, user)


@router.post("/settings/organization")
def organization_rename(request: Request, db: Db, user: PageUser, name: Text = "") -> Response:
    user.principal.require("organization")
    try:
        with acting(user.principal.actor):
            organizations.rename_organization(db=db, org=user.principal.org, name=name)
    except InvalidInput as exc:
        return _organization(
            request,
            db,
            user,
            errors=FormErrors().error(exc, "name"),
            form="rename",
            org_name=name,
            status_code=422,
        )
    return done(request, "/settings/organization", "The organization's name is saved.")


@router.post("/settings/organization/invitations")
def member_invite(
    request: Request,
    db: Db,
    settings: SettingsDep,
    user: PageUser,
    email: Text = "",
    role: Text = "member",
) -> Response:
    user.principal.require("members")
    errors = FormErrors()
    try:
        chosen = parse_role(role)
    except InvalidInput as exc:
        errors.add("role", exc.message)
    if not errors:
        try:
            with acting(user.principal.actor):
                signin.invite(
                    db=db,
                    settings=settings,
                    org=user.principal.org,
                    email=email,
                    role=chosen,
                    invited_by=user.principal.user_id,
                )
        except InvalidInput as exc:
            errors.error(exc, "email")
        else:
            return done(
                request,
                "/settings/organization",
                f"An invitation is on its way to {email.strip()}; it works for a week.",
            )
    return _organization(
        request,
        db,
        user,
        errors=errors,
        form="invite",
        invite_email=email,
        status_code=422,
    )


def _member_form_error(
    request: Request, db: Db, user: SignedIn, exc: SmtpyError, member_id: int
) -> Response:
    errors = FormErrors()
    errors.add(f"member-{member_id}", exc.message)
    status = 404 if isinstance(exc, NotFound) else 422
    return _organization(request, db, user, errors=errors, form="members", status_code=status)


@router.post("/settings/organization/members/{member_id}/role")
def member_role(
    request: Request, db: Db, user: PageUser, member_id: int, role: Text = ""
) -> Response:
    user.principal.require("members")
    try:
        chosen = parse_role(role)
        with acting(user.principal.actor):
            member = members.change_role(
                db=db, org=user.principal.org, member_id=member_id, role=chosen
            )
    except InvalidInput as exc:
        return _member_form_error(request, db, user, exc, member_id)
    return done(request, "/settings/organization", f"{member.email} is now {member.role}.")


@router.post("/settings/organization/members/{member_id}/remove")
def member_remove(request: Request, db: Db, user: PageUser, member_id: int) -> Response:
    user.principal.require("members")
    try:
        with acting(user.principal.actor):
            member = members.remove_member(db=db, org=user.principal.org, member_id=member_id)
    except InvalidInput as exc:
        return _member_form_error(request, db, user, exc, member_id)
    return done(request, "/settings/organization", f"{member.email} is no longer a member.")


# -- audit log ---------------------------------------------------------------------------


@router.get("/settings/audit-log")
def audit_log(request: Request, db: Db, user: PageUser, cursor: str | None = None) -> Response:
    user.principal.require("manage")  # as GET /api/v1/audit-log
    page = audit.list_events(db=db, org=user.principal.org, limit=50, cursor=cursor)
    return _page(request, user, "settings/audit_log.html", {"page": page})
