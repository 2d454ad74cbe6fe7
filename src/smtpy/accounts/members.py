"""Memberships: who belongs to which organization, with which role."""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict

from smtpy.accounts.audit import record
from smtpy.accounts.roles import Role
from smtpy.errors import Conflict, InvalidInput, NotFound
from smtpy.store.db import Database
from smtpy.store.pages import Page, check_limit, keyset, page_of


class MemberPublic(BaseModel):
    model_config = ConfigDict(frozen=True, defer_build=True)

    id: int  # the membership's id
    user_id: int
    email: str
    name: str
    role: Role
    two_factor: bool
    created_at: float


class OrgMembership(BaseModel):
    """One of a user's organizations, with their role in it."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    id: int
    name: str
    role: Role


_SELECT = (
    "SELECT m.id, m.user_id, u.email, u.name, m.role, u.totp_enabled_at, m.created_at"
    " FROM memberships m JOIN users u ON u.id = m.user_id"
)


def _public(row: dict[str, Any]) -> MemberPublic:
    return MemberPublic(
        id=int(row["id"]),
        user_id=int(row["user_id"]),
        email=str(row["email"]),
        name=str(row["name"] or ""),
        role=row["role"],
        two_factor=row["totp_enabled_at"] is not None,
        created_at=float(row["created_at"]),
    )


def add_member(*, db: Database, org: int, user_id: int, role: Role) -> MemberPublic:
    """Make a user a member of `org`; `Conflict` if they are one already."""
    with db.transaction():
        try:
            member_id = db.insert(
                "INSERT INTO memberships (organization_id, user_id, role, created_at)"
                " VALUES (:org, :user, :role, :now) RETURNING id",
                {"org": org, "user": user_id, "role": role, "now": time.time()},
            )
        except Conflict:
            raise Conflict("this user is already a member of the organization") from None
        row = db.one(_SELECT + " WHERE m.id = :id", {"id": member_id})
        assert row is not None
        member = _public(row)
        record(db, org=org, action="member.add", target=member.email, detail={"role": role})
    return member


def role_of(*, db: Database, org: int, user_id: int) -> Role | None:
    """The user's role in `org`, or None when they are not a member."""
    role: Role | None = db.scalar(
        "SELECT role FROM memberships WHERE organization_id = :org AND user_id = :user",
        {"org": org, "user": user_id},
    )
    return role


def list_members(*, db: Database, org: int) -> list[MemberPublic]:
    rows = db.all(
        _SELECT + " WHERE m.organization_id = :org ORDER BY m.created_at, m.id", {"org": org}
    )
    return [_public(r) for r in rows]


def get_member(*, db: Database, org: int, member_id: int) -> MemberPublic:
    row = db.one(
        _SELECT + " WHERE m.id = :id AND m.organization_id = :org", {"id": member_id, "org": org}
    )
    if row is None:
        raise NotFound(f"there is no member {member_id} in this organization")
    return _public(row)


def organizations_of(*, db: Database, user_id: int) -> list[OrgMembership]:
    """The organizations a user belongs to, oldest membership first."""
    rows = db.all(
        "SELECT o.id, o.name, m.role FROM memberships m JOIN organizations o"
        " ON o.id = m.organization_id WHERE m.user_id = :user ORDER BY m.created_at, m.id",
        {"user": user_id},
    )
    return [OrgMembership(id=int(r["id"]), name=str(r["name"]), role=r["role"]) for r in rows]


def _owners(db: Database, org: int) -> int:
    return int(
        db.scalar(
            "SELECT count(*) FROM memberships WHERE organization_id = :org AND role = 'owner'",
            {"org": org},
        )
    )


def change_role(*, db: Database, org: int, member_id: int, role: Role) -> MemberPublic:
    """Give a member another role; the last owner cannot stop being one."""
    with db.transaction():
        member = get_member(db=db, org=org, member_id=member_id)
        if member.role == "owner" and role != "owner" and _owners(db, org) == 1:
            raise InvalidInput(
                "this is the organization's last owner: make another member owner first"
            )
        if role != member.role:
            db.execute(
                "UPDATE memberships SET role = :r WHERE id = :id", {"r": role, "id": member_id}
            )
            record(
                db,
                org=org,
                action="member.update",
                target=member.email,
                detail={"role": role, "from": member.role},
            )
    return get_member(db=db, org=org, member_id=member_id)


def remove_member(*, db: Database, org: int, member_id: int) -> MemberPublic:
    """Take a member out of `org` (their sessions there end); never the last owner."""
    with db.transaction():
        member = get_member(db=db, org=org, member_id=member_id)
        if member.role == "owner" and _owners(db, org) == 1:
            raise InvalidInput(
                "this is the organization's last owner: make another member owner first"
            )
        db.execute("DELETE FROM memberships WHERE id = :id", {"id": member_id})
        db.execute(
            "DELETE FROM sessions WHERE user_id = :user AND organization_id = :org",
            {"user": member.user_id, "org": org},
        )
        record(db, org=org, action="member.remove", target=member.email)
    return member


def page_members(
    *, db: Database, org: int, limit: int | None = None, cursor: str | None = None
) -> Page[MemberPublic]:
    """The organization's members, newest membership first, one page at a time."""
    limit = check_limit(limit)
    after, params = keyset("m.created_at", "m.id", cursor)
    rows = db.all(
        _SELECT
        + " WHERE m.organization_id = :org"
        + (f" AND {after}" if after else "")
        + " ORDER BY m.created_at DESC, m.id DESC LIMIT :lim",
        {**params, "org": org, "lim": limit + 1},
    )
    return page_of([_public(r) for r in rows], limit, key=lambda m: (m.created_at, m.id))


class OrgMembershipPage(BaseModel):
    """A user's organization with the membership's creation time (the page's key)."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    id: int
    name: str
    role: Role
    joined_at: float
    membership_id: int


_ORGS_OF = (
    "SELECT o.id, o.name, m.role, m.created_at, m.id AS membership_id FROM memberships m"
    " JOIN organizations o ON o.id = m.organization_id"
)


def page_organizations_of(
    *, db: Database, user_id: int, limit: int | None = None, cursor: str | None = None
) -> Page[OrgMembershipPage]:
    """The organizations a user belongs to, newest membership first, one page at a time."""
    limit = check_limit(limit)
    after, params = keyset("m.created_at", "m.id", cursor)
    rows = db.all(
        _ORGS_OF
        + " WHERE m.user_id = :user"
        + (f" AND {after}" if after else "")
        + " ORDER BY m.created_at DESC, m.id DESC LIMIT :lim",
        {**params, "user": user_id, "lim": limit + 1},
    )
    found = [
        OrgMembershipPage(
            id=int(r["id"]),
            name=str(r["name"]),
            role=r["role"],
            joined_at=float(r["created_at"]),
            membership_id=int(r["membership_id"]),
        )
        for r in rows
    ]
    return page_of(found, limit, key=lambda o: (o.joined_at, o.membership_id))
