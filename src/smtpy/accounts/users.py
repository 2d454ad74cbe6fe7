"""Users: people with an e-mail address and a password, members of organizations."""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict

from smtpy.accounts import passwords
from smtpy.accounts.audit import record
from smtpy.accounts.members import OrgMembership, add_member, organizations_of
from smtpy.accounts.roles import Role
from smtpy.accounts.sessions import end_all
from smtpy.errors import Conflict, InvalidInput, NotFound
from smtpy.mail.addresses import parse_address
from smtpy.store.db import Database


class UserPublic(BaseModel):
    """A user as the shells show it (never the password hash or the TOTP secret)."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    id: int
    email: str
    name: str
    email_confirmed: bool
    two_factor: bool  # TOTP enrolled and confirmed
    created_at: float


_SELECT = (
    "SELECT id, email, name, email_confirmed_at, totp_enabled_at, created_at,"
    " password_hash FROM users"
)


def normalize_email(email: str) -> str:
    """The e-mail address as the store keys it (trimmed, lower case); `InvalidInput` if it
    is not an address."""
    if len(email) > 320:
        raise InvalidInput("the e-mail address is too long")
    address = parse_address(email)
    return f"{address.local}@{address.domain}".lower()


def public(row: dict[str, Any]) -> UserPublic:
    return UserPublic(
        id=int(row["id"]),
        email=str(row["email"]),
        name=str(row["name"] or ""),
        email_confirmed=row["email_confirmed_at"] is not None,
        two_factor=row["totp_enabled_at"] is not None,
        created_at=float(row["created_at"]),
    )


def create_user(
    *,
    db: Database,
    email: str,
    password: str | None,
    name: str = "",
    confirmed: bool = True,
) -> UserPublic:
    """A new user; `Conflict` if the address has an account. `password` None: the user sets
    one through a mailed link."""
    address = normalize_email(email)
    hashed = passwords.hash_password(password) if password is not None else None
    now = time.time()
    try:
        user_id = db.insert(
            "INSERT INTO users (email, name, password_hash, email_confirmed_at, created_at)"
            " VALUES (:email, :name, :hash, :confirmed, :now) RETURNING id",
            {
                "email": address,
                "name": name.strip()[:200],
                "hash": hashed,
                "confirmed": now if confirmed else None,
                "now": now,
            },
        )
    except Conflict:
        raise Conflict(f"there is already an account for {address}") from None
    return get_user(db=db, user_id=user_id)


def get_user(*, db: Database, user_id: int) -> UserPublic:
    row = db.one(_SELECT + " WHERE id = :id", {"id": user_id})
    if row is None:
        raise NotFound(f"there is no user with id {user_id}")
    return public(row)


def find_by_email(*, db: Database, email: str) -> tuple[UserPublic, str | None] | None:
    """The user with this address and their password hash, or None."""
    try:
        address = normalize_email(email)
    except InvalidInput:
        return None
    row = db.one(_SELECT + " WHERE email = :email", {"email": address})
    if row is None:
        return None
    return public(row), (str(row["password_hash"]) if row["password_hash"] else None)


def user_by_email(*, db: Database, email: str) -> UserPublic:
    """The user with this address; `NotFound` naming it otherwise."""
    found = find_by_email(db=db, email=email)
    if found is None:
        raise NotFound(f"there is no user {email.strip().lower()!r}")
    return found[0]


def set_password(*, db: Database, user_id: int, password: str) -> None:
    """Store a new password hash (strength checked). Ending the user's other sessions is
    the caller's part (`sessions.end_all`), since only it knows which one to keep."""
    hashed = passwords.hash_password(password)
    if not db.execute(
        "UPDATE users SET password_hash = :h WHERE id = :id", {"h": hashed, "id": user_id}
    ):
        raise NotFound(f"there is no user with id {user_id}")


def rehash_if_needed(*, db: Database, user_id: int, stored: str, password: str) -> None:
    """After a successful sign-in: store a hash with today's parameters if they changed."""
    if passwords.needs_rehash(stored):
        db.execute(
            "UPDATE users SET password_hash = :h WHERE id = :id",
            {"h": passwords.hash_password(password), "id": user_id},
        )


# -- managing users (`smtpy user`) ---------------------------------------------------


class UserListed(UserPublic):
    """A user with their organizations and roles (`smtpy user list`)."""

    organizations: list[OrgMembership]


def _audit_user(db: Database, user_id: int, action: str, target: str) -> None:
    """Record a change to a user in each of their organizations' logs (or in none)."""
    orgs: list[int | None] = [o.id for o in organizations_of(db=db, user_id=user_id)]
    for org in orgs or [None]:
        record(db, org=org, action=action, target=target)


_MEMBERS_OF = " WHERE id IN (SELECT user_id FROM memberships WHERE organization_id = :org)"


def list_users(*, db: Database, org: int | None = None) -> list[UserListed]:
    """Every user (or `org`'s members), by e-mail address, with their organizations."""
    if org is None:
        rows = db.all(_SELECT + " ORDER BY email")
    else:
        rows = db.all(
            _SELECT + _MEMBERS_OF + " ORDER BY email",
            {"org": org},
        )
    listed = []
    for row in rows:
        user = public(row)
        orgs = organizations_of(db=db, user_id=user.id)
        listed.append(UserListed(**user.model_dump(), organizations=orgs))
    return listed


def add_user(
    *,
    db: Database,
    email: str,
    org: int,
    role: Role | None = None,
    password: str | None = None,
    name: str = "",
) -> tuple[UserPublic, Role]:
    """A new user, member of `org` with `role` (one transaction); the user and the role.
    `role` None: `owner` when the organization has no owner yet, else `member`. An existing
    account becomes a member of `org` (`Conflict` if it is one already); it keeps its
    password, so none may be given then."""
    with db.transaction():
        if role is None:
            owners = db.scalar(
                "SELECT count(*) FROM memberships WHERE organization_id = :org AND role = 'owner'",
                {"org": org},
            )
            role = "member" if int(owners) else "owner"
        found = find_by_email(db=db, email=email)
        if found is None:
            user = create_user(db=db, email=email, password=password, name=name)
            record(db, org=org, action="user.create", target=user.email)
        else:
            user = found[0]
            if password is not None:
                raise Conflict(
                    f"there is already an account for {user.email}: leave out the password "
                    "to add it to this organization, or change it with `smtpy user passwd`"
                )
        add_member(db=db, org=org, user_id=user.id, role=role)
    return user, role


def change_password(
    *, db: Database, user_id: int, password: str, keep_session: int | None = None
) -> int:
    """Set a new password and end the user's sessions but `keep_session`; the number ended."""
    user = get_user(db=db, user_id=user_id)
    with db.transaction():
        set_password(db=db, user_id=user_id, password=password)
        ended = end_all(db=db, user_id=user_id, keep=keep_session)
        _audit_user(db, user_id, "user.password", user.email)
    return ended


def reset_two_factor(*, db: Database, user_id: int) -> UserPublic:
    """Turn a user's 2FA off (they lost their device): the TOTP secret and recovery codes go,
    and their sessions end; they sign in with the password and may enrol again."""
    user = get_user(db=db, user_id=user_id)
    with db.transaction():
        db.execute(
            "UPDATE users SET totp_secret = NULL, totp_enabled_at = NULL, totp_last_step = NULL"
            " WHERE id = :id",
            {"id": user_id},
        )
        db.execute("DELETE FROM recovery_codes WHERE user_id = :id", {"id": user_id})
        end_all(db=db, user_id=user_id)
        _audit_user(db, user_id, "user.2fa_reset", user.email)
    return get_user(db=db, user_id=user_id)


def remove_user(*, db: Database, user_id: int) -> UserPublic:
    """Delete a user with their memberships, sessions, recovery codes and mailed links; the
    audit log keeps their past changes. Never an organization's last owner."""
    user = get_user(db=db, user_id=user_id)
    with db.transaction():
        for org in organizations_of(db=db, user_id=user_id):
            if org.role == "owner" and (
                int(
                    db.scalar(
                        "SELECT count(*) FROM memberships"
                        " WHERE organization_id = :org AND role = 'owner'",
                        {"org": org.id},
                    )
                )
                == 1
            ):
                raise InvalidInput(
                    f"{user.email} is the last owner of {org.name!r}: make another member "
                    "owner first"
                )
        _audit_user(db, user_id, "user.remove", user.email)
        params = {"id": user_id, "email": user.email}
        db.execute("DELETE FROM memberships WHERE user_id = :id", params)
        db.execute("DELETE FROM sessions WHERE user_id = :id", params)
        db.execute("DELETE FROM recovery_codes WHERE user_id = :id", params)
        db.execute(
            "DELETE FROM account_tokens WHERE user_id = :id"
            " OR (email = :email AND kind IN ('confirm', 'reset'))",
            params,
        )
        db.execute("UPDATE api_keys SET created_by = NULL WHERE created_by = :id", params)
        db.execute("DELETE FROM users WHERE id = :id", params)
    return user
