"""Organizations' names and their creation: one rule for the CLI, the API and sign-up.

`smtpy.admin.organizations` builds the operator's and the API's services on
these; sign-up (`smtpy.accounts.signin.register`) makes its organization here
too, so no shell can create a name another refuses.
"""

from __future__ import annotations

import time

from smtpy.accounts.audit import record
from smtpy.accounts.members import add_member
from smtpy.errors import Conflict, InvalidInput
from smtpy.store.db import Database

DEFAULT_ORGANIZATION = "default"
NAME_MAX = 100


def check_name(name: str) -> str:
    """An organization's name as stored (trimmed); `InvalidInput` when empty, too long or
    holding control characters."""
    value = name.strip()
    if not value:
        raise InvalidInput("an organization needs a name")
    if len(value) > NAME_MAX:
        raise InvalidInput(
            f"the organization's name is too long: use at most {NAME_MAX} characters"
        )
    if not value.isprintable():
        raise InvalidInput("the organization's name must be one line of printable characters")
    return value


def taken(db: Database, name: str, *, other_than: int | None = None) -> bool:
    """Whether another organization has this name, in any case."""
    return (
        db.scalar(
            "SELECT id FROM organizations WHERE lower(name) = lower(:n) AND id <> :id",
            {"n": name, "id": -1 if other_than is None else other_than},
        )
        is not None
    )


def taken_message(name: str) -> str:
    return f"there is already an organization named {name!r}: choose another name"


def create_organization(*, db: Database, name: str, owner: int | None = None) -> int:
    """A new organization's id; `owner` (a user id) becomes its first owner. `Conflict` when
    the name is taken (in any case) or is the default organization's."""
    value = check_name(name)
    if value.lower() == DEFAULT_ORGANIZATION:
        raise Conflict(f"{value!r} is the default organization's name: choose another name")
    with db.transaction():
        if taken(db, value):
            raise Conflict(taken_message(value))
        try:
            org = db.insert(
                "INSERT INTO organizations (name, created_at) VALUES (:n, :now) RETURNING id",
                {"n": value, "now": time.time()},
            )
        except Conflict:  # another process took the name just now
            raise Conflict(taken_message(value)) from None
        record(db, org=org, action="organization.create", target=value)
        if owner is not None:
            add_member(db=db, org=org, user_id=owner, role="owner")
    return org
