"""Benchmark the dashboard: server time per page over a large message log, the JavaScript and
CSS each page loads (gzip), and the overview's time to first render in Chromium.

    .venv/bin/python bench/bench_web.py [--rows 100000] [--requests 200]
        [--postgres postgresql://smtpy:smtpy@127.0.0.1:5432/smtpy]

It makes a store (a temporary SQLite file; with `--postgres`, a temporary database
next to the one the URL names, dropped at the end), seeds an organization with 20
domains, an owner and `--rows` message-log rows over the last 30 days (bulk insert),
starts the real `smtpy api` on a free loopback port, signs in through the form, and
prints:

- per page: p50 and p99 of `--requests` sequential GETs (loopback HTTP, client-side
  wall clock: the server's time plus a loopback round trip), against the issue's
  100 ms p99;
- per page: the bytes of JavaScript and CSS it loads, compressed with gzip (level 6,
  what a reverse proxy typically serves), and of its HTML;
- the overview's first contentful paint in Chromium (/usr/bin/chromium; median of
  10 loads with a warm cache, as a returning user sees it).

Pages that this build does not have (404) are listed as such. Every wait is bounded.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from bench_api import domain_names, load_log, percentile
from bench_api import running_api as api_server

from smtpy.accounts import members, users
from smtpy.admin.domains import DomainCreate, add_domain
from smtpy.store.db import Database

TARGET = 0.100  # seconds, p99 per page (issue 15)
PASSWORD = "correct horse battery staple"
EMAIL = "owner@bench.example"
PAGES = [
    "/",
    "/domains",
    "/domains/d00.bench.example",
    "/messages",
    "/stats",
    "/billing",
    "/webhooks",
    "/settings/profile",
    "/settings/security",
    "/settings/api-keys",
    "/settings/organization",
    "/settings/audit-log",
]
SIGNED_OUT = ["/login", "/register", "/password-reset"]
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


def seed(url: str, rows: int) -> None:
    """The organization, its domains, an owner who signs in, and the log rows."""
    now = time.time()
    with Database(url) as db:
        org = db.insert(
            "INSERT INTO organizations (name, created_at) VALUES ('bench', :now) RETURNING id",
            {"now": now},
        )
        for name in domain_names():
            add_domain(db=db, org=org, domain=DomainCreate(name=name, key_algorithm="ed25519"))
        user = users.create_user(db=db, email=EMAIL, password=PASSWORD)
        members.add_member(db=db, org=org, user_id=user.id, role="owner")
    load_log(url, rows, now)


@contextlib.contextmanager
def running_api(url: str, state_dir: str) -> Iterator[str]:
    """bench_api's server with sign-up open and no DNS query leaving; its base URL."""
    with api_server(
        url,
        state_dir,
        SMTPY_SIGNUP="open",
        SMTPY_DNS_NAMESERVERS="127.0.0.1:9",  # nothing answers: no query leaves
        SMTPY_DNS_TIMEOUT="1",
    ) as api:
        yield api.base_url


def sign_in(client: httpx.Client) -> None:
    answer = client.post("/login", data={"email": EMAIL, "password": PASSWORD, "next": "/"})
    if answer.status_code != 303:
        raise SystemExit(f"signing in failed: {answer.status_code}")


ASSET = re.compile(r'<(?:script[^>]*\ssrc|link[^>]*rel="stylesheet"[^>]*\shref)="([^"]+)"')


def asset_bytes(client: httpx.Client, html: str) -> tuple[int, int, int]:
    """(JavaScript, CSS, HTML) bytes after gzip -6."""
    js = css = 0
    for src in dict.fromkeys(ASSET.findall(html)):
        body = client.get(src).content
        size = len(gzip.compress(body, 6))
        if src.split("?")[0].endswith(".css"):
            css += size
        else:
            js += size
    return js, css, len(gzip.compress(html.encode(), 6))


def measure_pages(base: str, requests: int) -> None:
    print(f"  {'page':<30} {'p50 ms':>8} {'p99 ms':>8}  {'JS gz':>8} {'CSS gz':>8} {'HTML gz':>8}")
    with httpx.Client(base_url=base, timeout=30) as client:
        for signed_in, paths in ((False, SIGNED_OUT), (True, PAGES)):
            if signed_in:
                sign_in(client)
            for path in paths:
                first = client.get(path)
                if first.status_code == 404:
                    print(f"  {path:<30} (no such page in this build)")
                    continue
                if first.status_code != 200:
                    print(f"  {path:<30} answered {first.status_code}")
                    continue
                times = []
                for _ in range(requests):
                    started = time.perf_counter()
                    client.get(path).raise_for_status()
                    times.append(time.perf_counter() - started)
                js, css, html = asset_bytes(client, first.text)
                p99 = percentile(times, 0.99)
                mark = "" if p99 <= TARGET else "  over 100 ms"
                print(
                    f"  {path:<30} {statistics.median(times) * 1000:8.1f} {p99 * 1000:8.1f}"
                    f"  {js:8,} {css:8,} {html:8,}{mark}"
                )


def first_render(base: str, loads: int = 10) -> None:
    if not os.path.exists(CHROMIUM):
        print("  first render: no Chromium at /usr/bin/chromium")
        return
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context()
        context.set_default_timeout(30_000)
        page = context.new_page()
        page.goto(base + "/login")
        page.get_by_label("E-mail address").fill(EMAIL)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(base + "/")
        paints, loaded = [], []
        for _ in range(loads + 1):  # the first load fills the cache
            page.goto(base + "/", wait_until="load")
            page.wait_for_function(
                "performance.getEntriesByName('first-contentful-paint').length > 0"
            )
            paints.append(
                page.evaluate("performance.getEntriesByName('first-contentful-paint')[0].startTime")
            )
            loaded.append(
                page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd")
            )
        browser.close()
    print(
        f"  overview in Chromium: first contentful paint {statistics.median(paints[1:]):.0f} ms,"
        f" load {statistics.median(loaded[1:]):.0f} ms (median of {loads}, warm cache)"
    )


def run(url: str, rows: int, requests: int, label: str) -> None:
    print(f"{label}:")
    seed(url, rows)
    with tempfile.TemporaryDirectory() as state, running_api(url, state) as base:
        measure_pages(base, requests)
        first_render(base)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--postgres", help="a PostgreSQL URL whose role may create databases")
    parser.add_argument("--no-sqlite", action="store_true")
    args = parser.parse_args()
    if not args.no_sqlite:
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite:///{Path(tmp) / 'smtpy.db'}"
            subprocess.run(
                [sys.executable, "-m", "smtpy", "db", "upgrade"],
                env={**os.environ, "SMTPY_DATABASE_URL": url, "SMTPY_STATE_DIR": tmp},
                check=True,
                capture_output=True,
                timeout=120,
            )
            run(url, args.rows, args.requests, "SQLite")
    if args.postgres:
        import psycopg

        from smtpy.store.migrate import upgrade

        name = f"smtpy_bench_web_{os.getpid()}"
        base, _, _ = args.postgres.rpartition("/")
        with psycopg.connect(args.postgres, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
        try:
            url = f"{base}/{name}"
            upgrade(url)
            run(url, args.rows, args.requests, "PostgreSQL")
        finally:
            with psycopg.connect(args.postgres, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
