"""/api/v1 routes: messages (see API.md).

The list is the message log, newest first: one entry per event (received,
delivered, deferred, bounced, rejected, discarded) with `status` naming it.
`{id}` in /messages/{id} is the message's queue id (each entry's `queue_id`):
the detail gathers the message's events, and while it is still queued its
headers, authentication results and delivery attempts.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel

from smtpy.accounts.actor import acting
from smtpy.admin import messages
from smtpy.api.deps import Auth, Db
from smtpy.api.shapes import rfc3339
from smtpy.store.pages import Page

router = APIRouter(tags=["messages"])


def unix(value: datetime | None) -> float | None:
    """A query's RFC 3339 time as Unix time (no offset given: UTC)."""
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


class EntryOut(BaseModel):
    id: str
    at: str
    status: str  # received | delivered | deferred | bounced | rejected | discarded
    queue_id: str | None
    client_ip: str | None
    sender: str | None
    alias: str | None  # the address the sender used
    recipient: str | None  # where it goes
    domain: str | None
    size: int | None
    reason: str | None
    code: int | None
    reply: str | None
    remote_host: str | None
    delay: float | None


class AttemptOut(BaseModel):
    at: str
    result: str
    remote_host: str | None
    code: int | None
    reply: str | None


class DeliveryOut(BaseModel):
    original_recipient: str
    recipient: str
    status: str
    attempts: list[AttemptOut]


class EnvelopeOut(BaseModel):
    sender: str | None
    recipients: list[str]
    client_ip: str | None
    size: int | None
    received_at: str | None


class MessageOut(BaseModel):
    id: str
    status: str
    queued: bool
    envelope: EnvelopeOut
    headers: str | None  # while queued
    authentication_results: str | None  # while queued
    deliveries: list[DeliveryOut]
    events: list[EntryOut]


def _entry(e: messages.LogEntry) -> EntryOut:
    return EntryOut(**{**e.model_dump(), "id": str(e.id), "at": rfc3339(e.at)})


def _message(m: messages.MessageDetail) -> MessageOut:
    return MessageOut(
        id=m.id,
        status=m.status,
        queued=m.queued,
        envelope=EnvelopeOut(
            sender=m.sender,
            recipients=m.recipients,
            client_ip=m.client_ip,
            size=m.size,
            received_at=rfc3339(m.received_at),
        ),
        headers=m.headers,
        authentication_results=m.authentication_results,
        deliveries=[
            DeliveryOut(
                original_recipient=d.original_recipient,
                recipient=d.recipient,
                status=d.status,
                attempts=[
                    AttemptOut(**{**a.model_dump(), "at": rfc3339(a.at)}) for a in d.attempts
                ],
            )
            for d in m.deliveries
        ],
        events=[_entry(e) for e in m.events],
    )


@router.get("/messages")
def list_messages(
    db: Db,
    principal: Auth,
    domain: str | None = None,
    alias: str | None = None,
    status: str | None = None,
    q: Annotated[
        str | None,
        Query(
            description="in the sender, recipients or queue id; a text search reads at most"
            f" {messages.SEARCH_WINDOW:,} log rows per page, so a page may hold fewer rows"
            " than `limit` (even none) with `has_more`: follow `next_cursor` to search on"
        ),
    ] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int | None = None,
    cursor: str | None = None,
) -> Page[EntryOut]:
    """The message log, newest first (a page at a time; cursors stay valid as mail arrives)."""
    query = messages.MessageQuery.make(
        domain=domain, alias=alias, status=status, q=q, since=unix(since), until=unix(until)
    )
    page = messages.message_page(db=db, org=principal.org, query=query, limit=limit, cursor=cursor)
    return Page[EntryOut](
        data=[_entry(e) for e in page.data], has_more=page.has_more, next_cursor=page.next_cursor
    )


@router.get("/messages/{message_id}")
def get_message(message_id: str, db: Db, principal: Auth) -> MessageOut:
    return _message(messages.message_detail(db=db, org=principal.org, message_id=message_id))


@router.post("/messages/{message_id}/retry", status_code=202)
def retry_message(message_id: str, db: Db, principal: Auth) -> MessageOut:
    """Make a queued message's deliveries due now (409 once it left the queue)."""
    principal.require("manage")
    with acting(principal.actor):
        detail = messages.retry_message(db=db, org=principal.org, message_id=message_id)
    return _message(detail)


@router.delete("/messages/{message_id}", status_code=204)
def delete_message(message_id: str, db: Db, principal: Auth) -> Response:
    """Remove a queued message without a bounce (409 once it left the queue)."""
    principal.require("manage")
    with acting(principal.actor):
        messages.delete_message(db=db, org=principal.org, message_id=message_id)
    return Response(status_code=204)
