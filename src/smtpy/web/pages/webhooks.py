"""Webhooks: the organization's endpoints (add, change the URL and events, enable/disable,
remove, rotate the secret, send a test event) and each endpoint's recent deliveries with a
retry per delivery.

A thin shell over `smtpy.admin.webhooks`: every rule (the URL, the event types, the plan's
limit, rotation overlap, when a retry is allowed) is the core's. Every member reads these
pages; owners and admins (`manage`) change them, as in the API. A secret (`whsec_…`) is in
the answer to the POST that made it (creation, rotation) and nowhere else: never in a
redirect, a cookie or a list.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, TypeVar

from fastapi import Form, Request
from fastapi.responses import RedirectResponse, Response

from smtpy.admin import webhooks
from smtpy.api.deps import Db
from smtpy.billing.plans import Catalog
from smtpy.errors import Conflict, InvalidInput, NotFound, SmtpyError
from smtpy.events.types import EVENT_TYPES
from smtpy.web.pages._view import as_user, settings_of
from smtpy.web.routing import page_router
from smtpy.web.session import PageUser, SignedIn
from smtpy.web.templating import FormErrors, done, render

router = page_router()
T = TypeVar("T")

Text = Annotated[str, Form(max_length=4096)]
Events = Annotated[list[str] | None, Form(max_length=len(EVENT_TYPES) + 1)]
DELIVERIES_SHOWN = 20  # per page of an endpoint's deliveries


def hook_url(webhook_id: str) -> str:
    return f"/webhooks/{webhook_id}"


# -- the list, and adding an endpoint -------------------------------------------------------


def _list(
    request: Request,
    db: Db,
    user: SignedIn,
    *,
    errors: FormErrors | None = None,
    created: webhooks.WebhookCreated | None = None,
    url: str = "",
    events: list[str] | None = None,
    status_code: int = 200,
) -> Response:
    hooks = webhooks.list_webhooks(db=db, org=user.principal.org)
    return render(
        request,
        "webhooks/list.html",
        {
            "hooks": hooks,
            "event_types": EVENT_TYPES,
            "created": created,
            "url": url,
            "chosen": events if events is not None else [],
            "errors": errors or FormErrors(),
        },
        user=user,
        status_code=status_code,
    )


@router.get("/webhooks")
def webhook_list(request: Request, db: Db, user: PageUser) -> Response:
    return _list(request, db, user)


@router.post("/webhooks")
def webhook_add(
    request: Request, db: Db, user: PageUser, url: Text = "", events: Events = None
) -> Response:
    """Add an endpoint; its secret is shown in this answer only."""
    user.principal.require("manage")
    settings = settings_of(request)
    chosen = events or []
    errors = _check_fields(url, chosen, allow_private=settings.webhook_allow_private)
    created = _change(
        user,
        errors,
        lambda: webhooks.create_webhook(
            db=db,
            org=user.principal.org,
            url=url,
            events=chosen,
            allow_private=settings.webhook_allow_private,
            catalog=Catalog.of(settings),
        ),
    )
    if created is not None:
        return _list(request, db, user, created=created)
    return _list(request, db, user, errors=errors, url=url, events=chosen, status_code=422)


def _check_fields(url: str, events: list[str], *, allow_private: bool) -> FormErrors:
    """The core's own checks, one per field, so that each error shows at its field."""
    errors = FormErrors()
    try:
        webhooks.check_url(url, allow_private=allow_private)
    except InvalidInput as exc:
        errors.error(exc, "url")
    try:
        webhooks.check_events(events)
    except InvalidInput as exc:
        errors.error(exc, "events")
    return errors


def _change(user: SignedIn, errors: FormErrors, make: Callable[[], T]) -> T | None:
    """The core's change, made as `user` unless a field was refused already; what the core
    refuses (the plan's limit, the most endpoints, …) joins `errors` and gives None. An
    endpoint that is not there is the page's 404."""
    if errors:
        return None
    try:
        with as_user(user):
            return make()
    except NotFound:
        raise
    except SmtpyError as exc:
        errors.error(exc)
        return None


# -- one endpoint: its state, actions and deliveries ------------------------------------------


def _detail(
    request: Request,
    db: Db,
    user: SignedIn,
    webhook_id: str,
    *,
    errors: FormErrors | None = None,
    rotated: webhooks.WebhookCreated | None = None,
    url: str | None = None,
    events: list[str] | None = None,
    status_code: int = 200,
) -> Response:
    """The endpoint's page; `url` and `events` fill its change form (default: the endpoint's)."""
    cursor = request.query_params.get("cursor") or None
    hook = webhooks.get_webhook(db=db, org=user.principal.org, webhook_id=webhook_id)
    deliveries = webhooks.page_deliveries(
        db=db,
        org=user.principal.org,
        webhook_id=hook.id,
        limit=DELIVERIES_SHOWN,
        cursor=cursor,
    )
    return render(
        request,
        "webhooks/detail.html",
        {
            "hook": rotated or hook,
            "rotated": rotated,
            "deliveries": deliveries,
            "older": cursor is not None,
            "now": time.time(),
            "overlap_hours": round(webhooks.ROTATION_OVERLAP / 3600),
            "event_types": EVENT_TYPES,
            "url": hook.url if url is None else url,
            "chosen": hook.events if events is None else events,
            "errors": errors or FormErrors(),
        },
        user=user,
        status_code=status_code,
    )


@router.get("/webhooks/{webhook_id}")
def webhook_detail(request: Request, db: Db, user: PageUser, webhook_id: str) -> Response:
    return _detail(request, db, user, webhook_id)


def _refused(
    request: Request, db: Db, user: SignedIn, webhook_id: str, exc: SmtpyError
) -> Response:
    """The endpoint's page again, with what the core refused above its actions."""
    status = 409 if isinstance(exc, Conflict) else 422
    return _detail(
        request, db, user, webhook_id, errors=FormErrors().error(exc), status_code=status
    )


@router.post("/webhooks/{webhook_id}/edit")
def webhook_edit(
    request: Request,
    db: Db,
    user: PageUser,
    webhook_id: str,
    url: Text = "",
    events: Events = None,
) -> Response:
    """Change where the endpoint posts and which events it gets; its secret stays."""
    user.principal.require("manage")
    settings = settings_of(request)
    chosen = events or []
    errors = _check_fields(url, chosen, allow_private=settings.webhook_allow_private)
    hook = _change(
        user,
        errors,
        lambda: webhooks.update_webhook(
            db=db,
            org=user.principal.org,
            webhook_id=webhook_id,
            url=url,
            events=chosen,
            allow_private=settings.webhook_allow_private,
        ),
    )
    if hook is not None:
        kinds = f"{len(hook.events)} event type{'' if len(hook.events) == 1 else 's'}"
        return done(request, hook_url(hook.id), f"Saved: {hook.url} gets {kinds}.")
    return _detail(
        request, db, user, webhook_id, errors=errors, url=url, events=chosen, status_code=422
    )


@router.post("/webhooks/{webhook_id}/test")
def webhook_test(request: Request, db: Db, user: PageUser, webhook_id: str) -> Response:
    """Post a signed `webhook.test` event now; the page then lists its delivery."""
    user.principal.require("manage")
    settings = settings_of(request)
    with as_user(user):
        delivery = webhooks.send_test(
            db=db,
            org=user.principal.org,
            webhook_id=webhook_id,
            allow_private=settings.webhook_allow_private,
            timeout=settings.webhook_timeout,
            ca_file=settings.tls_ca_file,
        )
    if delivery.status == "delivered":
        message = f"The test event was delivered (HTTP {delivery.last_status_code})."
    else:
        why = (
            f"HTTP {delivery.last_status_code}"
            if delivery.last_status_code is not None
            else (delivery.last_error or "no answer")
        )
        message = f"The test event was not delivered: {why}. See its delivery below."
    return done(request, hook_url(delivery.webhook_id), message)


@router.post("/webhooks/{webhook_id}/enable")
def webhook_enable(request: Request, db: Db, user: PageUser, webhook_id: str) -> Response:
    return _set_enabled(request, db, user, webhook_id, enabled=True)


@router.post("/webhooks/{webhook_id}/disable")
def webhook_disable(request: Request, db: Db, user: PageUser, webhook_id: str) -> Response:
    return _set_enabled(request, db, user, webhook_id, enabled=False)


def _set_enabled(
    request: Request, db: Db, user: SignedIn, webhook_id: str, *, enabled: bool
) -> Response:
    user.principal.require("manage")
    settings = settings_of(request)
    try:
        with as_user(user):
            hook = webhooks.update_webhook(
                db=db,
                org=user.principal.org,
                webhook_id=webhook_id,
                enabled=enabled,
                allow_private=settings.webhook_allow_private,
            )
    except NotFound:
        raise
    except InvalidInput as exc:
        return _refused(request, db, user, webhook_id, exc)
    if hook.enabled:
        message = "The endpoint is enabled: new events are sent to it again."
    else:
        message = "The endpoint is disabled: events for it are kept, not sent."
    return done(request, hook_url(hook.id), message)


@router.post("/webhooks/{webhook_id}/rotate-secret")
def webhook_rotate(request: Request, db: Db, user: PageUser, webhook_id: str) -> Response:
    """A new secret, shown in this answer only; the previous one signs too for a while."""
    user.principal.require("manage")
    with as_user(user):
        rotated = webhooks.rotate_secret(db=db, org=user.principal.org, webhook_id=webhook_id)
    return _detail(request, db, user, rotated.id, rotated=rotated)


@router.get("/webhooks/{webhook_id}/rotate-secret")
def webhook_rotated(webhook_id: str) -> Response:
    """The address a rotation leaves in the browser: reloading it shows the endpoint (the
    new secret is not shown again)."""
    return RedirectResponse(hook_url(webhook_id), status_code=303)


@router.post("/webhooks/{webhook_id}/delete")
def webhook_remove(request: Request, db: Db, user: PageUser, webhook_id: str) -> Response:
    user.principal.require("manage")
    with as_user(user):
        removed = webhooks.remove_webhook(db=db, org=user.principal.org, webhook_id=webhook_id)
    return done(request, "/webhooks", f"The endpoint {removed.url} was removed.")


@router.post("/webhooks/{webhook_id}/deliveries/{delivery_id}/retry")
def delivery_retry(
    request: Request, db: Db, user: PageUser, webhook_id: str, delivery_id: int
) -> Response:
    """Make a delivery due again now; the serving process sends it."""
    user.principal.require("manage")
    try:
        with as_user(user):
            delivery = webhooks.retry_delivery(
                db=db, org=user.principal.org, webhook_id=webhook_id, delivery_id=delivery_id
            )
    except NotFound:
        raise
    except InvalidInput as exc:
        return _refused(request, db, user, webhook_id, exc)
    return done(
        request,
        hook_url(delivery.webhook_id),
        f"Delivery {delivery.id} is due again: smtpy sends it within moments.",
    )
