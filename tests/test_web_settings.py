"""The dashboard's settings pages in Chromium: errors at their fields in place, API keys shown
once and revoked, sessions ended, members and invitations, and every page at a phone's
width with no serious axe-core violation in either theme."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from apiserver import seed_org
from browser import (  # noqa: F401
    Dashboard,
    assert_accessible,
    assert_fits,
    browser,
    csp_violations,
    dashboard,
    new_page,
    shared_dashboard,
    sign_in,
    signed_in,
)
from smtpy.accounts import api_keys
from smtpy.errors import Unauthorized
from smtpy.store.db import Database

SETTINGS_PAGES = [
    "/settings/profile",
    "/settings/security",
    "/settings/api-keys",
    "/settings/organization",
    "/settings/audit-log",
    "/billing",
    "/webhooks",
]


def test_settings_pages_fit_a_phone_and_pass_axe(browser, shared_dashboard: Dashboard) -> None:  # noqa: F811
    site = shared_dashboard
    for scheme in ("light", "dark"):
        page = new_page(browser, viewport={"width": 390, "height": 844}, color_scheme=scheme)
        sign_in(page, site, site.user["email"], site.user["password"])
        expect(page).to_have_url(site.url("/"))
        for path in SETTINGS_PAGES:
            page.goto(site.url(path))
            expect(page.locator("h1")).to_be_visible()
            assert_fits(page)
            assert_accessible(page)
        page.context.close()
        assert csp_violations(page) == []


def test_a_too_short_password_is_refused_at_its_field_in_place(
    browser,  # noqa: F811
    shared_dashboard: Dashboard,  # noqa: F811
) -> None:
    site = shared_dashboard
    page = new_page(browser)
    sign_in(page, site, site.user["email"], site.user["password"])
    expect(page).to_have_url(site.url("/"))
    page.goto(site.url("/settings/security"))
    page.evaluate("window.sameDocument = true")  # gone if the browser loads a new page
    page.get_by_label("Current password").fill(site.user["password"])
    page.get_by_label("New password", exact=True).fill("short")
    page.get_by_label("New password again").fill("short")
    page.get_by_role("button", name="Change the password").click()

    new = page.get_by_label("New password", exact=True)
    expect(new).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#f-new-error")).to_have_text(
        "the password is too short: use at least 10 characters"
    )
    expect(new).to_be_focused()  # the keyboard is where the error is
    assert page.evaluate("window.sameDocument") is True  # htmx updated the page in place

    # The password did not change: signing in with it still works.
    other = new_page(browser)
    sign_in(other, site, site.user["email"], site.user["password"])
    expect(other).to_have_url(site.url("/"))
    other.context.close()
    page.context.close()


def test_an_api_key_is_shown_once_works_and_is_revoked(
    dashboard: Dashboard,  # noqa: F811
    signed_in: Page,  # noqa: F811
) -> None:
    page = signed_in
    page.goto(dashboard.url("/settings/api-keys"))
    page.get_by_label("Name").fill("   ")
    page.get_by_role("button", name="Create the key").click()
    expect(page.locator("#f-name-error")).to_have_text(
        "an API key needs a name of 1 to 200 characters"
    )

    page.get_by_label("Name").fill("backup script")
    page.get_by_role("button", name="Create the key").click()
    key = page.locator("#new-api-key").inner_text().strip()
    assert key.startswith("smtpy_")
    with Database(dashboard.store_url) as db:
        assert api_keys.authenticate(db=db, key=key).name == "backup script"

    page.reload()  # shown once: not on the page any more
    expect(page.locator("#new-api-key")).to_have_count(0)
    assert key not in page.content()

    page.get_by_role("button", name="Revoke backup script").click()
    expect(page.get_by_role("status")).to_have_text("The API key backup script is revoked.")
    with Database(dashboard.store_url) as db, pytest.raises(Unauthorized):
        api_keys.authenticate(db=db, key=key)


def test_ending_another_session_signs_that_browser_out(
    browser,  # noqa: F811
    dashboard: Dashboard,  # noqa: F811
    signed_in: Page,  # noqa: F811
) -> None:
    other = new_page(browser, user_agent="Other Browser 1.0")
    sign_in(other, dashboard, dashboard.user["email"], dashboard.user["password"])
    expect(other).to_have_url(dashboard.url("/"))

    signed_in.goto(dashboard.url("/settings/security"))
    row = signed_in.get_by_role("row").filter(has_text="Other Browser 1.0")
    row.get_by_role("button").click()
    expect(signed_in.get_by_role("status")).to_have_text("The session has ended.")
    expect(signed_in.get_by_role("row").filter(has_text="Other Browser 1.0")).to_have_count(0)

    other.goto(dashboard.url("/settings/profile"))
    expect(other).to_have_url(dashboard.url("/login?next=/settings/profile"))
    other.context.close()


def test_members_roles_and_invitations(
    browser,  # noqa: F811
    dashboard: Dashboard,  # noqa: F811
    signed_in: Page,  # noqa: F811
) -> None:
    member = seed_org(dashboard.store_url, org="acme", email="mia@acme.test", role="member")
    page = signed_in
    page.goto(dashboard.url("/settings/organization"))

    page.get_by_label("Role of mia@acme.test").select_option("admin")
    page.get_by_role("button", name="Change the role of mia@acme.test").click()
    expect(page.get_by_role("status")).to_have_text("mia@acme.test is now admin.")

    # The last owner stays an owner: the refusal shows on that member's row.
    owner = dashboard.user["email"]
    page.get_by_label(f"Role of {owner}").select_option("member")
    page.get_by_role("button", name=f"Change the role of {owner}").click()
    expect(page.get_by_label(f"Role of {owner}")).to_have_attribute("aria-invalid", "true")
    expect(page.locator(".field-error")).to_contain_text("last owner")

    page.get_by_label("E-mail address").fill("newcomer@example.test")
    page.get_by_label("Role", exact=True).select_option("admin")
    page.get_by_role("button", name="Send the invitation").click()
    expect(page.get_by_role("status")).to_contain_text("An invitation is on its way")
    with Database(dashboard.store_url) as db:
        assert (
            db.scalar(
                "SELECT role FROM account_tokens WHERE kind = 'invite' AND email = :e",
                {"e": "newcomer@example.test"},
            )
            == "admin"
        )

    # A member may not manage members: no buttons, and the page refuses the post anyway.
    mia = new_page(browser)
    sign_in(mia, dashboard, member["email"], member["password"])
    expect(mia).to_have_url(dashboard.url("/"))
    with Database(dashboard.store_url) as db:
        db.execute(
            "UPDATE memberships SET role = 'member' WHERE user_id = :u", {"u": member["user"]}
        )
    mia.goto(dashboard.url("/settings/organization"))
    expect(mia.get_by_role("button", name="Send the invitation")).to_have_count(0)
    answer = mia.request.post(
        dashboard.url("/settings/organization/invitations"),
        form={"email": "x@example.test", "role": "owner"},
        headers={"X-CSRF-Token": _csrf(mia)},
    )
    assert answer.status == 403
    mia.context.close()


def _csrf(page: Page) -> str:
    value = page.locator("input[name=csrf_token]").first.get_attribute("value")
    assert value
    return value
