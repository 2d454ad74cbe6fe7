"""What the mail pages' browser tests share: a browser, signing in, keyboard-only moves,
and the axe-core scan.

The browser is Debian's Chromium driven by Playwright (never a downloaded one).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from playwright.sync_api import Browser, Locator, Page, sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TABS = 150  # the most Tab presses that may lead to one control


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


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


def sign_in(page: Page, base_url: str, email: str, password: str) -> None:
    """The sign-in page, with the keyboard alone; lands on the overview."""
    page.goto(base_url + "/login")
    type_into(page, page.get_by_label("E-mail address"), email)
    type_into(page, page.get_by_label("Password"), password)
    page.keyboard.press("Enter")
    page.wait_for_url(base_url + "/")


def serious_violations(page: Page) -> list[dict[str, Any]]:
    """axe-core's serious and critical findings on the page as it is now."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page)
    return [
        {"id": v["id"], "impact": v["impact"], "nodes": [n["html"][:200] for n in v["nodes"][:3]]}
        for v in results.response["violations"]
        if v["impact"] in ("serious", "critical")
    ]
