"""Signing in and the account's life: sign-up, confirmation, password reset, invitations.

What every shell (the API's /auth and /me routes, the dashboard's pages) calls;
each function records what it did in the audit log as the shell's actor.

- `login` checks the password (an unknown address costs the same and gets the
  same answer as a wrong password), is throttled per account and per client
  address (`smtpy.accounts.throttle`), and makes a session: limited until
  `second_factor` when the user has 2FA on.
- `register` (SMTPY_SIGNUP=open) makes an unconfirmed user, their organization
  (they own it) and mails a confirmation link; `confirm_email` follows it.
- `request_password_reset` mails a link if the address has an account, and
  answers the same either way; `reset_password` follows it and ends every
  session; `change_password` ends the other sessions.
- `invite` mails an invitation to join an organization with a role;
  `accept_invitation` makes the membership (and the account, if new).
"""

from __future__ import annotations

import time
import unicodedata
from typing import Any

from pydantic import BaseModel, ConfigDict

from smtpy.accounts import (
    audit,
    links,
    mailer,
    members,
    mfa,
    organizations,
    passwords,
    sessions,
    throttle,
    users,
)
from smtpy.accounts.roles import Role
from smtpy.accounts.sessions import NewSession
from smtpy.accounts.users import UserPublic
from smtpy.config import Settings
from smtpy.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthorized
from smtpy.store.db import Database

WRONG_CREDENTIALS = "the e-mail address or the password is wrong"


class LoginResult(BaseModel):
    model_config = ConfigDict(frozen=True, defer_build=True)

    user: UserPublic
    mfa_required: bool  # True: the session is limited until second_factor()
    new: NewSession  # the token for the cookie, and the session


class Joined(BaseModel):
    """An accepted invitation: who joined which organization, with which role."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    user: UserPublic
    organization_id: int
    organization: str
    role: Role


def _first_organization(db: Database, user_id: int) -> int | None:
    orgs = members.organizations_of(db=db, user_id=user_id)
    return orgs[0].id if orgs else None


def login(
    *,
    db: Database,
    settings: Settings,
    email: str,
    password: str,
    client_ip: str | None,
    user_agent: str | None,
) -> LoginResult:
    """Check the password and open a session (limited until the second factor, if on)."""
    try:
        address = users.normalize_email(email)
    except InvalidInput:
        address = email.strip().lower()  # counted all the same: no account has it
    throttle.check(db=db, email=address, client_ip=client_ip)
    found = users.find_by_email(db=db, email=email)
    stored = found[1] if found is not None else None
    if not passwords.verify(stored, password) or found is None:
        throttle.failed(db=db, email=address, client_ip=client_ip)
        audit.record(
            db,
            org=None if found is None else _first_organization(db, found[0].id),
            action="user.login_failed",
            target=address[:320],
        )
        raise Unauthorized(WRONG_CREDENTIALS)
    user, stored_hash = found
    assert stored_hash is not None
    if not user.email_confirmed:
        raise Unauthorized(
            "confirm your e-mail address first: open the link in the mail smtpy sent you"
        )
    users.rehash_if_needed(db=db, user_id=user.id, stored=stored_hash, password=password)
    org = _first_organization(db, user.id)
    new = sessions.create(
        db=db,
        user_id=user.id,
        organization_id=org,
        mfa_passed=not user.two_factor,
        lifetime=settings.session_lifetime,
        client_ip=client_ip,
        user_agent=user_agent,
    )
    if not user.two_factor:
        throttle.succeeded(db=db, email=user.email)
    audit.record(
        db,
        org=org,
        action="user.login",
        target=user.email,
        detail={"session": new.session.id, "mfa_required": user.two_factor},
    )
    return LoginResult(user=user, mfa_required=user.two_factor, new=new)


def second_factor(
    *,
    db: Database,
    session_id: int,
    user_id: int,
    code: str,
    client_ip: str | None = None,
) -> NewSession:
    """Complete a 2FA user's sign-in with a TOTP code (once) or an unused recovery code;
    the session gets a new token. Throttled like `login`."""
    row = db.one(
        "SELECT s.id, s.client_ip, s.organization_id, u.email FROM sessions s"
        " JOIN users u ON u.id = s.user_id WHERE s.id = :id AND s.user_id = :user",
        {"id": session_id, "user": user_id},
    )
    if row is None:
        raise Unauthorized("your session has ended: sign in again")
    email = str(row["email"])
    ip = client_ip if client_ip is not None else row["client_ip"]
    org = row["organization_id"]
    throttle.check(db=db, email=email, client_ip=ip)
    try:
        factor = mfa.verify(db=db, user_id=user_id, code=code)
    except Unauthorized:
        throttle.failed(db=db, email=email, client_ip=ip)
        audit.record(db, org=org, action="user.mfa_failed", target=email)
        raise
    new = sessions.rotate(db=db, session_id=session_id, mfa_passed=True)
    throttle.succeeded(db=db, email=email)
    detail: dict[str, Any] = {"session": session_id, "factor": factor}
    if factor == "recovery":
        detail["recovery_codes_left"] = mfa.recovery_codes_left(db=db, user_id=user_id)
    audit.record(db, org=org, action="user.mfa_passed", target=email, detail=detail)
    return new


def logout(*, db: Database, session_id: int) -> None:
    """End a session (nothing happens if it has ended already)."""
    row = db.one(
        "SELECT s.organization_id, u.email FROM sessions s JOIN users u ON u.id = s.user_id"
        " WHERE s.id = :id",
        {"id": session_id},
    )
    if row is None:
        return
    db.execute("DELETE FROM sessions WHERE id = :id", {"id": session_id})
    audit.record(
        db,
        org=row["organization_id"],
        action="user.logout",
        target=str(row["email"]),
        detail={"session": session_id},
    )


def register(
    *, db: Database, settings: Settings, email: str, password: str, organization: str
) -> UserPublic:
    """Sign up (only when SMTPY_SIGNUP is open): an unconfirmed user who owns a new
    organization, and a confirmation link mailed to them."""
    if settings.signup != "open":
        raise Forbidden(
            "sign-up is closed on this server: ask an organization's owner for an invitation"
        )
    address = users.normalize_email(email)
    passwords.check_strength(password)
    organizations.check_name(organization)
    with db.transaction():
        user = users.create_user(db=db, email=address, password=password, confirmed=False)
        org = organizations.create_organization(db=db, name=organization, owner=user.id)
        token = links.issue(db=db, kind="confirm", email=address, user_id=user.id)
        mailer.send_confirmation(db=db, settings=settings, to=address, token=token)
        audit.record(db, org=org, action="user.register", target=address)
    return user


def resend_confirmation(*, db: Database, settings: Settings, email: str) -> None:
    """Mail a new confirmation link to an unconfirmed account; silent otherwise."""
    found = users.find_by_email(db=db, email=email)
    if found is None or found[0].email_confirmed:
        return
    user = found[0]
    if throttle.retry_after(db, throttle.reset_key(user.email), throttle.RESET_MAIL_LIMIT):
        return
    with db.transaction():
        throttle.record(db, [throttle.reset_key(user.email)])
        token = links.issue(db=db, kind="confirm", email=user.email, user_id=user.id)
        mailer.send_confirmation(db=db, settings=settings, to=user.email, token=token)
        audit.record(db, org=None, action="user.confirm_resend", target=user.email)


def confirm_email(*, db: Database, token: str) -> UserPublic:
    """Follow a confirmation link: the address is confirmed, the user may sign in."""
    with db.transaction():
        link = links.redeem(db=db, kind="confirm", token=token)
        user = _user_of(db, link)
        db.execute(
            "UPDATE users SET email_confirmed_at = :now WHERE id = :id"
            " AND email_confirmed_at IS NULL",
            {"now": time.time(), "id": user.id},
        )
        audit.record(
            db, org=_first_organization(db, user.id), action="user.confirm", target=user.email
        )
    return users.get_user(db=db, user_id=user.id)


def _user_of(db: Database, link: links.Link) -> UserPublic:
    """The user a link was made for, if they still have this address."""
    found = users.find_by_email(db=db, email=link.email)
    if found is None or (link.user_id is not None and found[0].id != link.user_id):
        raise InvalidInput("this link's account no longer exists")
    return found[0]


def request_password_reset(*, db: Database, settings: Settings, email: str) -> None:
    """Mail a password reset link if the address has an account; the same silence either
    way (and at most `throttle.RESET_MAIL_LIMIT` mails per account in the window)."""
    found = users.find_by_email(db=db, email=email)
    if found is None:
        return
    user = found[0]
    if throttle.retry_after(db, throttle.reset_key(user.email), throttle.RESET_MAIL_LIMIT):
        return
    with db.transaction():
        throttle.record(db, [throttle.reset_key(user.email)])
        token = links.issue(db=db, kind="reset", email=user.email, user_id=user.id)
        mailer.send_password_reset(db=db, settings=settings, to=user.email, token=token)
        audit.record(
            db,
            org=_first_organization(db, user.id),
            action="user.password_reset_request",
            target=user.email,
        )


def reset_password(*, db: Database, token: str, password: str) -> UserPublic:
    """Follow a reset link: the new password is set, every session of the user ends, and
    the address counts as confirmed (the link reached it)."""
    passwords.check_strength(password)  # before the link is used up
    with db.transaction():
        link = links.redeem(db=db, kind="reset", token=token)
        user = _user_of(db, link)
        ended = users.change_password(db=db, user_id=user.id, password=password)
        db.execute(
            "UPDATE users SET email_confirmed_at = :now WHERE id = :id"
            " AND email_confirmed_at IS NULL",
            {"now": time.time(), "id": user.id},
        )
        throttle.succeeded(db=db, email=user.email)
        audit.record(
            db,
            org=_first_organization(db, user.id),
            action="user.password_reset",
            target=user.email,
            detail={"sessions_ended": ended},
        )
    return users.get_user(db=db, user_id=user.id)


def change_password(
    *,
    db: Database,
    user_id: int,
    session_id: int | None,
    current: str,
    new: str,
    client_ip: str | None = None,
) -> None:
    """Change a password, proven by the current one (a wrong one counts as a failed
    sign-in and is `InvalidInput`); every other session of the user ends."""
    user = users.get_user(db=db, user_id=user_id)
    found = users.find_by_email(db=db, email=user.email)
    stored = found[1] if found is not None else None
    throttle.check(db=db, email=user.email, client_ip=client_ip)
    if not passwords.verify(stored, current):
        throttle.failed(db=db, email=user.email, client_ip=client_ip)
        raise InvalidInput("the current password is wrong: the password was not changed")
    passwords.check_strength(new)
    users.change_password(db=db, user_id=user_id, password=new, keep_session=session_id)


def update_profile(*, db: Database, user_id: int, name: str) -> UserPublic:
    """Change the user's display name (up to 200 characters)."""
    name = name.strip()
    if len(name) > 200:
        raise InvalidInput("the name is too long: at most 200 characters")
    if any(unicodedata.category(ch).startswith("C") for ch in name):
        raise InvalidInput("the name may not hold control characters")
    user = users.get_user(db=db, user_id=user_id)
    db.execute("UPDATE users SET name = :n WHERE id = :id", {"n": name, "id": user_id})
    audit.record(
        db,
        org=_first_organization(db, user_id),
        action="user.update",
        target=user.email,
        detail={"name": name},
    )
    return users.get_user(db=db, user_id=user_id)


def _organization_name(db: Database, org: int) -> str:
    name = db.scalar("SELECT name FROM organizations WHERE id = :id", {"id": org})
    if name is None:
        raise NotFound(f"there is no organization with id {org}")
    return str(name)


def invite(
    *,
    db: Database,
    settings: Settings,
    org: int,
    email: str,
    role: Role,
    invited_by: int | None,
) -> None:
    """Mail `email` an invitation to join `org` with `role` (a new invitation to the same
    address replaces the old one); `Conflict` if they are a member already. The caller's
    permission (`members`) is checked by the shell's principal."""
    address = users.normalize_email(email)
    org_name = _organization_name(db, org)
    existing = users.find_by_email(db=db, email=address)
    if existing is not None and members.role_of(db=db, org=org, user_id=existing[0].id):
        raise Conflict(f"{address} is already a member of {org_name}")
    inviter = None if invited_by is None else users.get_user(db=db, user_id=invited_by)
    with db.transaction():
        token = links.issue(
            db=db,
            kind="invite",
            email=address,
            organization_id=org,
            role=role,
        )
        mailer.send_invitation(
            db=db,
            settings=settings,
            to=address,
            token=token,
            organization=org_name,
            role=role,
            invited_by=None if inviter is None else (inviter.name or inviter.email),
        )
        audit.record(db, org=org, action="member.invite", target=address, detail={"role": role})


def accept_invitation(
    *, db: Database, token: str, password: str | None, user_id: int | None
) -> Joined:
    """Follow an invitation link: the invited address joins the organization.

    `user_id`: the signed-in user accepting (their address must be the invited
    one). Without it, an existing account of that address joins, or a new one is
    made with `password` (confirmed: the link reached the address)."""
    if password is not None:
        passwords.check_strength(password)
    with db.transaction():
        link = links.redeem(db=db, kind="invite", token=token)
        assert link.organization_id is not None and link.role is not None
        found = users.find_by_email(db=db, email=link.email)
        if user_id is not None:
            me = users.get_user(db=db, user_id=user_id)
            if me.email != link.email:
                raise Forbidden(f"this invitation is for {link.email}: sign in with that address")
            user = me
        elif found is not None:
            user = found[0]
        else:
            if password is None:
                raise InvalidInput("choose a password for your new account")
            user = users.create_user(db=db, email=link.email, password=password, confirmed=True)
            audit.record(db, org=link.organization_id, action="user.create", target=user.email)
        if not user.email_confirmed:
            db.execute(
                "UPDATE users SET email_confirmed_at = :now WHERE id = :id",
                {"now": time.time(), "id": user.id},
            )
        try:
            members.add_member(db=db, org=link.organization_id, user_id=user.id, role=link.role)
        except Conflict:
            raise Conflict("you are already a member of this organization") from None
        name = _organization_name(db, link.organization_id)
        audit.record(
            db,
            org=link.organization_id,
            action="member.join",
            target=user.email,
            detail={"role": link.role},
        )
    return Joined(
        user=users.get_user(db=db, user_id=user.id),
        organization_id=link.organization_id,
        organization=name,
        role=link.role,
    )


def revoke_session(*, db: Database, user_id: int, session_id: int) -> None:
    """End one of a user's sessions; `NotFound` if it is not theirs or has ended."""
    user = users.get_user(db=db, user_id=user_id)
    sessions.revoke(db=db, user_id=user_id, session_id=session_id)
    audit.record(
        db,
        org=_first_organization(db, user_id),
        action="user.session_revoke",
        target=user.email,
        detail={"session": session_id},
    )
