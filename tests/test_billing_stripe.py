"""Stripe billing against the real `smtpy api` and a fake Stripe on loopback that the real
`stripe` library talks to: checkout, the signed webhook, plans that follow what Stripe
says (re-fetched, never from the event), replays, bad signatures, events out of order."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from apiserver import ApiServer, seed_org
from fake_stripe import SECRET_KEY, WEBHOOK_SECRET, FakeStripe, signature

PLANS = {
    "free": {"name": "Free", "default": True, "limits": {"domains": 1, "aliases": 5}},
    "pro": {
        "name": "Pro",
        "stripe_price": "smtpy_pro_monthly",
        "price": "9 EUR / month",
        "limits": {"domains": 3, "aliases": 100},
    },
    "max": {
        "name": "Max",
        "stripe_price": "smtpy_max_monthly",
        "price": "29 EUR / month",
        "limits": {"domains": 10},
    },
}
WEBHOOK = "/api/v1/billing/stripe/webhook"
PUBLIC_URL = "http://mail.example.test"  # http: the test client sends the cookie


class World:
    def __init__(self, api: ApiServer, fake: FakeStripe, store_url: str) -> None:
        self.api, self.fake, self.store_url = api, fake, store_url
        self.owner = seed_org(store_url, org="acme")
        self.org = self.owner["org"]
        self.keyed = api.as_key(self.owner["key"])
        self.session = api.browser()
        answer = self.session.post(
            "/api/v1/auth/login",
            json={"email": self.owner["email"], "password": self.owner["password"]},
        )
        assert answer.status_code == 200, answer.text
        self.session.headers["X-CSRF-Token"] = answer.json()["csrf_token"]

    def billing(self) -> dict[str, Any]:
        answer = self.keyed.get("/api/v1/billing")
        assert answer.status_code == 200, answer.text
        return answer.json()

    def plan(self) -> str:
        return str(self.billing()["plan"]["id"])

    def deliver(self, payload: str, header: str | None = None) -> httpx.Response:
        return self.api.client.post(
            WEBHOOK,
            content=payload,
            headers={
                "Content-Type": "application/json",
                "Stripe-Signature": header if header is not None else signature(payload),
            },
        )

    def checkout(self, plan: str = "pro") -> str:
        answer = self.session.post("/api/v1/billing/checkout", json={"plan": plan})
        assert answer.status_code == 200, answer.text
        url = str(answer.json()["url"])
        return url.rsplit("/", 1)[1]

    def subscribe(self, plan: str = "pro") -> dict[str, Any]:
        """Checkout, pay, and the webhook: an active subscription; Stripe's copy."""
        session = self.fake.complete_checkout(self.checkout(plan))
        assert (
            self.deliver(self.fake.event("checkout.session.completed", session)).status_code == 200
        )
        return self.fake.subscriptions[session["subscription"]]

    def events_handled(self) -> int:
        from smtpy.store.db import Database

        with Database(self.store_url) as db:
            return int(db.scalar("SELECT count(*) FROM stripe_events"))


@pytest.fixture
def world(cli_env: dict[str, str], store_url: str) -> Iterator[World]:
    with FakeStripe() as fake:
        settings = {
            "SMTPY_PLANS": json.dumps(PLANS),
            "SMTPY_STRIPE_SECRET_KEY": SECRET_KEY,
            "SMTPY_STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "SMTPY_STRIPE_API_BASE": fake.url,
            "SMTPY_PUBLIC_URL": PUBLIC_URL,
            "SMTPY_BILLING_GRACE_DAYS": "3",
        }
        cli_env.update(settings)
        with ApiServer(cli_env) as api:
            yield World(api, fake, store_url)


def _add_domain(world: World, name: str) -> httpx.Response:
    return world.keyed.post("/api/v1/domains", json={"name": name})


def test_full_upgrade_raises_the_limits_once_stripe_confirms_payment(world: World) -> None:
    assert world.plan() == "free"
    assert _add_domain(world, "one.test").status_code == 201
    refused = _add_domain(world, "two.test")
    assert refused.status_code == 402
    assert refused.headers["content-type"].startswith("application/problem+json")
    problem = refused.json()
    assert problem["code"] == "plan_limit"
    assert "Free plan allows 1" in problem["detail"] and "upgrade" in problem["detail"]

    plans = world.keyed.get("/api/v1/billing/plans").json()["data"]
    assert [p["id"] for p in plans] == ["free", "pro", "max"]
    assert plans[1] == {
        "id": "pro",
        "name": "Pro",
        "price": "9 EUR / month",
        "limits": {
            "domains": 3,
            "aliases": 100,
            "destinations": None,
            "webhooks": None,
            "messages_per_month": None,
            "max_message_size": None,
        },
    }

    session_id = world.checkout("pro")
    again = world.checkout("pro")  # a second click: the same customer, reused
    (customer,) = world.fake.customers
    assert len(world.fake.posts("/v1/customers")) == 1
    session = world.fake.sessions[session_id]
    assert session["customer"] == customer and world.fake.sessions[again]["customer"] == customer
    assert session["client_reference_id"] == str(world.org)
    assert session["price"] == "price_pro" and session["mode"] == "subscription"
    assert session["success_url"].startswith(f"{PUBLIC_URL}/billing")
    assert session["cancel_url"].startswith(f"{PUBLIC_URL}/billing")
    for request in world.fake.requests:
        if request["method"] == "POST":
            assert request["idempotency_key"], request

    # Checkout completed but the payment is not confirmed (incomplete): nothing lifted.
    completed = world.fake.complete_checkout(session_id, status="incomplete")
    answer = world.deliver(world.fake.event("checkout.session.completed", completed))
    assert answer.status_code == 200, answer.text
    assert world.plan() == "free"
    assert world.billing()["subscription"]["status"] == "incomplete"
    assert _add_domain(world, "two.test").status_code == 402

    # Stripe confirms: the invoice is paid and the subscription active.
    sub = world.fake.update_subscription(completed["subscription"], status="active")
    invoice = {"id": "in_1", "object": "invoice", "subscription": sub["id"], "customer": customer}
    assert world.deliver(world.fake.event("invoice.paid", invoice)).status_code == 200
    billing = world.billing()
    assert billing["plan"]["id"] == "pro" and billing["limits"]["domains"] == 3
    assert billing["subscription"]["status"] == "active"
    assert billing["usage"]["domains"] == 1
    assert _add_domain(world, "two.test").status_code == 201
    assert _add_domain(world, "three.test").status_code == 201
    assert _add_domain(world, "four.test").status_code == 402


def test_replayed_event_has_no_second_effect(world: World) -> None:
    sub = world.subscribe("pro")
    payload = world.fake.event("customer.subscription.updated", sub, event_id="evt_replayed")
    first = world.deliver(payload)
    assert first.json()["result"] == "handled"
    handled = world.events_handled()
    # At Stripe the plan changes; a replay of the old event must not act on it again.
    world.fake.update_subscription(sub["id"], lookup_key="smtpy_max_monthly")
    replay = world.deliver(payload)
    assert replay.status_code == 200 and replay.json()["result"] == "duplicate"
    assert world.events_handled() == handled
    assert world.plan() == "pro"


def test_bad_signature_and_old_timestamp_are_refused_without_effect(world: World) -> None:
    session = world.fake.complete_checkout(world.checkout("pro"))
    payload = world.fake.event("checkout.session.completed", session)
    wrong = world.deliver(payload, signature(payload, "whsec_not_the_secret"))
    assert wrong.status_code == 400
    assert wrong.json()["code"] == "bad_signature"
    old = world.deliver(payload, signature(payload, timestamp=int(time.time()) - 301))
    assert old.status_code == 400
    tampered = world.deliver(
        payload.replace("checkout.session", "checkout.xsession"), signature(payload)
    )
    assert tampered.status_code == 400
    missing = world.api.client.post(WEBHOOK, content=payload)
    assert missing.status_code == 400
    assert world.events_handled() == 0
    assert world.plan() == "free"
    assert world.deliver(payload).status_code == 200  # the genuine delivery still works
    assert world.plan() == "pro"


def test_events_out_of_order_follow_what_stripe_says_now(world: World) -> None:
    session = world.fake.complete_checkout(world.checkout("max"))
    sub_id = session["subscription"]
    created = world.fake.event(
        "customer.subscription.created", world.fake.update_subscription(sub_id)
    )
    # The customer downgrades, then cancels at once; the events arrive newest first.
    downgraded = world.fake.event(
        "customer.subscription.updated",
        world.fake.update_subscription(sub_id, lookup_key="smtpy_pro_monthly"),
    )
    deleted = world.fake.event(
        "customer.subscription.deleted", world.fake.update_subscription(sub_id, status="canceled")
    )
    for payload in (deleted, downgraded, created):
        assert world.deliver(payload).status_code == 200
        assert world.plan() == "free"  # each one re-fetched: canceled
    assert world.billing()["subscription"]["status"] == "canceled"


def test_downgrade_lowers_the_limits(world: World) -> None:
    sub = world.subscribe("max")
    assert world.plan() == "max"
    changed = world.fake.update_subscription(sub["id"], lookup_key="smtpy_pro_monthly")
    assert (
        world.deliver(world.fake.event("customer.subscription.updated", changed)).status_code == 200
    )
    billing = world.billing()
    assert billing["plan"]["id"] == "pro" and billing["limits"]["domains"] == 3


def test_failed_payment_keeps_the_plan_through_its_grace_period(world: World) -> None:
    from smtpy.billing.plans import Catalog, effective_plan
    from smtpy.config import Plan
    from smtpy.store.db import Database

    sub = world.subscribe("pro")
    failed = world.fake.update_subscription(sub["id"], status="past_due")
    invoice = {"id": "in_2", "object": "invoice", "subscription": sub["id"]}
    assert world.deliver(world.fake.event("invoice.payment_failed", invoice)).status_code == 200
    billing = world.billing()
    assert billing["plan"]["id"] == "pro" and billing["plan"]["source"] == "grace"
    assert billing["subscription"]["status"] == "past_due"
    assert billing["subscription"]["grace_ends"] is not None
    # A later event while still past_due keeps the first moment it was seen so.
    assert (
        world.deliver(world.fake.event("customer.subscription.updated", failed)).status_code == 200
    )
    catalog = Catalog({k: Plan(**v) for k, v in PLANS.items()}, grace_days=3)  # type: ignore[arg-type]
    with Database(world.store_url) as db:
        since = db.scalar(
            "SELECT past_due_since FROM subscriptions WHERE id = :id", {"id": sub["id"]}
        )
        inside = effective_plan(db=db, org=world.org, catalog=catalog, now=since + 3 * 86400 - 60)
        after = effective_plan(db=db, org=world.org, catalog=catalog, now=since + 3 * 86400 + 60)
    assert (inside.plan.id, inside.source) == ("pro", "grace")
    assert (after.plan.id, after.source) == ("free", "default")
    # Paid after all: active again, the grace period forgotten.
    world.fake.update_subscription(sub["id"], status="active")
    assert world.deliver(world.fake.event("invoice.paid", invoice)).status_code == 200
    billing = world.billing()
    assert billing["plan"]["source"] == "subscription"
    assert billing["subscription"]["past_due_since"] is None


def test_cancellation_takes_effect_at_the_end_of_the_paid_period(world: World) -> None:
    from smtpy.billing.plans import Catalog, effective_plan
    from smtpy.config import Plan
    from smtpy.store.db import Database

    sub = world.subscribe("pro")
    cancelled = world.fake.update_subscription(sub["id"], cancel_at_period_end=True)
    assert (
        world.deliver(world.fake.event("customer.subscription.updated", cancelled)).status_code
        == 200
    )
    billing = world.billing()
    assert billing["plan"]["id"] == "pro"
    assert billing["subscription"]["cancel_at_period_end"] is True
    catalog = Catalog({k: Plan(**v) for k, v in PLANS.items()}, grace_days=3)  # type: ignore[arg-type]
    with Database(world.store_url) as db:
        later = effective_plan(
            db=db, org=world.org, catalog=catalog, now=sub["current_period_end"] + 1
        )
    assert later.plan.id == "free"  # even if the deletion event never came
    ended = world.fake.update_subscription(sub["id"], status="canceled")
    assert (
        world.deliver(world.fake.event("customer.subscription.deleted", ended)).status_code == 200
    )
    assert world.plan() == "free"


def test_portal_and_the_owner_only_rule(world: World) -> None:
    no_customer = world.session.post("/api/v1/billing/portal")
    assert no_customer.status_code == 409
    world.subscribe("pro")
    portal = world.session.post("/api/v1/billing/portal")
    assert portal.status_code == 200
    (session,) = world.fake.portal_sessions.values()
    assert portal.json()["url"] == session["url"]
    assert session["return_url"] == f"{PUBLIC_URL}/billing"
    assert session["customer"] == next(iter(world.fake.customers))
    # A second subscription through Checkout is refused: change it in the portal.
    again = world.session.post("/api/v1/billing/checkout", json={"plan": "max"})
    assert again.status_code == 409
    # An API key acts as an admin: billing is the owners'.
    assert world.keyed.post("/api/v1/billing/checkout", json={"plan": "max"}).status_code == 403
    assert world.keyed.post("/api/v1/billing/portal").status_code == 403
    unknown = world.session.post("/api/v1/billing/checkout", json={"plan": "gold"})
    assert unknown.status_code == 404


def test_billing_sync_fetches_a_missed_subscription(world: World, cli_env: dict[str, str]) -> None:
    from conftest import Cli

    session = world.fake.complete_checkout(world.checkout("pro"))  # the webhook never came
    assert session["subscription"]
    assert world.plan() == "free"
    result = Cli(cli_env)("billing", "sync", "acme")
    assert result.code == 0, result.stderr
    assert "fetched 1 subscription" in result.stdout
    assert world.plan() == "pro"


def test_without_a_stripe_key_checkout_and_portal_say_billing_is_off(
    cli_env: dict[str, str], store_url: str
) -> None:
    with ApiServer(cli_env) as api:
        owner = seed_org(store_url, org="acme")
        browser = api.browser()
        login = browser.post(
            "/api/v1/auth/login", json={"email": owner["email"], "password": owner["password"]}
        )
        browser.headers["X-CSRF-Token"] = login.json()["csrf_token"]
        answer = browser.post("/api/v1/billing/checkout", json={"plan": "pro"})
        assert answer.status_code == 409 and answer.json()["code"] == "billing_disabled"
        assert browser.post("/api/v1/billing/portal").json()["code"] == "billing_disabled"
        keyed = api.as_key(owner["key"])
        billing = keyed.get("/api/v1/billing").json()
        assert billing["billing"] is False and billing["plan"]["id"] == "unlimited"
        assert all(v is None for v in billing["limits"].values())
        assert keyed.get("/api/v1/billing/plans").json() == {"data": []}
        for name in ("a.test", "b.test", "c.test"):  # nothing is limited
            assert keyed.post("/api/v1/domains", json={"name": name}).status_code == 201
