"""Keyboard-only moves for the mail pages' browser tests (the browser, the dashboard and
the axe scan come from tests/browser.py)."""

from __future__ import annotations

from playwright.sync_api import Locator, Page

TABS = 150  # the most Tab presses that may lead to one control


def focused(locator: Locator) -> bool:
    return bool(locator.evaluate("el => el === document.activeElement"))


def tab_to(page: Page, locator: Locator, limit: int = TABS) -> None:
    """Press Tab until `locator` has the keyboard focus (as a keyboard user would reach it)."""
    target = locator.first
    target.wait_for(state="visible")
    for _ in range(limit):
        page.keyboard.press("Tab")
        if focused(target):
            return
    raise AssertionError(f"{locator} cannot be reached with the Tab key in {limit} presses")


def activate(page: Page, locator: Locator) -> None:
    """Reach a link or button with Tab and press Enter on it."""
    tab_to(page, locator)
    page.keyboard.press("Enter")


def type_into(page: Page, locator: Locator, text: str) -> None:
    """Reach a field with Tab and type `text` into it."""
    tab_to(page, locator)
    page.keyboard.type(text)


def sign_in_by_keyboard(page: Page, base_url: str, email: str, password: str) -> None:
    """The sign-in page, with the keyboard alone; lands on the overview."""
    page.goto(base_url + "/login")
    type_into(page, page.get_by_label("E-mail address"), email)
    type_into(page, page.get_by_label("Password"), password)
    page.keyboard.press("Enter")
    page.wait_for_url(base_url + "/")
