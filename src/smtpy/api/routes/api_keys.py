"""/api/v1 routes: the acting organization's API keys (API.md)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict

from smtpy.accounts import api_keys
from smtpy.accounts.actor import acting
from smtpy.api.deps import Auth, Db
from smtpy.api.shapes import rfc3339
from smtpy.store.pages import Page

router = APIRouter(tags=["api keys"])

Limit = Annotated[int | None, Query(description="Items per page (1 to 200, default 50).")]
Cursor = Annotated[str | None, Query(description="The `next_cursor` of the previous page.")]


class ApiKeyOut(BaseModel):
    id: str
    name: str
    status: Literal["active", "expired", "revoked"]
    created_at: str | None
    expires_at: str | None
    last_used_at: str | None
    revoked_at: str | None


class ApiKeyCreatedOut(ApiKeyOut):
    key: str  # `smtpy_<id>_<secret>`: in this answer only, never again


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    expires_at: AwareDatetime | None = None  # RFC 3339 with a time zone; None: never


def _out(key: api_keys.ApiKeyPublic) -> dict[str, object]:
    return {
        "id": key.id,
        "name": key.name,
        "status": api_keys.key_state(key),
        "created_at": rfc3339(key.created_at),
        "expires_at": rfc3339(key.expires_at),
        "last_used_at": rfc3339(key.last_used_at),
        "revoked_at": rfc3339(key.revoked_at),
    }


@router.get("/api-keys")
def list_keys(
    db: Db, principal: Auth, limit: Limit = None, cursor: Cursor = None
) -> Page[ApiKeyOut]:
    """The organization's API keys, newest first, revoked ones included (never a secret)."""
    principal.require("manage")
    with acting(principal.actor):
        page = api_keys.page_keys(db=db, org=principal.org, limit=limit, cursor=cursor)
    return Page[ApiKeyOut](
        data=[ApiKeyOut.model_validate(_out(k)) for k in page.data],
        has_more=page.has_more,
        next_cursor=page.next_cursor,
    )


@router.post("/api-keys", status_code=201)
def create_key(body: ApiKeyCreate, db: Db, principal: Auth) -> ApiKeyCreatedOut:
    """Create an API key; the answer's `key` is shown this once."""
    principal.require("manage")
    with acting(principal.actor):
        key = api_keys.create_key(
            db=db,
            org=principal.org,
            name=body.name,
            expires_at=None if body.expires_at is None else body.expires_at.timestamp(),
            created_by=principal.user_id,
        )
    return ApiKeyCreatedOut.model_validate({**_out(key), "key": key.key})


@router.delete("/api-keys/{key_id}", status_code=204)
def revoke_key(key_id: str, db: Db, principal: Auth) -> Response:
    """Revoke an API key: requests with it are refused from now on."""
    principal.require("manage")
    with acting(principal.actor):
        api_keys.revoke_key(db=db, org=principal.org, key_id=key_id)
    return Response(status_code=204)
