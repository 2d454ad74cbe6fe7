"""The dashboard's signed-out pages in Chromium: sign in and out, the 2FA step, the keyboard,
the theme, a phone's width and an axe-core scan of each page."""

from __future__ import annotations

import time

import pyotp
from playwright.sync_api import Page, expect

from browser import (  # noqa: F401
    Dashboard,
    assert_accessible,
    browser,
    dashboard,
    new_page,
    shared_dashboard,
    sign_in,
    signed_in,
)

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
    expect(page.locator(".form-error")).to_have_text("The e-mail address or the password is wrong.")

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
    expect(page.locator("#f-code-error")).to_contain_text("The code is wrong")

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
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, f"{path} is {width} px wide at 390 px"
            assert_accessible(page)
        page.context.close()


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
        "The password is too short: use at least 10 characters."
    )
    expect(page.get_by_label("E-mail address")).to_have_value("new@example.test")
    expect(page.get_by_label("E-mail address")).not_to_have_attribute("aria-invalid", "true")
    page.context.close()
