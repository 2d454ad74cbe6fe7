"""Links that smtpy mails: confirm an address, reset a password, accept an invitation,
confirm a destination an organization forwards to (`smtpy.admin.destinations`).

The token is in the mailed link and nowhere else; the store keeps its SHA-256
(`account_tokens.token_hash`), what it is for, and when it ends. A link works
once (`redeem` marks it used in the same UPDATE that finds it, so two clicks
racing cannot both win) and until it expires: a reset link for an hour, a
confirmation link (of an account or a destination) for a day, an invitation for a week. A new link of the same
kind for the same address (and organization) replaces the unused old one.
"""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, ConfigDict

from smtpy.accounts.roles import Role
from smtpy.accounts.tokens import digest, new_token
from smtpy.errors import InvalidInput
from smtpy.store.db import Database

Kind = Literal["confirm", "reset", "invite", "destination"]

LIFETIMES: dict[Kind, float] = {
    "reset": 3600.0,
    "confirm": 24 * 3600.0,
    "invite": 7 * 24 * 3600.0,
    "destination": 24 * 3600.0,  # an organization's new destination address
}
KEEP_USED = 24 * 3600.0  # ended links stay this long (then deleted as new ones are made)

_WHAT: dict[Kind, str] = {
    "reset": "password reset link",
    "confirm": "confirmation link",
    "invite": "invitation",
    "destination": "confirmation link",
}
_ASK_AGAIN: dict[Kind, str] = {
    "reset": "ask for a new one",
    "confirm": "sign in and ask for a new one",
    "invite": "ask the organization's owner for a new one",
    "destination": "ask whoever added this address for a new one",
}


class Link(BaseModel):
    """A redeemed link: what it was made for."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    id: int
    kind: Kind
    email: str
    user_id: int | None
    organization_id: int | None
    role: Role | None
    created_at: float
    expires_at: float


def issue(
    *,
    db: Database,
    kind: Kind,
    email: str,
    user_id: int | None = None,
    organization_id: int | None = None,
    role: Role | None = None,
    now: float | None = None,
) -> str:
    """A new link's token (to put in the mail; only its digest is kept)."""
    now = time.time() if now is None else now
    token = new_token(32)
    with db.transaction():
        db.execute(
            "DELETE FROM account_tokens WHERE expires_at <= :old OR used_at <= :old",
            {"old": now - KEEP_USED},
        )
        same_org = (
            "organization_id IS NULL" if organization_id is None else "organization_id = :org"
        )
        db.execute(
            f"DELETE FROM account_tokens WHERE kind = :kind AND email = :email AND used_at IS NULL AND {same_org}",  # noqa: S608  # a fixed condition
            {"kind": kind, "email": email, "org": organization_id},
        )
        db.execute(
            "INSERT INTO account_tokens (kind, token_hash, email, user_id, organization_id, role,"
            " created_at, expires_at) VALUES (:kind, :h, :email, :user, :org, :role, :now, :exp)",
            {
                "kind": kind,
                "h": digest(token),
                "email": email,
                "user": user_id,
                "org": organization_id,
                "role": role,
                "now": now,
                "exp": now + LIFETIMES[kind],
            },
        )
    return token


def redeem(*, db: Database, kind: Kind, token: str, now: float | None = None) -> Link:
    """Use a link up and answer what it was for; `InvalidInput` if it is unknown, of another
    kind, used already or expired. Call it inside the transaction that acts on it, so that
    a failure there leaves the link usable."""
    now = time.time() if now is None else now
    token = token.strip()
    row = None
    if token and len(token) <= 200:
        row = db.one(
            "UPDATE account_tokens SET used_at = :now WHERE token_hash = :h AND kind = :kind"
            " AND used_at IS NULL AND expires_at > :now RETURNING id, kind, email, user_id,"
            " organization_id, role, created_at, expires_at",
            {"now": now, "h": digest(token), "kind": kind},
        )
    if row is None:
        raise InvalidInput(
            f"this {_WHAT[kind]} is not valid: it was used already, has expired or was "
            f"replaced by a newer one; {_ASK_AGAIN[kind]}"
        )
    return Link.model_validate(row)
