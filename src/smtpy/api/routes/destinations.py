"""/api/v1 routes: the acting organization's destinations (API.md).

A mail address added here (or named in an alias through the API) is mailed a
confirmation link and receives nothing until it is followed; an https URL is
confirmed at once and its answer holds its signing `secret` that once. Admins
change them (`manage`); members read them. The rules are in
`smtpy.admin.destinations`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from smtpy.accounts.actor import acting
from smtpy.admin import destinations
from smtpy.api.deps import Auth, Db, SettingsDep
from smtpy.api.shapes import rfc3339
from smtpy.billing.plans import Catalog
from smtpy.store.pages import Page

router = APIRouter(tags=["destinations"])

Limit = Annotated[int | None, Query(description="Items per page (1 to 200, default 50).")]
Cursor = Annotated[str | None, Query(description="The `next_cursor` of the previous page.")]


class DestinationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    address: str | None = Field(default=None, max_length=600, examples=["bob@mailbox.example"])
    url: str | None = Field(
        default=None, max_length=2000, examples=["https://app.example.net/inbound"]
    )


class DestinationOut(BaseModel):
    id: str
    kind: str  # address | url
    address: str  # the mail address or the URL
    status: str  # confirmed | pending confirmation
    confirmed_at: str | None
    confirmation_sent_at: str | None
    created_at: str | None


class DestinationCreatedOut(DestinationOut):
    secret: str | None  # whsec_… of a URL: in this answer only


def _out(d: destinations.DestinationPublic) -> dict[str, object]:
    return {
        "id": str(d.id),
        "kind": d.kind,
        "address": d.address,
        "status": "confirmed" if d.confirmed else "pending confirmation",
        "confirmed_at": rfc3339(d.confirmed_at),
        "confirmation_sent_at": rfc3339(d.confirmation_sent_at),
        "created_at": rfc3339(d.created_at),
    }


@router.get("/destinations")
def list_destinations(
    db: Db, principal: Auth, limit: Limit = None, cursor: Cursor = None
) -> Page[DestinationOut]:
    """The organization's destinations, newest first, confirmed or not (never a secret)."""
    principal.require("read")
    page = destinations.page_destinations(db=db, org=principal.org, limit=limit, cursor=cursor)
    return Page[DestinationOut](
        data=[DestinationOut.model_validate(_out(d)) for d in page.data],
        has_more=page.has_more,
        next_cursor=page.next_cursor,
    )


@router.post("/destinations", status_code=201)
def create_destination(
    body: DestinationIn, db: Db, principal: Auth, settings: SettingsDep
) -> DestinationCreatedOut:
    """Add a mail address (mailed a confirmation link) or an https URL (confirmed; the
    answer's `secret` is shown this once)."""
    principal.require("manage")
    with acting(principal.actor):
        created = destinations.create_destination(
            db=db,
            org=principal.org,
            address=body.address,
            url=body.url,
            settings=settings,
            catalog=Catalog.of(settings),
            allow_private=settings.webhook_allow_private,
        )
    return DestinationCreatedOut.model_validate({**_out(created), "secret": created.secret})


@router.get("/destinations/{destination_id}")
def get_destination(destination_id: str, db: Db, principal: Auth) -> DestinationOut:
    principal.require("read")
    found = destinations.get_destination(db=db, org=principal.org, destination_id=destination_id)
    return DestinationOut.model_validate(_out(found))


@router.delete("/destinations/{destination_id}", status_code=204)
def delete_destination(destination_id: str, db: Db, principal: Auth) -> Response:
    """Remove a destination no alias names (409 while one does)."""
    principal.require("manage")
    with acting(principal.actor):
        destinations.remove_destination(db=db, org=principal.org, destination_id=destination_id)
    return Response(status_code=204)


@router.post("/destinations/{destination_id}/resend")
def resend(destination_id: str, db: Db, principal: Auth, settings: SettingsDep) -> DestinationOut:
    """Mail a new confirmation link (the previous one stops working); 429 within a minute
    of the last one."""
    principal.require("manage")
    with acting(principal.actor):
        found = destinations.resend_confirmation(
            db=db, org=principal.org, destination_id=destination_id, settings=settings
        )
    return DestinationOut.model_validate(_out(found))
