"""/api/v1 routes: the acting organization's webhook endpoints and their deliveries (API.md).

Every member reads them (`read`, as on the dashboard's pages); owners and admins change
them (`manage`). The answer to a create, and to a rotation, holds
the endpoint's `secret` (`whsec_…`) that once; lists never do.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from smtpy.accounts.actor import acting
from smtpy.admin import webhooks
from smtpy.api.deps import Auth, Db, SettingsDep
from smtpy.api.shapes import rfc3339
from smtpy.billing.plans import Catalog
from smtpy.errors import NotFound
from smtpy.store.pages import Page

router = APIRouter(tags=["webhooks"])

Limit = Annotated[int | None, Query(description="Items per page (1 to 200, default 50).")]
Cursor = Annotated[str | None, Query(description="The `next_cursor` of the previous page.")]


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(examples=["https://app.example.net/hooks/smtpy"])
    events: list[str] = Field(examples=[["message.received", "message.bounced"]])


class WebhookPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str | None = None
    events: list[str] | None = None
    enabled: bool | None = None


class WebhookOut(BaseModel):
    id: str
    url: str
    events: list[str]
    enabled: bool
    disabled_reason: str | None
    failing_since: str | None
    previous_secret_until: str | None  # during a rotation: when the old secret stops signing
    created_at: str | None
    updated_at: str | None


class WebhookSecretOut(WebhookOut):
    secret: str  # whsec_…: in this answer only


class AttemptOut(BaseModel):
    at: str | None
    status_code: int | None
    duration_ms: int
    response_body: str | None
    error: str | None


class DeliveryOut(BaseModel):
    id: str
    event_id: str
    type: str
    status: str  # pending | delivered | failed
    attempts: int
    next_attempt_at: str | None
    last_status_code: int | None
    last_error: str | None
    created_at: str | None
    updated_at: str | None
    tries: list[AttemptOut]


def _out(hook: webhooks.WebhookPublic) -> dict[str, object]:
    return {
        "id": hook.id,
        "url": hook.url,
        "events": hook.events,
        "enabled": hook.enabled,
        "disabled_reason": hook.disabled_reason,
        "failing_since": rfc3339(hook.failing_since),
        "previous_secret_until": rfc3339(hook.previous_secret_until),
        "created_at": rfc3339(hook.created_at),
        "updated_at": rfc3339(hook.updated_at),
    }


def _delivery(d: webhooks.DeliveryPublic) -> DeliveryOut:
    return DeliveryOut(
        id=str(d.id),
        event_id=d.event_id,
        type=d.type,
        status=d.status,
        attempts=d.attempts,
        next_attempt_at=rfc3339(d.next_attempt_at),
        last_status_code=d.last_status_code,
        last_error=d.last_error,
        created_at=rfc3339(d.created_at),
        updated_at=rfc3339(d.updated_at),
        tries=[
            AttemptOut(
                at=rfc3339(t.at),
                status_code=t.status_code,
                duration_ms=t.duration_ms,
                response_body=t.response_body,
                error=t.error,
            )
            for t in d.tries
        ],
    )


def _delivery_id(text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise NotFound(f"there is no delivery {text!r}")
    return int(text)


@router.get("/webhooks")
def list_webhooks(
    db: Db, principal: Auth, limit: Limit = None, cursor: Cursor = None
) -> Page[WebhookOut]:
    """The organization's webhook endpoints, newest first (never a secret)."""
    principal.require("read")
    page = webhooks.page_webhooks(db=db, org=principal.org, limit=limit, cursor=cursor)
    return Page[WebhookOut](
        data=[WebhookOut.model_validate(_out(h)) for h in page.data],
        has_more=page.has_more,
        next_cursor=page.next_cursor,
    )


@router.post("/webhooks", status_code=201)
def create_webhook(
    body: WebhookIn, db: Db, principal: Auth, settings: SettingsDep
) -> WebhookSecretOut:
    """Add an endpoint for `events`; the answer's `secret` is shown this once."""
    principal.require("manage")
    with acting(principal.actor):
        hook = webhooks.create_webhook(
            db=db,
            org=principal.org,
            url=body.url,
            events=body.events,
            allow_private=settings.webhook_allow_private,
            catalog=Catalog.of(settings),
        )
    return WebhookSecretOut.model_validate({**_out(hook), "secret": hook.secret})


@router.get("/webhooks/{webhook_id}")
def get_webhook(webhook_id: str, db: Db, principal: Auth) -> WebhookOut:
    principal.require("read")
    return WebhookOut.model_validate(
        _out(webhooks.get_webhook(db=db, org=principal.org, webhook_id=webhook_id))
    )


@router.patch("/webhooks/{webhook_id}")
def update_webhook(
    webhook_id: str, body: WebhookPatch, db: Db, principal: Auth, settings: SettingsDep
) -> WebhookOut:
    """Change the URL, the events, or enable/disable (enabling clears why it was disabled)."""
    principal.require("manage")
    with acting(principal.actor):
        hook = webhooks.update_webhook(
            db=db,
            org=principal.org,
            webhook_id=webhook_id,
            url=body.url,
            events=body.events,
            enabled=body.enabled,
            allow_private=settings.webhook_allow_private,
        )
    return WebhookOut.model_validate(_out(hook))


@router.delete("/webhooks/{webhook_id}", status_code=204)
def remove_webhook(webhook_id: str, db: Db, principal: Auth) -> Response:
    """Remove the endpoint and its deliveries."""
    principal.require("manage")
    with acting(principal.actor):
        webhooks.remove_webhook(db=db, org=principal.org, webhook_id=webhook_id)
    return Response(status_code=204)


@router.post("/webhooks/{webhook_id}/test")
def test_webhook(webhook_id: str, db: Db, principal: Auth, settings: SettingsDep) -> DeliveryOut:
    """Post a signed `webhook.test` event now; the delivery with the endpoint's answer."""
    principal.require("manage")
    with acting(principal.actor):
        delivery = webhooks.send_test(
            db=db,
            org=principal.org,
            webhook_id=webhook_id,
            allow_private=settings.webhook_allow_private,
            timeout=settings.webhook_timeout,
            ca_file=settings.tls_ca_file,
        )
    return _delivery(delivery)


@router.post("/webhooks/{webhook_id}/rotate-secret")
def rotate_secret(webhook_id: str, db: Db, principal: Auth) -> WebhookSecretOut:
    """A new secret (in this answer only); the previous one also signs for 24 hours."""
    principal.require("manage")
    with acting(principal.actor):
        hook = webhooks.rotate_secret(db=db, org=principal.org, webhook_id=webhook_id)
    return WebhookSecretOut.model_validate({**_out(hook), "secret": hook.secret})


@router.get("/webhooks/{webhook_id}/deliveries")
def list_deliveries(
    webhook_id: str, db: Db, principal: Auth, limit: Limit = None, cursor: Cursor = None
) -> Page[DeliveryOut]:
    """The endpoint's deliveries, newest first, each with every attempt."""
    principal.require("read")
    page = webhooks.page_deliveries(
        db=db, org=principal.org, webhook_id=webhook_id, limit=limit, cursor=cursor
    )
    return Page[DeliveryOut](
        data=[_delivery(d) for d in page.data],
        has_more=page.has_more,
        next_cursor=page.next_cursor,
    )


@router.post("/webhooks/{webhook_id}/deliveries/{delivery_id}/retry")
def retry_delivery(webhook_id: str, delivery_id: str, db: Db, principal: Auth) -> DeliveryOut:
    """Make a delivery due again now; `smtpy serve` sends it."""
    principal.require("manage")
    with acting(principal.actor):
        delivery = webhooks.retry_delivery(
            db=db, org=principal.org, webhook_id=webhook_id, delivery_id=_delivery_id(delivery_id)
        )
    return _delivery(delivery)
