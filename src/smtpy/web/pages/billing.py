"""Billing: the organization's plan and its price, usage against each limit, the plans to
choose (Stripe Checkout), "Manage billing" (the Customer Portal), a failed payment's
grace period, and the page without billing (no Stripe key: plan and usage only).

Everything comes from `smtpy.billing` (the same core as GET /api/v1/billing); the two
posts call `stripe.checkout` / `stripe.portal` and send the browser to the URL Stripe
gave (303). Only owners see the buttons; the core refuses anyone else anyway.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Form, Request
from fastapi.responses import RedirectResponse, Response

from smtpy.accounts.actor import acting
from smtpy.accounts.roles import allows
from smtpy.api.deps import Db, SettingsDep
from smtpy.api.middleware import CSP
from smtpy.billing import plans, stripe
from smtpy.config import Settings
from smtpy.errors import Forbidden, SmtpyError
from smtpy.web.routing import page_router
from smtpy.web.session import PageUser, SignedIn
from smtpy.web.templating import FormErrors, render

router = page_router()

# How each limit reads next to its bar: "3 of 10 domains".
NOUNS = {
    "domains": "domains",
    "aliases": "aliases",
    "destinations": "destination addresses",
    "webhooks": "webhooks",
    "messages_per_month": "messages this month",
    "max_message_size": "bytes per message",
}
LABELS = {
    "domains": "Domains",
    "aliases": "Aliases",
    "destinations": "Destination addresses",
    "webhooks": "Webhooks",
    "messages_per_month": "Messages this month",
    "max_message_size": "Largest message",
}
STRIPE_PAGES = ("https://checkout.stripe.com", "https://billing.stripe.com")
LIVE = ("active", "trialing", "past_due")  # a subscription the Portal changes (no Checkout)


def _when(value: str | None) -> str:
    """An RFC 3339 time of the core as `2026-12-03 11:30 UTC`."""
    if not value:
        return ""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).strftime("%Y-%m-%d %H:%M UTC")


def _csp(settings: Settings) -> str:
    """The page's policy: its forms may end on Stripe's pages (the 303 after a post)."""
    targets = list(STRIPE_PAGES)
    if settings.stripe_api_base:
        parts = urlsplit(settings.stripe_api_base)
        targets.append(f"{parts.scheme}://{parts.netloc}")
    return CSP.replace("form-action 'self'", "form-action 'self' " + " ".join(targets))


def _page(
    request: Request,
    db: Db,
    settings: Settings,
    user: SignedIn,
    errors: FormErrors | None = None,
    status_code: int = 200,
) -> Response:
    found = plans.overview(db=db, org=user.principal.org, settings=settings)
    catalog = plans.Catalog.of(settings)
    offered = plans.list_plans(catalog)
    default = next((p for p in offered if p.default), None)
    sub = found.subscription
    live = sub is not None and sub.status in LIVE
    rows = []
    for kind, limit in found.limits.items():
        used = found.usage.get(kind)
        if kind == "max_message_size":
            text = "no limit" if limit is None else f"{limit:,} bytes"
        elif used is None:
            text = "no limit" if limit is None else f"at most {limit:,} {NOUNS[kind]}"
        elif limit is None:
            text = f"{used:,} {NOUNS[kind]} (no limit)"
        else:
            text = f"{used:,} of {limit:,} {NOUNS[kind]}"
        rows.append(
            {
                "kind": kind,
                "label": LABELS.get(kind, kind),
                "used": used,
                "limit": limit,
                "text": text,
                "full": used is not None and limit is not None and used >= limit,
            }
        )
    response = render(
        request,
        "billing/index.html",
        {
            "found": found,
            "rows": rows,
            "offered": [p for p in offered if p.stripe_price and p.id != found.plan.id],
            "default": default,
            "sub": sub,
            "live": live,
            "grace_ends": _when(sub.grace_ends) if sub else "",
            "period_end": _when(sub.current_period_end) if sub else "",
            "labels": LABELS,
            "may_buy": allows(user.principal.role, "billing"),
            "checkout": request.query_params.get("checkout"),
            "errors": errors or FormErrors(),
        },
        user=user,
        status_code=status_code,
    )
    response.headers["Content-Security-Policy"] = _csp(settings)
    return response


def _status(exc: SmtpyError) -> int:
    return 403 if isinstance(exc, Forbidden) else 409


@router.get("/billing")
def billing(request: Request, db: Db, settings: SettingsDep, user: PageUser) -> Response:
    return _page(request, db, settings, user)


@router.post("/billing/checkout")
def checkout(
    request: Request,
    db: Db,
    settings: SettingsDep,
    user: PageUser,
    plan: Annotated[str, Form(max_length=40)] = "",
) -> Response:
    try:
        user.principal.require("billing")
        with acting(user.principal.actor):
            url = stripe.checkout(db=db, org=user.principal.org, plan=plan, settings=settings)
    except SmtpyError as exc:
        return _page(request, db, settings, user, FormErrors().error(exc), _status(exc))
    return RedirectResponse(url, status_code=303)


@router.post("/billing/portal")
def portal(request: Request, db: Db, settings: SettingsDep, user: PageUser) -> Response:
    try:
        user.principal.require("billing")
        with acting(user.principal.actor):
            url = stripe.portal(db=db, org=user.principal.org, settings=settings)
    except SmtpyError as exc:
        return _page(request, db, settings, user, FormErrors().error(exc), _status(exc))
    return RedirectResponse(url, status_code=303)
