"""Stripe: Checkout and Customer Portal sessions, the signed webhook, and `sync`.

Through the official library's `StripeClient`, whose API base is
SMTPY_STRIPE_API_BASE when set. Every change smtpy makes at Stripe carries an
idempotency key, so a retried request never makes a second customer or session.

Stripe's events are only a signal. Whatever an event says, smtpy fetches the
subscription again and stores what Stripe answers now; events may come late,
twice or out of order and the result is the same. Each event id is handled once
(table `stripe_events`). Limits follow the stored status (`smtpy.billing.plans`):
nothing is lifted before Stripe reads `active`.
"""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING, Any

from smtpy import log
from smtpy.accounts import audit
from smtpy.accounts.mailer import base_url
from smtpy.billing.plans import LIVE, Catalog
from smtpy.errors import BadSignature, BillingDisabled, Conflict, InvalidInput
from smtpy.events import outbox
from smtpy.events.types import SubscriptionData
from smtpy.store.db import Database

if TYPE_CHECKING:
    from stripe import StripeClient

    from smtpy.config import Settings

logger = log.get(__name__)

TOLERANCE = 300  # seconds a signed webhook stays acceptable
# The events after which smtpy fetches the subscription again; others are only recorded.
HANDLED = frozenset(
    {
        "checkout.session.completed",
        "customer.subscription.created",
        "customer.subscription.updated",
        "customer.subscription.deleted",
        "invoice.paid",
        "invoice.payment_failed",
    }
)


def enabled(settings: Settings) -> bool:
    return settings.stripe_secret_key is not None


def client(settings: Settings) -> StripeClient:
    """The Stripe client of these settings; BillingDisabled without a secret key."""
    if settings.stripe_secret_key is None:
        raise BillingDisabled(
            "billing is off on this server: the operator has not set SMTPY_STRIPE_SECRET_KEY"
        )
    import stripe  # only where billing runs

    base = {"api": settings.stripe_api_base} if settings.stripe_api_base else None
    return stripe.StripeClient(
        settings.stripe_secret_key.get_secret_value(),
        base_addresses=base,  # type: ignore[arg-type]
        max_network_retries=2,  # safe: every POST carries an idempotency key
    )


def _key(*parts: object) -> str:
    """An idempotency key made of what identifies the request."""
    text = ":".join(str(p) for p in parts)
    return "smtpy-" + hashlib.sha256(text.encode()).hexdigest()[:40]


def _plain(obj: Any) -> dict[str, Any]:
    return obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)


# -- the customer, Checkout and the Portal ---------------------------------------


def customer_of(*, db: Database, org: int, settings: Settings, stripe: StripeClient) -> str:
    """The organization's Stripe customer, created once and reused."""
    row = db.one("SELECT name, stripe_customer_id FROM organizations WHERE id = :org", {"org": org})
    if row is None:
        raise InvalidInput(f"no organization with id {org}")
    if row["stripe_customer_id"]:
        return str(row["stripe_customer_id"])
    customer = stripe.v1.customers.create(
        {"name": str(row["name"]), "metadata": {"smtpy_organization": str(org)}},
        {"idempotency_key": _key("customer", settings.hostname, org)},
    )
    with db.transaction():
        db.execute(
            "UPDATE organizations SET stripe_customer_id = :c"
            " WHERE id = :org AND stripe_customer_id IS NULL",
            {"c": customer.id, "org": org},
        )
        stored = db.scalar(
            "SELECT stripe_customer_id FROM organizations WHERE id = :org", {"org": org}
        )
    return str(stored)


def _price_id(stripe: StripeClient, lookup_key: str) -> str:
    prices = stripe.v1.prices.list({"lookup_keys": [lookup_key], "active": True, "limit": 1})
    if not prices.data:
        raise Conflict(
            f"Stripe has no active price with the lookup key {lookup_key!r}: the operator "
            "must create it (or fix stripe_price in the plan)"
        )
    return str(prices.data[0].id)


def checkout(*, db: Database, org: int, plan: str, settings: Settings) -> str:
    """A Checkout Session subscribing the organization to `plan`: its URL."""
    stripe = client(settings)
    catalog = Catalog.of(settings)
    chosen = catalog.get(plan)
    if chosen.stripe_price is None:
        raise InvalidInput(f"the {chosen.name} plan is not sold through Stripe (no stripe_price)")
    live = db.one(
        "SELECT id, plan FROM subscriptions WHERE organization_id = :org AND status IN"
        " ('active', 'trialing', 'past_due')",
        {"org": org},
    )
    if live is not None:
        raise Conflict(
            "this organization already has a subscription: change its plan or cancel it "
            "through the billing portal (POST /api/v1/billing/portal)"
        )
    customer = customer_of(db=db, org=org, settings=settings, stripe=stripe)
    price = _price_id(stripe, chosen.stripe_price)
    base = base_url(settings)
    session = stripe.v1.checkout.sessions.create(
        {
            "mode": "subscription",
            "customer": customer,
            "client_reference_id": str(org),
            "line_items": [{"price": price, "quantity": 1}],
            "success_url": f"{base}/billing?checkout=success",
            "cancel_url": f"{base}/billing?checkout=cancel",
            "metadata": {"smtpy_organization": str(org), "smtpy_plan": plan},
            "subscription_data": {"metadata": {"smtpy_organization": str(org)}},
        },
        # The same request within ten minutes (a double click, a retry) gets the same session.
        {"idempotency_key": _key("checkout", customer, price, int(time.time() // 600))},
    )
    audit.record(db, org=org, action="billing.checkout", target=plan)
    return str(session.url)


def portal(*, db: Database, org: int, settings: Settings) -> str:
    """A Customer Portal session (change plan, payment method, cancel): its URL."""
    stripe = client(settings)
    customer = db.scalar(
        "SELECT stripe_customer_id FROM organizations WHERE id = :org", {"org": org}
    )
    if not customer:
        raise Conflict("this organization has no Stripe customer yet: choose a plan first")
    session = stripe.v1.billing_portal.sessions.create(
        {"customer": str(customer), "return_url": f"{base_url(settings)}/billing"},
        {"idempotency_key": _key("portal", customer, int(time.time() // 60))},
    )
    return str(session.url)


# -- what Stripe says ------------------------------------------------------------


def _period_end(sub: dict[str, Any]) -> float | None:
    end = sub.get("current_period_end")
    if end is None:  # newer API versions keep it on the items
        items = (sub.get("items") or {}).get("data") or []
        end = items[0].get("current_period_end") if items else None
    return None if end is None else float(end)


def _lookup_key(sub: dict[str, Any]) -> str | None:
    items = (sub.get("items") or {}).get("data") or []
    if not items:
        return None
    price = items[0].get("price") or {}
    key = price.get("lookup_key")
    return None if key is None else str(key)


def _organization_for(db: Database, sub: dict[str, Any], hint: int | None) -> int | None:
    """The organization of a subscription: by its customer, else by the hint (checkout's
    client_reference_id) or metadata, for an organization with no other customer."""
    customer = sub.get("customer")
    if isinstance(customer, dict):
        customer = customer.get("id")
    if customer:
        found = db.scalar(
            "SELECT id FROM organizations WHERE stripe_customer_id = :c", {"c": customer}
        )
        if found is not None:
            return int(found)
    candidates = [hint, (sub.get("metadata") or {}).get("smtpy_organization")]
    for candidate in candidates:
        if candidate is None or not str(candidate).isdigit():
            continue
        row = db.one(
            "SELECT id, stripe_customer_id FROM organizations WHERE id = :org",
            {"org": int(candidate)},
        )
        if row is not None and row["stripe_customer_id"] in (None, customer):
            if customer and row["stripe_customer_id"] is None:
                db.execute(
                    "UPDATE organizations SET stripe_customer_id = :c WHERE id = :org",
                    {"c": customer, "org": row["id"]},
                )
            return int(row["id"])
    return None


def store_subscription(
    db: Database,
    sub: dict[str, Any],
    *,
    catalog: Catalog,
    hint: int | None = None,
    now: float | None = None,
) -> int | None:
    """Store Stripe's current view of a subscription; the organization it belongs to."""
    now = time.time() if now is None else now
    with db.transaction():
        org = _organization_for(db, sub, hint)
        if org is None:
            logger.warning("stripe_subscription_unknown", subscription=sub.get("id"))
            return None
        status = str(sub.get("status") or "incomplete")
        lookup = _lookup_key(sub)
        plan = catalog.by_price(lookup)
        old = db.one(
            "SELECT status, plan, past_due_since FROM subscriptions WHERE id = :id",
            {"id": sub["id"]},
        )
        past_due_since = None
        if status == "past_due":
            past_due_since = old["past_due_since"] if old and old["past_due_since"] else now
        values = {
            "id": sub["id"],
            "org": org,
            "status": status,
            "plan": plan,
            "price": lookup,
            "end": _period_end(sub),
            "cancel": bool(sub.get("cancel_at_period_end")),
            "since": past_due_since,
            "now": now,
        }
        if old is None:
            db.execute(
                "INSERT INTO subscriptions (id, organization_id, status, plan, price,"
                " current_period_end, cancel_at_period_end, past_due_since, created_at,"
                " updated_at) VALUES (:id, :org, :status, :plan, :price, :end, :cancel,"
                " :since, :now, :now)",
                values,
            )
        else:
            db.execute(
                "UPDATE subscriptions SET organization_id = :org, status = :status, plan = :plan,"
                " price = :price, current_period_end = :end, cancel_at_period_end = :cancel,"
                " past_due_since = :since, updated_at = :now WHERE id = :id",
                values,
            )
        if old is None or (old["status"], old["plan"]) != (status, plan):
            subscription_changed(db, org=org, status=status, plan=plan)
    return org


def subscription_changed(db: Database, *, org: int, status: str, plan: str | None) -> None:
    """A subscription's new state: the audit log and the `subscription.updated` event."""
    outbox.emit(
        db,
        org=org,
        type_="subscription.updated",
        data=SubscriptionData(plan=plan or "", status=status),
    )
    audit.record(
        db,
        org=org,
        action="billing.subscription",
        target=plan,
        detail={"status": status, "lifts_limits": status in LIVE},
    )


def _subscription_of(event_type: str, obj: dict[str, Any]) -> tuple[str | None, int | None]:
    """The subscription an event is about, and the organization it names (checkout)."""
    if event_type == "checkout.session.completed":
        ref = obj.get("client_reference_id")
        org = int(ref) if ref is not None and str(ref).isdigit() else None
        sub = obj.get("subscription")
        return (sub.get("id") if isinstance(sub, dict) else sub), org
    if event_type.startswith("customer.subscription."):
        return obj.get("id"), None
    if event_type.startswith("invoice."):
        sub = obj.get("subscription")
        if sub is None:  # newer API versions
            details = (obj.get("parent") or {}).get("subscription_details") or {}
            sub = details.get("subscription")
        return (sub.get("id") if isinstance(sub, dict) else sub), None
    return None, None


def handle_webhook(
    *, db: Database, settings: Settings, payload: bytes, signature: str | None
) -> str:
    """Verify and handle one delivery of the webhook; what was done (for the log)."""
    if settings.stripe_webhook_secret is None:
        raise BillingDisabled(
            "billing is off on this server: the operator has not set SMTPY_STRIPE_WEBHOOK_SECRET"
        )
    stripe = client(settings)
    import stripe as stripe_lib

    try:
        event = stripe.construct_event(
            payload, signature, settings.stripe_webhook_secret.get_secret_value(), TOLERANCE
        )
    except stripe_lib.SignatureVerificationError:
        raise BadSignature(
            "the Stripe-Signature header does not match this body, or is older than 5 minutes"
        ) from None
    except ValueError:
        raise BadSignature("the body is not a Stripe event") from None
    data = _plain(event)
    event_id, event_type = str(data["id"]), str(data["type"])
    if db.scalar("SELECT 1 FROM stripe_events WHERE id = :id", {"id": event_id}):
        return "duplicate"
    catalog = Catalog.of(settings)
    sub_id, hint = (None, None)
    if event_type in HANDLED:
        sub_id, hint = _subscription_of(event_type, (data.get("data") or {}).get("object") or {})
    fetched = None
    if sub_id:
        fetched = _plain(stripe.v1.subscriptions.retrieve(str(sub_id)))  # never the event's copy
    with db.transaction():
        if db.scalar("SELECT 1 FROM stripe_events WHERE id = :id", {"id": event_id}):
            return "duplicate"  # another process took it meanwhile
        db.execute(
            "INSERT INTO stripe_events (id, type, received_at) VALUES (:id, :type, :now)",
            {"id": event_id, "type": event_type, "now": time.time()},
        )
        if fetched is not None:
            store_subscription(db, fetched, catalog=catalog, hint=hint)
    logger.info("stripe_event", id=event_id, type=event_type, subscription=sub_id)
    return "handled" if fetched is not None else "ignored"


def sync(*, db: Database, settings: Settings, org: int | None = None) -> int:
    """Fetch the subscriptions of one organization (or all with a Stripe customer) again:
    for a missed webhook. The number of subscriptions stored."""
    stripe = client(settings)
    catalog = Catalog.of(settings)
    where = "stripe_customer_id IS NOT NULL" + (" AND id = :org" if org is not None else "")
    rows = db.all(f"SELECT id, stripe_customer_id FROM organizations WHERE {where}", {"org": org})  # noqa: S608
    stored = 0
    for row in rows:
        listed = stripe.v1.subscriptions.list(
            {"customer": str(row["stripe_customer_id"]), "status": "all", "limit": 100}
        )
        for sub in listed.data:
            if store_subscription(db, _plain(sub), catalog=catalog, hint=int(row["id"])):
                stored += 1
    return stored
