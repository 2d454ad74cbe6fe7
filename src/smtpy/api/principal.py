"""Who is calling the API, as the routes see it."""

from __future__ import annotations

from dataclasses import dataclass

from smtpy.accounts.actor import Actor
from smtpy.accounts.roles import Permission, Role, require


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller acting in one organization.

    API keys act with the `admin` role in their organization; a signed-in user
    with their membership's role (sessions reach here only after 2FA)."""

    org: int  # the acting organization's id
    role: Role
    actor: Actor  # what the audit log records
    user_id: int | None = None  # None for API keys
    session_id: int | None = None  # None for API keys
    api_key_id: str | None = None

    def require(self, permission: Permission) -> None:
        """`Forbidden` (403) unless this caller's role allows `permission`."""
        require(self.role, permission)
