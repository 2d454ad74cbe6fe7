"""/api/v1 routes: the organization's plan, limits and usage; Stripe Checkout, the
Customer Portal and Stripe's webhook (API.md "Plans"). Every rule is in
`smtpy.billing`; with no Stripe key, checkout and portal answer 409
`billing_disabled` and the webhook 409 too.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request
from pydantic import BaseModel, Field

from smtpy.accounts.actor import acting
from smtpy.api.deps import Auth, Db, SettingsDep
from smtpy.billing import plans, stripe

router = APIRouter(tags=["billing"])


class PlanOut(BaseModel):
    id: str
    name: str
    price: str | None
    limits: dict[str, int | None]


class PlanDetail(PlanOut):
    default: bool
    source: str  # subscription | grace | operator | default | none


class SubscriptionOut(BaseModel):
    id: str
    status: str  # Stripe's: active, trialing, past_due, canceled, incomplete, …
    plan: str | None
    current_period_end: str | None
    cancel_at_period_end: bool
    past_due_since: str | None
    grace_ends: str | None


class BillingOut(BaseModel):
    plan: PlanDetail
    limits: dict[str, int | None]  # the plan's, with the operator's overrides; null: none
    usage: dict[str, int | None]
    subscription: SubscriptionOut | None
    billing: bool  # checkout and portal are available


class PlanList(BaseModel):
    data: list[PlanOut]


class CheckoutIn(BaseModel):
    plan: str = Field(min_length=1, max_length=40, description="A plan id of GET /billing/plans.")


class UrlOut(BaseModel):
    url: str


class WebhookOut(BaseModel):
    received: bool
    result: str  # handled | ignored | duplicate


@router.get("/billing")
def get_billing(db: Db, principal: Auth, settings: SettingsDep) -> BillingOut:
    """The acting organization's plan, limits, usage and subscription."""
    principal.require("read")
    found = plans.overview(db=db, org=principal.org, settings=settings)
    return BillingOut(
        plan=PlanDetail(
            id=found.plan.id,
            name=found.plan.name,
            price=found.plan.price,
            limits=found.plan.limits,
            default=found.plan.default,
            source=found.source,
        ),
        limits=found.limits,
        usage=found.usage,
        subscription=None
        if found.subscription is None
        else SubscriptionOut(**found.subscription.model_dump()),
        billing=found.billing,
    )


@router.get("/billing/plans")
def list_plans(principal: Auth, settings: SettingsDep) -> PlanList:
    """The plans of this server, as configured."""
    principal.require("read")
    return PlanList(
        data=[
            PlanOut(id=p.id, name=p.name, price=p.price, limits=p.limits)
            for p in plans.list_plans(plans.Catalog.of(settings))
        ]
    )


@router.post("/billing/checkout")
def checkout(body: CheckoutIn, db: Db, principal: Auth, settings: SettingsDep) -> UrlOut:
    """A Stripe Checkout Session for `plan` (owners): open `url` to pay."""
    principal.require("billing")
    with acting(principal.actor):
        url = stripe.checkout(db=db, org=principal.org, plan=body.plan, settings=settings)
    return UrlOut(url=url)


@router.post("/billing/portal")
def portal(db: Db, principal: Auth, settings: SettingsDep) -> UrlOut:
    """A Stripe Customer Portal session (owners): change plan, payment method, cancel."""
    principal.require("billing")
    return UrlOut(url=stripe.portal(db=db, org=principal.org, settings=settings))


async def _raw_body(request: Request) -> bytes:
    return await request.body()


@router.post("/billing/stripe/webhook")
def stripe_webhook(
    db: Db,
    settings: SettingsDep,
    payload: Annotated[bytes, Depends(_raw_body)],
    stripe_signature: Annotated[str | None, Header()] = None,
) -> WebhookOut:
    """Stripe's events (no credentials: the Stripe-Signature header is checked, 5 minutes
    of tolerance); 400 for a bad or old signature."""
    result = stripe.handle_webhook(
        db=db, settings=settings, payload=payload, signature=stripe_signature
    )
    return WebhookOut(received=True, result=result)
