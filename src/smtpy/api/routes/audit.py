"""/api/v1 routes: the audit log, who changed what, when, from where (API.md)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel

from smtpy.accounts import audit
from smtpy.accounts.actor import acting
from smtpy.api.deps import Auth, Db
from smtpy.api.shapes import rfc3339
from smtpy.store.pages import Page

router = APIRouter(tags=["audit log"])


class AuditEventOut(BaseModel):
    id: str
    at: str | None
    actor: str  # a user's e-mail, "key NAME (ID)", or the Unix user at the CLI
    via: str  # cli | api_key | session | system
    action: str  # domain.create, alias.update, apikey.revoke, ...
    target: str | None
    detail: dict[str, Any] | None
    client_ip: str | None


@router.get("/audit-log")
def list_events(
    db: Db,
    principal: Auth,
    limit: Annotated[
        int | None, Query(description="Items per page (1 to 200, default 50).")
    ] = None,
    cursor: Annotated[
        str | None, Query(description="The `next_cursor` of the previous page.")
    ] = None,
) -> Page[AuditEventOut]:
    """The organization's changes, newest first."""
    principal.require("manage")
    with acting(principal.actor):
        page = audit.list_events(db=db, org=principal.org, limit=limit, cursor=cursor)
    return Page[AuditEventOut](
        data=[
            AuditEventOut(
                id=str(e.id),
                at=rfc3339(e.at),
                actor=e.actor,
                via=e.via,
                action=e.action,
                target=e.target,
                detail=e.detail,
                client_ip=e.client_ip,
            )
            for e in page.data
        ],
        has_more=page.has_more,
        next_cursor=page.next_cursor,
    )
