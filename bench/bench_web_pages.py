"""Benchmark the dashboard's mail pages over a large message log: server time per page,
bytes of HTML, JavaScript and CSS each page makes the browser fetch (gzip), and the time
to first render of the overview in Chromium.

    .venv/bin/python bench/bench_web_pages.py [--rows 100000] [--requests 100]
        [--postgres postgresql://smtpy:smtpy@127.0.0.1:5432/smtpy] [--no-sqlite]

On each store it seeds what bench_api.py seeds (an organization with 20 domains and
`--rows` message-log rows over the last 30 days) plus a signed-in owner, starts the
real `smtpy api`, and requests each page `--requests` times in a row (after five
warm-up requests) with the session cookie: p50 and p99 wall-clock time over loopback,
against the issue's 100 ms p99. Bytes: the page's HTML and every script and
stylesheet it links (same origin, vendored), each gzip-compressed at level 6 as a
reverse proxy would send them. First render: Playwright driving Debian's Chromium
(/usr/bin/chromium), `first-contentful-paint` of `/` in a fresh context, median of
five loads (skipped without Chromium).
"""

from __future__ import annotations

import argparse
import gzip
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from bench_api import (
    DAYS,
    domain_names,
    latency,
    postgres_database,
    running_api,
    seed,
)
from bench_web import CHROMIUM, CHROMIUM_ARGS

from smtpy.accounts import members, users
from smtpy.store.db import Database

PAGE_TARGET = 0.100  # seconds, p99 of each page
PASSWORD = "correct horse battery staple"
ASSET = re.compile(r'<(?:script[^>]*\bsrc|link[^>]*\bhref)="(/static/[^"]+)"')


def seed_owner(url: str) -> str:
    """An owner of the benchmark's organization; their e-mail address."""
    email = "owner@bench.example"
    with Database(url) as db:
        org = int(db.scalar("SELECT id FROM organizations WHERE name = 'bench'"))
        user = users.create_user(db=db, email=email, password=PASSWORD)
        members.add_member(db=db, org=org, user_id=user.id, role="owner")
    return email


def pages(url: str) -> list[str]:
    with Database(url, create=False) as db:
        queue_id = db.scalar(
            "SELECT queue_id FROM message_log WHERE event = 'delivered' ORDER BY id DESC LIMIT 1"
        )
    domain = domain_names()[0]
    return [
        "/",
        "/domains",
        f"/domains/{domain}",
        "/messages",
        f"/messages?status=delivered&domain={domain}",
        "/messages?q=sender42",
        "/messages?q=nobody-wrote-this",  # the worst case: every row of the month is read
        f"/messages/{queue_id}",
        "/stats",
        "/stats?interval=hour",
    ]


def gzipped(data: bytes) -> int:
    return len(gzip.compress(data, compresslevel=6))


def page_bytes(client: httpx.Client, path: str) -> tuple[int, int]:
    """(HTML, scripts and stylesheets) in gzip bytes."""
    html = client.get(path).content
    assets = sorted(set(ASSET.findall(html.decode())))
    return gzipped(html), sum(gzipped(client.get(asset).content) for asset in assets)


def first_render(base: str, cookies: httpx.Cookies) -> float | None:
    """Median first-contentful-paint of the overview, in seconds (None without Chromium)."""
    if not os.path.exists(CHROMIUM):
        return None
    from playwright.sync_api import sync_playwright

    times = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for _ in range(5):
            context = browser.new_context()
            context.add_cookies(
                [{"name": c.name, "value": c.value or "", "url": base} for c in cookies.jar]
            )
            page = context.new_page()
            page.goto(base + "/")
            paint = page.evaluate(
                "new Promise(done => new PerformanceObserver((list, observer) => {"
                " const e = list.getEntriesByName('first-contentful-paint')[0];"
                " if (e) { observer.disconnect(); done(e.startTime); } })"
                ".observe({type: 'paint', buffered: true}))"
            )
            times.append(float(paint) / 1000)
            context.close()
        browser.close()
    return statistics.median(times)


def run_store(label: str, url: str, rows: int, requests: int, state_dir: str) -> list[str]:
    print(f"{label}: seeding")
    seed(url, rows)
    email = seed_owner(url)
    lines = []
    with (
        running_api(url, state_dir) as api,
        httpx.Client(base_url=api.base_url, timeout=30) as client,
    ):
        answer = client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
        if answer.status_code != 200:
            sys.exit(f"sign-in failed: {answer.status_code} {answer.text[:300]}")
        for path in pages(url):
            try:
                p50, p99 = latency(client, path, requests)
            except httpx.TimeoutException:
                lines.append(f"{label:<10} {path[:44]:<44} a request took over 30 s")
                continue
            html, assets = page_bytes(client, path)
            verdict = "ok" if p99 < PAGE_TARGET else "OVER"
            lines.append(
                f"{label:<10} {path[:44]:<44} {p50 * 1000:>7.1f} {p99 * 1000:>7.1f}"
                f" {html / 1024:>7.1f} {assets / 1024:>8.1f}   {verdict}"
            )
        try:
            paint = first_render(api.base_url, client.cookies)
        except Exception as exc:  # a figure missing, not a crash
            lines.append(f"{label:<10} first render of / not measured: {str(exc).splitlines()[0]}")
            paint = None
        if paint is not None:
            lines.append(
                f"{label:<10} first render of / in Chromium (FCP, median of 5): {paint * 1000:.0f} ms"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="message-log rows to seed")
    parser.add_argument("--requests", type=int, default=100, help="timed requests per page")
    parser.add_argument("--postgres", help="a PostgreSQL URL whose role may create databases")
    parser.add_argument("--no-sqlite", action="store_true", help="PostgreSQL only")
    args = parser.parse_args()
    rows = max(1000, min(args.rows, 5_000_000))
    requests = max(10, min(args.requests, 5_000))
    lines = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="smtpy-bench-web-") as tmp:
        if not args.no_sqlite:
            lines += run_store("SQLite", f"sqlite:///{Path(tmp) / 'smtpy.db'}", rows, requests, tmp)
        if args.postgres:
            with postgres_database(args.postgres) as url:
                from smtpy.store.migrate import upgrade

                upgrade(url)
                lines += run_store("PostgreSQL", url, rows, requests, tmp)
    print()
    print(
        f"dashboard pages, {rows:,} message-log rows over {DAYS} days, {requests} requests per page"
    )
    print(
        f"{'store':<10} {'page':<44} {'p50 ms':>7} {'p99 ms':>7} {'HTML KiB':>7}"
        f" {'JS+CSS KiB':>8}   p99 < {PAGE_TARGET * 1000:.0f} ms (gzip sizes)"
    )
    for line in lines:
        print(line)
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
