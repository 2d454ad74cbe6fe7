"""The dashboard's critical path in a real browser, with the keyboard alone, against the
real `smtpy api` and `smtpy serve` on loopback, on SQLite and PostgreSQL:

sign in, add a domain (pending), read its records off the page and publish them on the
loopback DNS server, verify it, add an alias, send a real message through `smtpy serve`
to a real SMTP sink, watch it appear in the message list as delivered without reloading,
open its page, and find it counted on the overview and in the statistics.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from browser import Dashboard, browser, dashboard, new_page  # noqa: F401
from conftest import Cli
from dnsserver import DNSServer
from mailpeers import (
    DEST1,
    DEST2,
    HOSTNAME,
    SENDER,
    SENDER_MX,
    MailPeers,
    Serve,
    make_message,
    send,
)
from webpages import activate, sign_in_by_keyboard, type_into

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

DOMAIN = "example.test"
WAIT = 30_000  # ms a page may take to show what the test waits for


def publish_world(dns: DNSServer) -> None:
    """The destinations' and the sender's MX hosts, as in mailpeers.forwarding_world."""
    for domain, host, address in (
        ("dest1.test", "mx.dest1.test", DEST1),
        ("dest2.test", "mx.dest2.test", DEST2),
        ("sender.test", "mx.sender.test", SENDER_MX),
    ):
        dns.add(domain, "MX", f"10 {host}.")
        dns.add(host, "A", address)
    dns.add(HOSTNAME, "A", "127.0.0.1")


def publish_records_shown(page: Page, dns: DNSServer) -> int:
    """Every record of the domain's page, published as the page shows it."""
    rows = page.locator("table.records tbody tr")
    for n in range(rows.count()):
        cells = rows.nth(n).locator("td")
        rtype = cells.nth(0).inner_text().strip()
        name = cells.nth(1).locator("code").inner_text().strip()
        value = cells.nth(2).locator("code").inner_text().strip()
        dns.add(name, rtype, value)
    return rows.count()


def test_critical_path_by_keyboard(
    browser: Browser,  # noqa: F811
    dashboard: Dashboard,  # noqa: F811
    cli_env: dict[str, str],
    dns_server: DNSServer,
    tmp_path: Path,
) -> None:
    publish_world(dns_server)
    owner = dashboard.user
    with MailPeers([DEST1, DEST2, SENDER_MX]) as peers:
        base = dashboard.api.base_url
        page = new_page(browser)
        sign_in_by_keyboard(page, base, owner["email"], owner["password"])

        # Add a domain: it stays pending until verified.
        activate(
            page, page.get_by_role("navigation", name="Main").get_by_role("link", name="Domains")
        )
        page.wait_for_url(base + "/domains")
        type_into(page, page.get_by_label("Domain name"), DOMAIN)
        page.keyboard.press("Enter")
        page.wait_for_url(f"{base}/domains/{DOMAIN}")
        expect(page.locator(".flash")).to_contain_text(f"{DOMAIN} was added")
        expect(page.locator("h1")).to_contain_text("pending verification")

        # Its records: MX, SPF, DKIM, DMARC, ownership, the forwarder's SPF; the live
        # status finds the ownership record missing before it is published.
        expect(page.locator("table.records")).to_contain_text("_smtpy." + DOMAIN)
        expect(page.locator('[data-record-status="ownership"]')).to_have_text(
            "missing", timeout=WAIT
        )
        assert publish_records_shown(page, dns_server) == 6

        activate(page, page.get_by_role("button", name="Verify now"))
        expect(page.locator(".flash")).to_contain_text(f"{DOMAIN} is verified", timeout=WAIT)
        expect(page.locator("h1")).to_contain_text("verified")
        expect(page.locator('[data-record-status="ownership"]')).to_have_text("ok", timeout=WAIT)

        # An alias with two destinations.
        type_into(page, page.get_by_label(f"Address before @{DOMAIN}"), "team")
        type_into(page, page.get_by_label("Destinations"), "bob@dest1.test\ncarol@dest2.test")
        activate(page, page.get_by_role("button", name="Add alias"))
        expect(page.locator(".flash")).to_contain_text(f"Alias team@{DOMAIN} was added")
        expect(page.locator("#alias-table")).to_contain_text("bob@dest1.test, carol@dest2.test")
        # Addresses added in the dashboard wait for their owners' confirmation (the mailed
        # links are followed in test_destinations.py); here the operator confirms them.
        expect(page.locator("#alias-table")).to_contain_text("pending confirmation")
        for address in ("bob@dest1.test", "carol@dest2.test"):
            assert Cli(cli_env)("destination", "confirm", address).code == 0

        # The message list, open while the mail is sent: it must show it without a reload.
        activate(
            page, page.get_by_role("navigation", name="Main").get_by_role("link", name="Messages")
        )
        page.wait_for_url(base + "/messages")
        page.evaluate("window.smtpyNotReloaded = true")

        daemon = Serve(
            {
                **cli_env,
                "SMTPY_DELIVERY_PORT": str(peers.port),
                "SMTPY_RETRY_SCHEDULE": "1",
                "SMTPY_NODE_NAME": "node-0",
            },
            tmp_path / "serve.log",
        )
        daemon.start()
        try:
            message_id = f"<{uuid.uuid4().hex}@sender.test>"
            data = make_message(message_id=message_id, to=f"team@{DOMAIN}")
            assert send(daemon.port, SENDER, [f"team@{DOMAIN}"], data) == {}
            peers.wait_for(
                lambda got: len({r.host for r in got if r.message_id == message_id}) == 2
            )

            delivered = page.locator("#message-rows tr", has_text="delivered")
            expect(delivered).to_have_count(2, timeout=WAIT)
            expect(page.locator("#message-rows tr", has_text="received")).to_have_count(1)
            assert page.evaluate("window.smtpyNotReloaded") is True, "the page was reloaded"

            # Its page: the envelope, both deliveries, the remote's reply.
            activate(page, delivered.first.get_by_role("link"))
            page.wait_for_url(f"{base}/messages/*")
            expect(page.locator("#message-status")).to_have_text("delivered")
            expect(page.locator("main")).to_contain_text(SENDER)
            expect(page.locator("main")).to_contain_text("250 2.0.0 Ok: queued")
            expect(page.locator("main")).to_contain_text("carol@dest2.test")
        finally:
            assert daemon.stop() == 0, daemon.log_tail()

        # Counted on the overview (today: 1 received, 2 forwarded) and in the statistics.
        activate(
            page, page.get_by_role("navigation", name="Main").get_by_role("link", name="Overview")
        )
        page.wait_for_url(base + "/")
        today = page.locator(".figures").first
        expect(today.locator('[data-figure="received"]')).to_have_text("1")
        expect(today.locator('[data-figure="forwarded"]')).to_have_text("2")
        expect(page.locator("#activity")).to_contain_text("delivered")

        activate(
            page, page.get_by_role("navigation", name="Main").get_by_role("link", name="Statistics")
        )
        page.wait_for_url(base + "/stats")
        expect(page.locator('[data-total="received"]')).to_have_text("1")
        expect(page.locator('[data-total="forwarded"]')).to_have_text("2")
        expect(page.locator("#domain-table")).to_contain_text(DOMAIN)
