"""The dashboard in a real browser: Playwright driving Debian's Chromium (/usr/bin/chromium,
never a downloaded one) against the real `smtpy api` process on loopback.

In a test module:

    from browser import browser, dashboard, signed_in, assert_accessible  # noqa: F401

    def test_something(signed_in: Page, dashboard: Dashboard) -> None:
        signed_in.goto(dashboard.url("/settings/profile"))
        assert_accessible(signed_in)

Fixtures:
- `browser` (per module): Chromium, headless; skips the test when it is not installed.
- `dashboard`: `smtpy api` on the test's store (SQLite and PostgreSQL, `store_url`),
  with an organization and an owner seeded (`seed_org`); `.url(path)`, `.user`.
- `shared_dashboard` (per module, SQLite): the same, shared by a module's tests that
  change nothing the others see.
- `signed_in`: a page (its own browser context: own cookies and storage) signed in
  as that owner through the sign-in form.
- `new_page(browser, **context_options)`: every answer under the API's
  Content-Security-Policy (added when the server sent none); `csp_violations(page)`
  lists what Chromium refused because of it.
- `assert_accessible(page)`: an axe-core scan (bundled by axe-playwright-python,
  offline); fails on serious or critical violations.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from apiserver import ApiServer, seed_org
from conftest import copy_sqlite
from dnsserver import DNSServer

CHROMIUM = os.environ.get("SMTPY_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 20_000  # per action; a loaded machine may be slow, nothing here waits on time

if os.path.exists(CHROMIUM):
    from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright
else:  # pragma: no cover
    Browser = BrowserContext = Page = Any  # type: ignore[misc,assignment]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Chromium for one test module. Not for the session: Playwright's sync API keeps its
    event loop marked as running in this thread while it is started, so any later
    `asyncio.run()` in the same pytest worker (the SMTP and webhook tests) would fail;
    stopping it when the module's last test ends gives the thread back."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium; scripts/test.sh does)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
    with contextlib.suppress(RuntimeError):  # the answer wanted: no loop running here
        asyncio.get_running_loop()
        raise AssertionError("Playwright left an event loop running in this thread")


@dataclass
class Dashboard:
    api: ApiServer
    store_url: str
    user: dict[str, Any]  # seed_org's answer: org, user, email, password, key

    def url(self, path: str) -> str:
        return self.api.base_url + path


def start_dashboard(cli_env: dict[str, str], **settings: str) -> Iterator[Dashboard]:
    with ApiServer(cli_env, **settings) as api:  # migrates the store first
        user = seed_org(cli_env["SMTPY_DATABASE_URL"], org="acme")
        yield Dashboard(api=api, store_url=cli_env["SMTPY_DATABASE_URL"], user=user)


running_dashboard = contextlib.contextmanager(start_dashboard)


@pytest.fixture
def dashboard(cli_env: dict[str, str]) -> Iterator[Dashboard]:
    """On the test's own store (each backend)."""
    yield from start_dashboard(cli_env, SMTPY_SIGNUP="open")


@pytest.fixture(scope="module")
def shared_dashboard(
    tmp_path_factory: pytest.TempPathFactory, dns_session: DNSServer, sqlite_template: Path
) -> Iterator[Dashboard]:
    """One SQLite store and `smtpy api` for a module's tests that change nothing they
    share (pages, themes, widths, the keyboard): starting the process is the slow part."""
    home = tmp_path_factory.mktemp("dashboard")
    copy_sqlite(sqlite_template, home / "smtpy.db")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMTPY_")}
    env.update(
        {
            "SMTPY_DATABASE_URL": f"sqlite:///{home / 'smtpy.db'}",
            "SMTPY_HOSTNAME": "mx.forwarder.test",
            "SMTPY_STATE_DIR": str(home / "state"),
            "SMTPY_DNS_NAMESERVERS": dns_session.nameserver,
            "SMTPY_DNS_TIMEOUT": "2",
            "SMTPY_PROCESSES": "1",
            "HOME": str(home),
        }
    )
    yield from start_dashboard(env, SMTPY_SIGNUP="open")


# The API's Content-Security-Policy (smtpy.api.middleware): pages must work under it.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


def _with_csp(route: Any) -> None:
    """A page: the server's answer, under the CSP if the server sent none. Anything else
    (scripts, fetch() of htmx, event streams) goes through untouched."""
    if route.request.resource_type != "document":
        route.continue_()
        return
    response = route.fetch(max_redirects=0)
    headers = dict(response.headers)
    if "content-security-policy" not in headers:
        headers["content-security-policy"] = CSP
    route.fulfill(response=response, headers=headers)


def new_page(browser: Browser, **options: Any) -> Page:
    """A page in a new context (own cookies and storage), under the CSP; the browser's
    complaints about it are kept in `csp_violations(page)`."""
    context = browser.new_context(**options)
    context.set_default_timeout(TIMEOUT_MS)
    context.route("**/*", _with_csp)
    page = context.new_page()
    violations: list[str] = []
    page.on(
        "console",
        lambda message: (
            violations.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    _violations[id(page)] = violations
    return page


_violations: dict[int, list[str]] = {}


def csp_violations(page: Page) -> list[str]:
    """What the browser refused on this page because of the CSP (inline script, style...)."""
    return _violations.get(id(page), [])


def sign_in(page: Page, dashboard: Dashboard, email: str, password: str, path: str = "/") -> None:
    """Sign in through the form (the page ends on `path`, or on the 2FA step)."""
    page.goto(dashboard.url("/login" + ("" if path == "/" else f"?next={path}")))
    page.get_by_label("E-mail address").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


@pytest.fixture
def signed_in(browser: Browser, dashboard: Dashboard) -> Iterator[Page]:
    page = new_page(browser)
    sign_in(page, dashboard, dashboard.user["email"], dashboard.user["password"])
    page.wait_for_url(dashboard.url("/"))
    yield page
    page.context.close()
    assert csp_violations(page) == []


def assert_fits(page: Page) -> None:
    """The page, once loaded with its stylesheets, does not scroll sideways (a phone's
    screen); a page reached by a click is measured only once it has loaded."""
    page.wait_for_load_state("load")
    overflow = page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    width = page.evaluate("document.documentElement.clientWidth")
    assert overflow <= 1, f"{page.url} scrolls sideways by {overflow} px at {width} px"


def assert_accessible(page: Page) -> None:
    """No serious or critical axe-core violation on the page as it is now."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page)
    bad = [v for v in results.response["violations"] if v.get("impact") in ("serious", "critical")]
    summary = "\n".join(
        f"{v['id']} ({v['impact']}): {v['help']} at "
        + ", ".join(str(n["target"]) for n in v["nodes"][:3])
        for v in bad
    )
    assert not bad, f"{page.url}:\n{summary}"
