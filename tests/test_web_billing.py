"""The dashboard's billing page in Chromium against the real `smtpy api` and a fake Stripe
on loopback (tests/fake_stripe.py): plan and usage bars with their numbers, upgrade through
Checkout, the plan after Stripe's signed webhook, the Portal, a failed payment's grace,
a member's read-only page, billing off; axe-core in both themes at a phone's width."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from apiserver import ApiServer, seed_org
from browser import (  # noqa: F401
    Dashboard,
    assert_accessible,
    assert_fits,
    browser,
    csp_violations,
    new_page,
    shared_dashboard,
    sign_in,
)
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


@dataclass
class Site:
    api: ApiServer
    fake: FakeStripe
    owner: dict[str, Any]
    member: dict[str, Any]
    dashboard: Dashboard  # the same server, for browser.sign_in

    def url(self, path: str) -> str:
        return self.api.base_url + path

    def deliver(self, event_type: str, obj: dict[str, Any]) -> None:
        payload = self.fake.event(event_type, obj)
        answer = self.api.client.post(
            WEBHOOK,
            content=payload,
            headers={"Content-Type": "application/json", "Stripe-Signature": signature(payload)},
        )
        assert answer.status_code == 200, answer.text


@pytest.fixture
def site(cli_env: dict[str, str], store_url: str) -> Iterator[Site]:
    with FakeStripe() as fake:
        cli_env.update(
            {
                "SMTPY_PLANS": json.dumps(PLANS),
                "SMTPY_STRIPE_SECRET_KEY": SECRET_KEY,
                "SMTPY_STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
                "SMTPY_STRIPE_API_BASE": fake.url,
                "SMTPY_PUBLIC_URL": "http://mail.example.test",
                "SMTPY_BILLING_GRACE_DAYS": "3",
            }
        )
        with ApiServer(cli_env) as api:
            owner = seed_org(store_url, org="acme")
            member = seed_org(store_url, org="acme", role="member")
            added = api.as_key(owner["key"]).post("/api/v1/domains", json={"name": "one.test"})
            assert added.status_code == 201, added.text
            yield Site(api, fake, owner, member, Dashboard(api, store_url, owner))


def _signed_in(chromium: Any, site: Site, who: dict[str, Any], **options: Any) -> Page:
    page = new_page(chromium, **options)
    sign_in(page, site.dashboard, who["email"], who["password"])
    expect(page).to_have_url(site.url("/"))
    page.goto(site.url("/billing"))
    return page


def _usage(page: Page, kind: str) -> Any:
    return page.locator(f'[data-limit="{kind}"]')


def test_owner_upgrades_through_checkout_and_sees_the_new_plan(browser: Any, site: Site) -> None:  # noqa: F811
    page = _signed_in(browser, site, site.owner)
    expect(page.locator("#current-plan")).to_have_text("Free")
    domains = page.get_by_label("Domains", exact=True)  # the bar, by its visible label
    expect(domains).to_have_attribute("value", "1")
    expect(domains).to_have_attribute("max", "1")
    expect(_usage(page, "domains")).to_contain_text("1 of 1 domains")
    expect(_usage(page, "domains")).to_contain_text("the limit is reached")
    expect(_usage(page, "aliases")).to_contain_text("0 of 5 aliases")
    expect(page.get_by_role("button", name="Manage billing")).to_have_count(0)
    assert_accessible(page)

    page.get_by_role("button", name="Upgrade to Pro").click()
    page.wait_for_url(re.compile(re.escape(site.fake.url) + r"/pay/cs_test_"))
    (request,) = site.fake.posts("/v1/checkout/sessions")
    assert request["params"]["client_reference_id"] == str(site.owner["org"])
    session_id = page.url.rsplit("/", 1)[1]
    assert site.fake.sessions[session_id]["success_url"].endswith("/billing?checkout=success")

    # The customer pays; Stripe's signed webhook tells smtpy.
    session = site.fake.complete_checkout(session_id)
    site.deliver("checkout.session.completed", session)
    page.goto(site.url("/billing?checkout=success"))
    expect(page.locator("#current-plan")).to_have_text("Pro")
    expect(page.locator("#current-price")).to_have_text("9 EUR / month")
    expect(_usage(page, "domains")).to_contain_text("1 of 3 domains")
    expect(page.get_by_label("Domains", exact=True)).to_have_attribute("max", "3")
    expect(page.get_by_role("button", name=re.compile("^Upgrade"))).to_have_count(0)

    # "Manage billing" opens the Customer Portal of the organization's customer.
    page.get_by_role("button", name="Manage billing").click()
    page.wait_for_url(re.compile(re.escape(site.fake.url) + r"/portal/bps_"))
    (portal,) = site.fake.posts("/v1/billing_portal/sessions")
    assert portal["params"]["customer"] == session["customer"]

    # A failed payment: the plan is kept until the grace period ends, and the page says so.
    site.fake.update_subscription(session["subscription"], status="past_due")
    invoice = {"id": "in_1", "object": "invoice", "subscription": session["subscription"]}
    site.deliver("invoice.payment_failed", invoice)
    page.goto(site.url("/billing"))
    expect(page.locator("#current-plan")).to_have_text("Pro")
    past_due = page.locator("#past-due")
    expect(past_due).to_contain_text("The last payment failed.")
    expect(past_due).to_contain_text(re.compile(r"kept until \d{4}-\d\d-\d\d \d\d:\d\d UTC"))
    expect(past_due).to_contain_text("falls back to the Free plan")
    assert_accessible(page)
    page.context.close()
    assert csp_violations(page) == []


def test_a_member_sees_the_page_read_only(browser: Any, site: Site) -> None:  # noqa: F811
    page = _signed_in(browser, site, site.member)
    expect(page.locator("#current-plan")).to_have_text("Free")
    expect(_usage(page, "domains")).to_contain_text("1 of 1 domains")
    expect(page.locator('[data-plan="pro"]')).to_contain_text("9 EUR / month")
    expect(page.locator("#owners-only")).to_be_visible()
    expect(page.get_by_role("button", name=re.compile("^Upgrade"))).to_have_count(0)
    expect(page.get_by_role("button", name="Manage billing")).to_have_count(0)
    # A hand-made post is refused by the core: no checkout reaches Stripe.
    token = page.locator('input[name="csrf_token"]').first.get_attribute("value")
    answer = page.request.post(
        site.url("/billing/checkout"), form={"plan": "pro", "csrf_token": str(token)}
    )
    assert answer.status == 403
    assert site.fake.posts("/v1/checkout/sessions") == []
    page.context.close()


def test_the_page_fits_a_phone_and_passes_axe_in_both_themes(browser: Any, site: Site) -> None:  # noqa: F811
    for scheme in ("light", "dark"):
        page = _signed_in(
            browser, site, site.owner, viewport={"width": 390, "height": 844}, color_scheme=scheme
        )
        expect(page.get_by_role("button", name="Upgrade to Max")).to_be_visible()
        assert_fits(page)
        assert_accessible(page)
        page.context.close()
        assert csp_violations(page) == []


def test_without_a_stripe_key_the_page_shows_plan_and_usage_and_nothing_to_buy(
    browser: Any,  # noqa: F811
    shared_dashboard: Dashboard,  # noqa: F811
) -> None:
    site = shared_dashboard
    page = new_page(browser)
    sign_in(page, site, site.user["email"], site.user["password"])
    expect(page).to_have_url(site.url("/"))
    page.goto(site.url("/billing"))
    expect(page.locator("#billing-off")).to_contain_text("Billing is not enabled on this server")
    expect(page.locator("#current-plan")).to_have_text("Unlimited")
    expect(_usage(page, "domains")).to_contain_text("(no limit)")
    expect(page.get_by_role("button", name=re.compile("^Upgrade|Manage billing"))).to_have_count(0)
    assert_accessible(page)
    page.context.close()
    assert csp_violations(page) == []
