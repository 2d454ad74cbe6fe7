"""Webhook endpoints of an organization: add, list, change, remove, test, rotate, deliveries.

Every rule about webhooks lives here; the CLI, the API and the dashboard call
these functions. An endpoint gets its own `whsec_` secret, shown when it is
made and when it is rotated, never in lists. A rotation keeps the previous
secret signing too for `ROTATION_OVERLAP` seconds, so receivers can switch
without losing an event.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from smtpy.accounts.audit import record
from smtpy.billing import plans as billing
from smtpy.billing.plans import Catalog
from smtpy.errors import Conflict, InvalidInput, NotFound
from smtpy.events import outbox
from smtpy.events.deliveries import PRUNE_BATCH, DeliveryStatus, load_leased
from smtpy.events.deliveries import delete as delete_deliveries
from smtpy.events.deliveries import record as record_answer
from smtpy.events.sender import Target, forbidden, parse_url
from smtpy.events.signing import new_secret
from smtpy.events.types import EVENT_TYPES, TEST_TYPE, TestData, body_of, make_event
from smtpy.store.db import Database, in_list
from smtpy.store.pages import Page, check_limit, keyset, page_of

ROTATION_OVERLAP = 24 * 3600.0  # seconds the previous secret goes on signing
MAX_WEBHOOKS = 50  # endpoints per organization, whatever the plan
TEST_OWNER = "test"  # the lease of a test event, sent by the caller, not by a serving process


class WebhookPublic(BaseModel):
    model_config = ConfigDict(frozen=True, defer_build=True)

    id: str
    organization_id: int
    url: str
    events: list[str]
    enabled: bool
    disabled_reason: str | None
    failing_since: float | None
    previous_secret_until: float | None  # during a rotation: when the old secret stops signing
    created_at: float
    updated_at: float


class WebhookCreated(WebhookPublic):
    secret: str  # whsec_…: in this answer, and when rotated


class AttemptPublic(BaseModel):
    model_config = ConfigDict(frozen=True, defer_build=True)

    at: float
    status_code: int | None
    duration_ms: int
    response_body: str | None
    error: str | None


class DeliveryPublic(BaseModel):
    model_config = ConfigDict(frozen=True, defer_build=True)

    id: int
    webhook_id: str
    event_id: str
    type: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: float | None  # while pending
    last_status_code: int | None
    last_error: str | None
    created_at: float
    updated_at: float
    tries: list[AttemptPublic]  # every attempt, oldest first


_SELECT = (
    "SELECT id, organization_id, url, events, enabled, disabled_reason, failing_since,"
    " previous_secret_until, created_at, updated_at FROM webhooks"
)


def _public(row: dict[str, Any]) -> WebhookPublic:
    return WebhookPublic.model_validate(
        {**row, "events": json.loads(row["events"]), "enabled": bool(row["enabled"])}
    )


def check_events(events: Iterable[str] | None) -> list[str]:
    """The event types asked for, checked; None or `*` means every type."""
    if events is None:
        return list(EVENT_TYPES)
    wanted = [e.strip() for e in events if e.strip()]
    if "*" in wanted:
        return list(EVENT_TYPES)
    if not wanted:
        raise InvalidInput("a webhook needs at least one event type (or * for all)")
    unknown = [e for e in wanted if e not in EVENT_TYPES]
    if unknown:
        raise InvalidInput(
            f"unknown event type {unknown[0]!r}; the types are: {', '.join(EVENT_TYPES)}"
        )
    return [e for e in EVENT_TYPES if e in wanted]


def check_url(url: str, *, allow_private: bool) -> Target:
    """A URL a webhook may use: its form, and where its name resolves now.

    The daemon checks the address again at every delivery (and connects to
    the one it checked); this early look only spares users a URL that cannot
    work. A name that does not resolve yet is accepted.
    """
    target = parse_url(url, allow_private=allow_private)
    if allow_private:
        return target
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except OSError:
        return target
    for info in infos:
        address = str(info[4][0])
        why = forbidden(address)
        if why is not None:
            raise InvalidInput(
                f"{target.host} resolves to {why} ({address}); a webhook must reach a public"
                " address (SMTPY_WEBHOOK_ALLOW_PRIVATE=true allows it for tests and intranets)"
            )
    return target


def check_plan_limit(*, db: Database, org: int, catalog: Catalog | None) -> None:
    """Refuse another endpoint beyond the plan's `webhooks` limit (PlanLimit), and in any
    case beyond `MAX_WEBHOOKS`."""
    billing.hold_organization(db, org)
    count = int(
        db.scalar("SELECT count(*) FROM webhooks WHERE organization_id = :org", {"org": org}) or 0
    )
    billing.check_limit(db, org, "webhooks", catalog=catalog, used=count)
    if count >= MAX_WEBHOOKS:
        raise Conflict(f"an organization has at most {MAX_WEBHOOKS} webhooks: remove one first")


def create_webhook(
    *,
    db: Database,
    org: int,
    url: str,
    events: Sequence[str] | None = None,
    allow_private: bool = False,
    catalog: Catalog | None = None,
) -> WebhookCreated:
    """A new endpoint of `org` for `events` (None: all); its secret is in the answer.
    `catalog`: the configured plans (the shells pass `Catalog.of(settings)`)."""
    target = check_url(url, allow_private=allow_private)
    wanted = check_events(events)
    now = time.time()
    hook_id = "wh_" + secrets.token_hex(8)
    secret = new_secret()
    with db.transaction():
        check_plan_limit(db=db, org=org, catalog=catalog)
        db.execute(
            "INSERT INTO webhooks (id, organization_id, url, events, secret, enabled,"
            " created_at, updated_at) VALUES (:id, :org, :url, :events, :secret, :yes, :now, :now)",
            {
                "id": hook_id,
                "org": org,
                "url": target.url,
                "events": json.dumps(wanted),
                "secret": secret,
                "yes": True,
                "now": now,
            },
        )
        record(
            db,
            org=org,
            action="webhook.create",
            target=f"webhook {target.url} ({hook_id})",
            detail={"events": wanted},
        )
        hook = get_webhook(db=db, org=org, webhook_id=hook_id)
    outbox.invalidate(db.url)
    return WebhookCreated(**hook.model_dump(), secret=secret)


def get_webhook(*, db: Database, org: int, webhook_id: str) -> WebhookPublic:
    row = db.one(
        _SELECT + " WHERE id = :id AND organization_id = :org",
        {"id": webhook_id.strip(), "org": org},
    )
    if row is None:
        raise NotFound(
            f"there is no webhook {webhook_id.strip()!r} in this organization;"
            " see `smtpy webhook list`"
        )
    return _public(row)


def organization_of_webhook(*, db: Database, webhook_id: str) -> int:
    """The organization a webhook belongs to (the CLI's operator acts in any)."""
    org = db.scalar(
        "SELECT organization_id FROM webhooks WHERE id = :id", {"id": webhook_id.strip()}
    )
    if org is None:
        raise NotFound(f"there is no webhook {webhook_id.strip()!r}; see `smtpy webhook list`")
    return int(org)


def list_webhooks(*, db: Database, org: int) -> list[WebhookPublic]:
    """The organization's endpoints, newest first."""
    rows = db.all(
        _SELECT + " WHERE organization_id = :org ORDER BY created_at DESC, id DESC", {"org": org}
    )
    return [_public(r) for r in rows]


def all_webhooks(*, db: Database) -> list[WebhookPublic]:
    """Every organization's endpoints, newest first (the operator's view at the shell)."""
    return [_public(r) for r in db.all(_SELECT + " ORDER BY created_at DESC, id DESC")]


def page_webhooks(
    *, db: Database, org: int, limit: int | None = None, cursor: str | None = None
) -> Page[WebhookPublic]:
    limit = check_limit(limit)
    after, params = keyset("created_at", "id", cursor)
    rows = db.all(
        _SELECT
        + " WHERE organization_id = :org"
        + (f" AND {after}" if after else "")
        + " ORDER BY created_at DESC, id DESC LIMIT :lim",
        {**params, "org": org, "lim": limit + 1},
    )
    return page_of([_public(r) for r in rows], limit, key=lambda w: (w.created_at, w.id))


def update_webhook(
    *,
    db: Database,
    org: int,
    webhook_id: str,
    url: str | None = None,
    events: Sequence[str] | None = None,
    enabled: bool | None = None,
    allow_private: bool = False,
) -> WebhookPublic:
    """Change an endpoint's URL, events or state; enabling it clears why it was disabled."""
    changes: dict[str, Any] = {}
    if url is not None:
        changes["url"] = check_url(url, allow_private=allow_private).url
    if events is not None:
        changes["events"] = json.dumps(check_events(events))
    if enabled is not None:
        changes["enabled"] = enabled
        if enabled:
            changes["disabled_reason"] = None
            changes["failing_since"] = None
        else:
            changes["disabled_reason"] = "disabled by an administrator"
    with db.transaction():
        before = get_webhook(db=db, org=org, webhook_id=webhook_id)
        if changes:
            sets = ", ".join(f"{column} = :{column}" for column in changes)
            db.execute(
                f"UPDATE webhooks SET {sets}, updated_at = :now WHERE id = :id",  # noqa: S608 - fixed names
                {**changes, "now": time.time(), "id": before.id},
            )
            detail = {k: v for k, v in changes.items() if k in ("url", "enabled")}
            if "events" in changes:
                detail["events"] = json.loads(changes["events"])
            record(
                db,
                org=org,
                action="webhook.update",
                target=f"webhook {before.url} ({before.id})",
                detail=detail,
            )
        after = get_webhook(db=db, org=org, webhook_id=before.id)
    outbox.invalidate(db.url)
    return after


def remove_webhook(*, db: Database, org: int, webhook_id: str) -> WebhookPublic:
    """Remove an endpoint with its deliveries; events nobody else wants go too."""
    with db.transaction():
        hook = get_webhook(db=db, org=org, webhook_id=webhook_id)
        batch = {"id": hook.id, "batch": PRUNE_BATCH}
        while ids := [
            int(r["id"])
            for r in db.all(
                "SELECT id FROM webhook_deliveries WHERE webhook_id = :id LIMIT :batch", batch
            )
        ]:
            delete_deliveries(db, ids)  # and the events no other endpoint still has
        db.execute("DELETE FROM webhooks WHERE id = :id", {"id": hook.id})
        record(db, org=org, action="webhook.remove", target=f"webhook {hook.url} ({hook.id})")
    outbox.invalidate(db.url)
    return hook


def rotate_secret(
    *, db: Database, org: int, webhook_id: str, overlap: float = ROTATION_OVERLAP
) -> WebhookCreated:
    """A new secret; the previous one goes on signing too for `overlap` seconds."""
    secret = new_secret()
    now = time.time()
    with db.transaction():
        hook = get_webhook(db=db, org=org, webhook_id=webhook_id)
        db.execute(
            "UPDATE webhooks SET previous_secret = secret, previous_secret_until = :until,"
            " secret = :secret, updated_at = :now WHERE id = :id",
            {"until": now + overlap, "secret": secret, "now": now, "id": hook.id},
        )
        record(
            db,
            org=org,
            action="webhook.rotate_secret",
            target=f"webhook {hook.url} ({hook.id})",
            detail={"overlap_seconds": overlap},
        )
        hook = get_webhook(db=db, org=org, webhook_id=hook.id)
    return WebhookCreated(**hook.model_dump(), secret=secret)


# -- deliveries ------------------------------------------------------------------------

_DELIVERIES = (
    "SELECT d.id, d.webhook_id, d.event_id, e.type, d.status, d.attempts, d.next_attempt_at,"
    " d.last_status_code, d.last_error, d.created_at, d.updated_at"
    " FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event_id"
)


def _deliveries(db: Database, rows: list[dict[str, Any]]) -> list[DeliveryPublic]:
    tries: dict[int, list[AttemptPublic]] = {int(r["id"]): [] for r in rows}
    if rows:
        names, params = in_list("i", [int(r["id"]) for r in rows])
        for a in db.all(
            "SELECT delivery_id, at, status_code, duration_ms, response_body, error"  # noqa: S608
            " FROM webhook_attempts WHERE delivery_id IN (" + names + ") ORDER BY at, id",
            params,
        ):
            tries[int(a.pop("delivery_id"))].append(AttemptPublic.model_validate(a))
    return [
        DeliveryPublic.model_validate(
            {
                **r,
                "next_attempt_at": r["next_attempt_at"] if r["status"] == "pending" else None,
                "tries": tries[int(r["id"])],
            }
        )
        for r in rows
    ]


def page_deliveries(
    *,
    db: Database,
    org: int,
    webhook_id: str,
    limit: int | None = None,
    cursor: str | None = None,
) -> Page[DeliveryPublic]:
    """An endpoint's deliveries, newest first, each with every attempt."""
    limit = check_limit(limit)
    hook = get_webhook(db=db, org=org, webhook_id=webhook_id)
    after, params = keyset("d.created_at", "d.id", cursor)
    rows = db.all(
        _DELIVERIES
        + " WHERE d.webhook_id = :hook"
        + (f" AND {after}" if after else "")
        + " ORDER BY d.created_at DESC, d.id DESC LIMIT :lim",
        {**params, "hook": hook.id, "lim": limit + 1},
    )
    return page_of(_deliveries(db, rows), limit, key=lambda d: (d.created_at, d.id))


def get_delivery(*, db: Database, org: int, webhook_id: str, delivery_id: int) -> DeliveryPublic:
    hook = get_webhook(db=db, org=org, webhook_id=webhook_id)
    rows = db.all(
        _DELIVERIES + " WHERE d.webhook_id = :hook AND d.id = :id",
        {"hook": hook.id, "id": delivery_id},
    )
    if not rows:
        raise NotFound(f"webhook {hook.id} has no delivery {delivery_id}")
    return _deliveries(db, rows)[0]


def retry_delivery(*, db: Database, org: int, webhook_id: str, delivery_id: int) -> DeliveryPublic:
    """Send a delivery again now (whatever its state); the endpoint must be enabled."""
    with db.transaction():
        hook = get_webhook(db=db, org=org, webhook_id=webhook_id)
        if not hook.enabled:
            raise Conflict(
                f"webhook {hook.id} is disabled ({hook.disabled_reason}); enable it first"
            )
        get_delivery(db=db, org=org, webhook_id=hook.id, delivery_id=delivery_id)
        db.execute(
            "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = :now,"
            " lease_owner = NULL, updated_at = :now WHERE id = :id AND webhook_id = :hook"
            " AND (status <> 'pending' OR lease_owner IS NULL)",
            {"now": time.time(), "id": delivery_id, "hook": hook.id},
        )
        record(
            db,
            org=org,
            action="webhook.retry",
            target=f"webhook {hook.url} ({hook.id})",
            detail={"delivery": delivery_id},
        )
        return get_delivery(db=db, org=org, webhook_id=hook.id, delivery_id=delivery_id)


def send_test(
    *,
    db: Database,
    org: int,
    webhook_id: str,
    allow_private: bool = False,
    timeout: float = 10.0,
    ca_file: Path | None = None,
) -> DeliveryPublic:
    """Post a signed `webhook.test` event to the endpoint now and return the delivery.

    It is tried once, listed with the endpoint's deliveries, and can be retried.
    """
    from smtpy.events.sender import Sender, send_delivery

    now = time.time()
    with db.transaction():
        hook = get_webhook(db=db, org=org, webhook_id=webhook_id)
        event_id = outbox.new_event_id(now)
        data = TestData(webhook_id=hook.id, message="a test event sent by smtpy")
        outbox.insert(
            db,
            [
                {
                    "id": event_id,
                    "org": org,
                    "type": TEST_TYPE,
                    "at": now,
                    "body": body_of(make_event(TEST_TYPE, data, at=now)),
                }
            ],
            [{"event": event_id, "hook": hook.id, "now": now}],
            lease=outbox.Lease(TEST_OWNER, now + 3600),  # held here: no serving process sends it
        )
        record(db, org=org, action="webhook.test", target=f"webhook {hook.url} ({hook.id})")
        claimed = load_leased(db, [event_id], owner=TEST_OWNER)[0]

    async def post() -> Any:
        sender = Sender(allow_private=allow_private, timeout=timeout, ca_file=ca_file)
        try:
            return await send_delivery(sender, claimed, now=time.time())
        finally:
            await sender.close()

    answer = asyncio.run(post())
    record_answer(db, claimed, answer, node=None, schedule=(0,))
    return get_delivery(db=db, org=org, webhook_id=hook.id, delivery_id=claimed.id)


# -- when the daemon disables an endpoint ---------------------------------------------------


def owner_addresses(*, db: Database, org: int) -> list[str]:
    return [
        str(r["email"])
        for r in db.all(
            "SELECT u.email FROM memberships m JOIN users u ON u.id = m.user_id"
            " WHERE m.organization_id = :org AND m.role = 'owner' ORDER BY u.email",
            {"org": org},
        )
    ]


def notify_disabled(db: Database, *, settings: Any, webhook_id: str, reason: str) -> list[str]:
    """Mail the organization's owners that an endpoint was disabled (in the caller's
    transaction, through smtpy's own queue); the queue ids."""
    from smtpy.accounts.mailer import queue_mail

    row = db.one("SELECT organization_id, url FROM webhooks WHERE id = :id", {"id": webhook_id})
    if row is None:
        return []
    body = (
        "Hello,\n\n"
        f"smtpy disabled the webhook {row['url']} ({webhook_id}):\n{reason}.\n\n"
        "Events for it are kept but not sent. Once the endpoint works again, enable it\n"
        f"(`smtpy webhook enable {webhook_id}`, or PATCH /api/v1/webhooks/{webhook_id}\n"
        'with {"enabled": true}) and retry the deliveries that failed.\n'
    )
    return [
        queue_mail(db=db, settings=settings, to=to, subject="A webhook was disabled", body=body)
        for to in owner_addresses(db=db, org=int(row["organization_id"]))
    ]
