"""Users: people with an e-mail address and a password, members of organizations."""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict

from smtpy.accounts import passwords
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
