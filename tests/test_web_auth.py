"""The dashboard's signed-out pages in Chromium: sign in and out, the 2FA step, the keyboard,
the theme, a phone's width and an axe-core scan of each page."""

from __future__ import annotations

import email
import email.policy
import re
import time
from urllib.parse import unquote

import pyotp
import pytest
from playwright.sync_api import Page, expect

from browser import (  # noqa: F401
    Dashboard,
    assert_accessible,
    assert_fits,
    browser,
    csp_violations,
    dashboard,
    new_page,
    running_dashboard,
    shared_dashboard,
    sign_in,
    signed_in,
)
from smtpy.accounts.mailer import CONFIRM_PATH, INVITATION_PATH
from smtpy.store.db import Database

SIGNED_OUT_PAGES = [
    "/",  # the landing page (sign-up is open)
    "/login",
    "/register",
    "/password-reset",
    "/password-reset?token=abc",
    "/confirm?token=abc",
    "/invitations/accept?token=abc",
]


def test_sign_in_and_out(browser, dashboard: Dashboard) -> None:  # noqa: F811
    page = new_page(browser)
    page.goto(dashboard.url("/settings/profile"))
    # Not signed in: the sign-in page, which comes back to the page asked for.
    expect(page).to_have_url(dashboard.url("/login?next=/settings/profile"))

    sign_in(page, dashboard, dashboard.user["email"], "wrong password", "/settings/profile")
    expect(page.locator(".form-error")).to_have_text("the e-mail address or the password is wrong")

    page.get_by_label("Password").fill(dashboard.user["password"])
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(dashboard.url("/settings/profile"))
    expect(page.locator("#profile-email")).to_have_text(dashboard.user["email"])
    expect(page.get_by_role("navigation", name="Main")).to_be_visible()

    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(dashboard.url("/login"))
    expect(page.get_by_role("status")).to_have_text("You are signed out.")
    page.goto(dashboard.url("/settings/profile"))
    expect(page).to_have_url(dashboard.url("/login?next=/settings/profile"))
    page.context.close()


def test_two_factor_enrolment_then_sign_in_with_the_code(
    browser,  # noqa: F811
    dashboard: Dashboard,  # noqa: F811
    signed_in: Page,  # noqa: F811
) -> None:
    page = signed_in
    page.goto(dashboard.url("/settings/security"))
    page.get_by_role("button", name="Turn on two-factor authentication").click()
    expect(page.locator(".qr svg")).to_be_visible()
    secret = page.locator("#totp-secret").inner_text().strip()
    totp = pyotp.TOTP(secret)

    page.get_by_label("Code from the app").fill("000000" if totp.now() != "000000" else "111111")
    page.get_by_role("button", name="Turn on").click()
    expect(page.locator("#f-code-error")).to_contain_text("the code is wrong")

    page.get_by_label("Code from the app").fill(totp.now())
    page.get_by_role("button", name="Turn on").click()
    codes = page.locator("#recovery-codes li")
    expect(codes).to_have_count(10)
    recovery = codes.first.inner_text().strip()

    page.goto(dashboard.url("/settings/security"))
    expect(page.get_by_text("Signing in asks for a code")).to_be_visible()
    page.get_by_role("button", name="Sign out").first.click()
    expect(page).to_have_url(dashboard.url("/login"))

    sign_in(page, dashboard, dashboard.user["email"], dashboard.user["password"])
    expect(page).to_have_url(dashboard.url("/login/2fa"))
    # Before the code, no page of the dashboard opens.
    page.goto(dashboard.url("/settings/profile"))
    expect(page).to_have_url(dashboard.url("/login/2fa?next=/settings/profile"))
    # The enrolment used this 30-second step's code (once only): the next step's code.
    page.get_by_label("Code").fill(totp.at(time.time() + totp.interval))
    page.get_by_role("button", name="Continue").click()
    expect(page).to_have_url(dashboard.url("/settings/profile"))

    # A recovery code signs in once.
    other = new_page(browser)
    sign_in(other, dashboard, dashboard.user["email"], dashboard.user["password"])
    expect(other).to_have_url(dashboard.url("/login/2fa"))
    other.get_by_label("Code").fill(recovery)
    other.get_by_role("button", name="Continue").click()
    expect(other).to_have_url(dashboard.url("/"))
    other.context.close()


def test_keyboard_alone_signs_in_with_focus_visible(browser, shared_dashboard: Dashboard) -> None:  # noqa: F811
    site = shared_dashboard
    page = new_page(browser)
    page.goto(site.url("/login"))
    for _ in range(10):  # skip link, brand, theme toggle, then the e-mail field
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "f-email":
            break
    assert page.evaluate("document.activeElement.id") == "f-email"
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"
    page.keyboard.type(site.user["email"])
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "f-password"
    page.keyboard.type(site.user["password"])
    page.keyboard.press("Enter")
    expect(page).to_have_url(site.url("/"))
    expect(page.get_by_role("navigation", name="Main")).to_be_visible()
    page.context.close()


def test_theme_follows_the_system_and_the_toggle_sticks(
    browser,  # noqa: F811
    shared_dashboard: Dashboard,  # noqa: F811
) -> None:
    site = shared_dashboard
    page = new_page(browser, color_scheme="light")
    page.goto(site.url("/login"))
    html = page.locator("html")
    expect(html).to_have_attribute("data-theme", "light")
    light_bg = page.evaluate("getComputedStyle(document.body).backgroundColor")

    toggle = page.get_by_role("button", name="Dark theme")
    expect(toggle).to_have_attribute("aria-pressed", "false")
    toggle.click()
    expect(html).to_have_attribute("data-theme", "dark")
    expect(toggle).to_have_attribute("aria-pressed", "true")
    page.reload()
    expect(html).to_have_attribute("data-theme", "dark")
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") != light_bg
    page.context.close()
    assert csp_violations(page) == []

    system_dark = new_page(browser, color_scheme="dark")
    system_dark.goto(site.url("/login"))
    expect(system_dark.locator("html")).to_have_attribute("data-theme", "dark")
    system_dark.context.close()


def test_signed_out_pages_fit_a_phone_and_pass_axe(
    browser,  # noqa: F811
    shared_dashboard: Dashboard,  # noqa: F811
) -> None:
    site = shared_dashboard
    for scheme in ("light", "dark"):
        page = new_page(browser, viewport={"width": 390, "height": 844}, color_scheme=scheme)
        for path in SIGNED_OUT_PAGES:
            page.goto(site.url(path))
            expect(page.locator("h1")).to_be_visible()
            assert_fits(page)
            assert_accessible(page)
        page.context.close()
        assert csp_violations(page) == []


def test_a_form_error_shows_at_its_field_without_javascript(
    browser,  # noqa: F811
    shared_dashboard: Dashboard,  # noqa: F811
) -> None:
    site = shared_dashboard
    page = new_page(browser, java_script_enabled=False)
    page.goto(site.url("/register"))
    page.get_by_label("E-mail address").fill("new@example.test")
    page.get_by_label("Password").fill("short")
    page.get_by_label("Organization name").fill("New Org")
    page.get_by_role("button", name="Create the account").click()
    password = page.get_by_label("Password")
    expect(password).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#f-password-error")).to_have_text(
        "the password is too short: use at least 10 characters"
    )
    expect(page.get_by_label("E-mail address")).to_have_value("new@example.test")
    expect(page.get_by_label("E-mail address")).not_to_have_attribute("aria-invalid", "true")
    page.context.close()


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_closed_sign_up_csrf_and_redirects_over_plain_http(cli_env: dict[str, str]) -> None:
    """Without a browser: what the pages answer to forms sent by anyone."""
    with running_dashboard(cli_env) as site:  # SMTPY_SIGNUP closed (the default)
        client = site.api.browser()
        home = client.get("/")
        assert (home.status_code, home.headers["location"]) == (303, "/login")
        assert client.get("/register").status_code == 404
        refused = client.post(
            "/register",
            data={"email": "a@example.test", "password": "long enough pw", "organization": "A"},
        )
        assert refused.status_code == 403
        assert "Sign-up is closed" in refused.text

        credentials = {"email": site.user["email"], "password": site.user["password"]}
        cross = client.post("/login", data=credentials, headers={"Sec-Fetch-Site": "cross-site"})
        assert cross.status_code == 403
        assert "smtpy_session" not in client.cookies
        # `next` never leads to another site.
        signed = client.post("/login", data={**credentials, "next": "//evil.example/x"})
        assert (signed.status_code, signed.headers["location"]) == (303, "/")

        page = client.get("/settings/profile")
        token = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page.text)
        assert token is not None
        csrf = token.group(1)
        assert client.post("/settings/profile", data={"name": "A"}).status_code == 403
        wrong = client.post("/settings/profile", data={"name": "A", "csrf_token": "0" * 64})
        assert wrong.status_code == 403
        by_field = client.post("/settings/profile", data={"name": "Field", "csrf_token": csrf})
        assert by_field.status_code == 303
        by_header = client.post(
            "/settings/profile", data={"name": "Header"}, headers={"X-CSRF-Token": csrf}
        )
        assert by_header.status_code == 303
        from_elsewhere = client.post(
            "/settings/profile",
            data={"name": "Evil", "csrf_token": csrf},
            headers={"Sec-Fetch-Site": "cross-site"},
        )
        assert from_elsewhere.status_code == 403
        assert 'value="Header"' in client.get("/settings/profile").text


def _mailed_token(store_url: str, to: str, path: str) -> str:
    """The token of the newest link to `path` that smtpy queued for `to`."""
    with Database(store_url) as db:
        rows = db.all(
            "SELECT m.data FROM messages m JOIN deliveries d ON d.message_id = m.id"
            " WHERE d.recipient = :to ORDER BY m.id DESC",
            {"to": to},
        )
    for row in rows:
        mail = email.message_from_bytes(bytes(row["data"]), policy=email.policy.default)
        text = mail.get_content()  # type: ignore[attr-defined]
        found = re.search(re.escape(path) + r"\?token=([A-Za-z0-9_%.-]+)", text)
        if found:
            return unquote(found.group(1))
    raise AssertionError(f"no mail to {to} with a link to {path}")


def _csrf_of(html: str) -> str:
    token = re.search(r'name="csrf_token" value="([0-9a-f]+)"', html)
    assert token is not None
    return token.group(1)


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_mailed_links_reset_confirm_and_invite(cli_env: dict[str, str]) -> None:
    """Password reset, sign-up with its confirmation and an invitation, each through the
    link smtpy queued (plain HTTP: the forms work without JavaScript)."""
    with running_dashboard(cli_env, SMTPY_SIGNUP="open") as site:
        store, owner = site.store_url, site.user["email"]
        client = site.api.browser()

        asked = client.post("/password-reset", data={"email": owner})
        assert (asked.status_code, asked.headers["location"]) == (303, "/login")
        token = _mailed_token(store, owner, "/password-reset")
        assert 'name="token"' in client.get(f"/password-reset?token={token}").text
        differ = client.post(
            "/password-reset/confirm",
            data={"token": token, "password": "a new password", "confirm": "another one!"},
        )
        assert differ.status_code == 422
        assert "the two passwords differ" in differ.text
        changed = client.post(
            "/password-reset/confirm",
            data={"token": token, "password": "a new password", "confirm": "a new password"},
        )
        assert changed.status_code == 303
        again = client.post(
            "/password-reset/confirm",
            data={"token": token, "password": "a third password", "confirm": "a third password"},
        )
        assert again.status_code == 422  # a link works once
        assert "is not valid" in again.text
        old = client.post("/login", data={"email": owner, "password": site.user["password"]})
        assert old.status_code == 401
        signed = client.post("/login", data={"email": owner, "password": "a new password"})
        assert (signed.status_code, signed.headers["location"]) == (303, "/")

        csrf = _csrf_of(client.get("/settings/organization").text)
        invited = client.post(
            "/settings/organization/invitations",
            data={"email": "newcomer@example.test", "role": "admin", "csrf_token": csrf},
        )
        assert invited.status_code == 303
        token = _mailed_token(store, "newcomer@example.test", INVITATION_PATH)
        newcomer = site.api.browser()
        assert newcomer.get(f"/invitations/accept?token={token}").status_code == 200
        short = newcomer.post("/invitations/accept", data={"token": token, "password": "short"})
        assert short.status_code == 422
        assert "too short" in short.text
        joined = newcomer.post(
            "/invitations/accept", data={"token": token, "password": "newcomer password"}
        )
        assert (joined.status_code, joined.headers["location"]) == (303, "/login")
        assert "joined acme as admin" in unquote(joined.cookies["smtpy_flash"])
        login = {"email": "newcomer@example.test", "password": "newcomer password"}
        assert newcomer.post("/login", data=login).headers["location"] == "/"

        visitor = site.api.browser()
        account = {
            "email": "solo@example.test",
            "password": "solo password",
            "organization": "Solo",
        }
        assert visitor.post("/register", data=account).status_code == 303
        early = visitor.post("/login", data=account)
        assert early.status_code == 401
        assert "confirm your e-mail address first" in early.text.lower()
        token = _mailed_token(store, "solo@example.test", CONFIRM_PATH)
        confirmed = visitor.post(CONFIRM_PATH, data={"token": token})
        assert (confirmed.status_code, confirmed.headers["location"]) == (303, "/login")
        assert visitor.post("/login", data=account).headers["location"] == "/"
