"""Roles in an organization and what each may do (API.md "Roles").

owner   everything, including billing, members and deleting the organization
admin   domains, aliases, keys, API keys, webhooks
member  read everything; manage the aliases of verified domains
"""

from __future__ import annotations

from typing import Literal

from smtpy.errors import Forbidden, InvalidInput

Role = Literal["owner", "admin", "member"]
ROLES: tuple[Role, ...] = ("owner", "admin", "member")

Permission = Literal[
    "read",  # see the organization's objects
    "aliases",  # manage aliases of verified domains
    "manage",  # domains, aliases of pending domains, DKIM keys, API keys, webhooks, queue
    "members",  # invite, change roles, remove members
    "billing",  # plans, checkout, portal
    "organization",  # rename or delete the organization
]

_GRANTS: dict[Role, frozenset[str]] = {
    "member": frozenset({"read", "aliases"}),
    "admin": frozenset({"read", "aliases", "manage"}),
    "owner": frozenset({"read", "aliases", "manage", "members", "billing", "organization"}),
}


def parse_role(text: str) -> Role:
    """A role named by a user; `InvalidInput` naming the choices otherwise."""
    value = text.strip().lower()
    for role in ROLES:
        if role == value:
            return role
    raise InvalidInput(f"unknown role {text!r}: choose owner, admin or member")


def allows(role: Role | None, permission: Permission) -> bool:
    """Whether `role` (None: no membership, e.g. the CLI's operator) may do this.

    None is the operator at the shell, who may do everything."""
    return role is None or permission in _GRANTS[role]


def require(role: Role | None, permission: Permission) -> None:
    """Raise `Forbidden` unless `role` may do this."""
    if not allows(role, permission):
        raise Forbidden(f"your role ({role}) may not do this: ask an owner of the organization")
