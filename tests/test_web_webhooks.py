"""The dashboard's /webhooks pages in Chromium, against the real `smtpy api` process and a
real HTTPS receiver (a test CA; every signature checked with the `standardwebhooks`
library): an endpoint added in the page with its secret shown once and copied, a test
event that verifies with that secret, a rotation whose old secret goes on signing, a
failed delivery retried, disabling and removal; a member sees it all and changes nothing."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from apiserver import seed_org
from browser import (  # noqa: F401
    Browser,
    Dashboard,
    assert_accessible,
    assert_fits,
    browser,
    csp_violations,
    new_page,
    shared_dashboard,
    sign_in,
    start_dashboard,
)
from smtpy.admin import webhooks
from smtpy.store.db import Database
from webhook_receiver import Hit, Reply, WebhookReceiver


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[WebhookReceiver]:
    with WebhookReceiver(tmp_path) as r:
        yield r


@pytest.fixture
def hook_dashboard(cli_env: dict[str, str], receiver: WebhookReceiver) -> Iterator[Dashboard]:
    """`smtpy api` (each store) that may post to loopback and trusts the receiver's CA."""
    yield from start_dashboard(
        cli_env,
        SMTPY_SIGNUP="open",
        SMTPY_WEBHOOK_ALLOW_PRIVATE="true",
        SMTPY_TLS_CA_FILE=str(receiver.ca_file),
    )


def _signed_in(browser: Browser, site: Dashboard, **options: object) -> Page:  # noqa: F811
    page = new_page(browser, **options)
    sign_in(page, site, site.user["email"], site.user["password"])
    expect(page).to_have_url(site.url("/"))
    return page


def _last_hit(receiver: WebhookReceiver, count: int) -> Hit:
    hits = receiver.wait_for(lambda hits: hits if len(hits) >= count else None)
    assert len(hits) == count
    return hits[-1]


def test_an_endpoint_is_added_tested_rotated_retried_disabled_and_removed(
    browser,  # noqa: F811
    hook_dashboard: Dashboard,
    receiver: WebhookReceiver,
) -> None:
    site = hook_dashboard
    page = _signed_in(browser, site, permissions=["clipboard-read", "clipboard-write"])
    page.goto(site.url("/webhooks"))
    expect(page.get_by_text("No endpoint yet.")).to_be_visible()

    # The core's refusals show at their fields: no event chosen, a URL that is no URL.
    page.get_by_label("Endpoint URL").fill("ftp://127.0.0.1/hook")
    page.get_by_role("button", name="Add the endpoint").click()
    expect(page.get_by_label("Endpoint URL")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_label("Endpoint URL")).to_be_focused()  # the keyboard is at the error
    expect(page.locator("#f-url-error")).to_contain_text("https://")
    expect(page.locator("#f-events-error")).to_contain_text("at least one event type")

    page.get_by_label("Endpoint URL").fill(receiver.url())
    page.get_by_label("message.bounced").check()
    page.get_by_label("domain.verified").check()
    page.get_by_role("button", name="Add the endpoint").click()
    secret = page.locator("#webhook-secret").inner_text().strip()
    assert secret.startswith("whsec_")
    expect(page.locator("#created")).to_contain_text("shown only this once")
    # The copy button works under the CSP (Alpine's CSP build, no inline script).
    page.get_by_role("button", name="Copy the signing secret").click()
    expect(page.get_by_role("button", name="Copy the signing secret")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == secret
    row = page.locator("#endpoints tbody tr")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("message.bounced, domain.verified")
    expect(row).to_contain_text("enabled")
    assert_accessible(page)

    page.reload()  # shown once: gone from the page
    expect(page.locator("#webhook-secret")).to_have_count(0)
    assert secret not in page.content()

    # A test event reaches the receiver, signed with that secret.
    receiver.secrets.append(secret)
    page.get_by_role("link", name=receiver.url()).click()
    page.get_by_role("button", name="Send a test event").click()
    expect(page.locator(".flash")).to_have_text("The test event was delivered (HTTP 200).")
    hit = _last_hit(receiver, 1)
    assert hit.type == "webhook.test" and hit.verified_by == (0,)
    first = page.locator("#deliveries tbody tr").first
    expect(first).to_contain_text("webhook.test")
    expect(first).to_contain_text("delivered")
    expect(first).to_contain_text("200")

    # The URL and events change in the endpoint's page; what the core refuses changes nothing.
    page.get_by_label("Endpoint URL").fill("http://127.0.0.1/plain")
    page.get_by_label("message.bounced").uncheck()
    page.get_by_label("domain.verified").uncheck()
    page.get_by_role("button", name="Save the URL and events").click()
    expect(page.locator("#f-events-error")).to_contain_text("at least one event type")
    expect(page.get_by_label("Endpoint URL")).to_have_value("http://127.0.0.1/plain")
    with Database(site.store_url) as db:
        [stored] = webhooks.list_webhooks(db=db, org=site.user["org"])
    assert (stored.url, stored.events) == (receiver.url(), ["message.bounced", "domain.verified"])
    page.get_by_label("Endpoint URL").fill(receiver.url("/changed"))
    page.get_by_label("message.forwarded").check()
    page.get_by_label("message.bounced").check()
    page.get_by_role("button", name="Save the URL and events").click()
    expect(page.locator(".flash")).to_have_text(
        f"Saved: {receiver.url('/changed')} gets 2 event types."
    )
    expect(page.locator("h1")).to_have_text(receiver.url("/changed"))
    expect(page.get_by_label("message.forwarded")).to_be_checked()
    expect(page.get_by_label("message.bounced")).to_be_checked()
    expect(page.get_by_label("domain.verified")).not_to_be_checked()
    page.get_by_role("button", name="Send a test event").click()  # the same secret signs
    expect(page.locator(".flash")).to_have_text("The test event was delivered (HTTP 200).")
    changed = _last_hit(receiver, 2)
    assert changed.path == "/changed" and changed.verified_by == (0,)
    with Database(site.store_url) as db:
        [stored] = webhooks.list_webhooks(db=db, org=site.user["org"])
    assert stored.events == ["message.forwarded", "message.bounced"]
    assert_accessible(page)

    # Rotation: the new secret is shown once; the old one goes on signing for the overlap.
    page.get_by_role("button", name="Rotate the secret").click()
    expect(page.locator("#rotated")).to_contain_text("previous secret goes on signing")
    rotated = page.locator("#webhook-secret").inner_text().strip()
    assert rotated.startswith("whsec_") and rotated != secret
    receiver.secrets.append(rotated)
    page.reload()  # shown once: the page's address shows the endpoint again, without it
    expect(page.locator("h1")).to_have_text(receiver.url("/changed"))
    assert rotated not in page.content()

    # A failing endpoint: the delivery shows its HTTP status and the answer's body.
    receiver.script(Reply(503, body="down for maintenance"))
    page.get_by_role("button", name="Send a test event").click()
    expect(page.locator(".flash")).to_contain_text("not delivered: HTTP 503")
    hit = _last_hit(receiver, 3)
    assert hit.verified_by == (0, 1)  # both secrets sign during the overlap
    failed = page.locator("#deliveries tbody tr").first
    expect(failed).to_contain_text("failed")
    expect(failed).to_contain_text("503")
    expect(failed).to_contain_text("down for maintenance")
    assert_accessible(page)

    # Disabled: the core refuses a retry, and the page says so; enabled again, it is due.
    page.get_by_role("button", name="Disable the endpoint").click()
    expect(page.locator(".flash")).to_contain_text("The endpoint is disabled")
    expect(page.locator("#state")).to_contain_text("disabled by an administrator")
    failed.get_by_role("button", name="Retry").click()
    expect(page.locator("#form-error")).to_contain_text("enable it first")
    page.get_by_role("button", name="Enable the endpoint").click()
    expect(page.locator("#state")).to_have_text("enabled")
    page.locator("#deliveries tbody tr").first.get_by_role("button", name="Retry").click()
    expect(page.locator(".flash")).to_contain_text("is due again")
    expect(page.locator("#deliveries tbody tr").first).to_contain_text("pending")

    # Removal asks first (a disclosure), then the endpoint is gone, in the store too.
    expect(page.get_by_role("button", name="Remove the endpoint")).to_be_hidden()
    page.get_by_text("Remove this endpoint…").click()
    page.get_by_role("button", name="Remove the endpoint").click()
    expect(page.locator(".flash")).to_have_text(
        f"The endpoint {receiver.url('/changed')} was removed."
    )
    expect(page.get_by_text("No endpoint yet.")).to_be_visible()
    with Database(site.store_url) as db:
        assert webhooks.list_webhooks(db=db, org=site.user["org"]) == []
    page.context.close()
    assert csp_violations(page) == []


def _failed_delivery(store_url: str, org: int) -> str:
    """An endpoint on a closed loopback port, with one failed test delivery (the core's
    send_test runs its own event loop: in a thread, away from Playwright's)."""
    made: list[str] = []

    def work() -> None:
        with Database(store_url) as db:
            hook = webhooks.create_webhook(
                db=db, org=org, url="https://127.0.0.1:9/hook", allow_private=True
            )
            webhooks.send_test(db=db, org=org, webhook_id=hook.id, allow_private=True, timeout=5)
            made.append(hook.id)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(60)
    assert made, "the endpoint was not made"
    return made[0]


def test_a_member_sees_webhooks_read_only_on_a_phone_in_both_themes(
    browser,  # noqa: F811
    shared_dashboard: Dashboard,  # noqa: F811
) -> None:
    site = shared_dashboard
    hook_id = _failed_delivery(site.store_url, site.user["org"])
    member = seed_org(site.store_url, org="acme", email="mo@acme.test", role="member")
    for scheme in ("light", "dark"):
        page = new_page(browser, viewport={"width": 390, "height": 844}, color_scheme=scheme)
        sign_in(page, site, member["email"], member["password"])
        expect(page).to_have_url(site.url("/"))
        page.goto(site.url("/webhooks"))
        expect(page.locator("#endpoints tbody tr")).to_have_count(1)
        expect(page.get_by_role("button", name="Add the endpoint")).to_have_count(0)
        assert_fits(page)
        assert_accessible(page)

        page.get_by_role("link", name="https://127.0.0.1:9/hook").click()
        expect(page.locator("#deliveries tbody tr")).to_have_count(1)
        expect(page.locator("#deliveries")).to_contain_text("failed")
        main = page.locator("main")
        expect(main.get_by_role("button")).to_have_count(0)  # no test, disable, retry...
        assert_fits(page)
        assert_accessible(page)

        # And the server refuses the change anyway.
        token = page.locator("input[name=csrf_token]").first.get_attribute("value")
        answer = page.request.post(
            site.url(f"/webhooks/{hook_id}/disable"), headers={"X-CSRF-Token": token or ""}
        )
        assert answer.status == 403
        answer = page.request.post(
            site.url(f"/webhooks/{hook_id}/edit"),
            headers={"X-CSRF-Token": token or ""},
            form={"url": "https://127.0.0.1:9/other", "events": "message.bounced"},
        )
        assert answer.status == 403
        page.context.close()
        assert csp_violations(page) == []
    with Database(site.store_url) as db:
        hook = webhooks.get_webhook(db=db, org=site.user["org"], webhook_id=hook_id)
    assert hook.enabled and hook.url == "https://127.0.0.1:9/hook"
