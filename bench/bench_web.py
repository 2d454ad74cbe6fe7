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
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx

from smtpy.accounts import members, users
from smtpy.admin.domains import DomainCreate, add_domain
from smtpy.store.db import Database

DAYS = 30
DOMAINS = 20
TARGET = 0.100  # seconds, p99 per page (issue 15)
PASSWORD = "correct horse battery staple"
EMAIL = "owner@bench.example"
START_TIMEOUT = 60.0
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
MIX = {"received": 0.45, "delivered": 0.40, "rejected": 0.07, "deferred": 0.05, "bounced": 0.03}
COLUMNS = (
    "at",
    "event",
    "queue_id",
    "client_ip",
    "sender",
    "alias",
    "recipient",
    "domain",
    "size",
    "reason",
    "code",
    "reply",
    "remote_host",
    "delay",
)
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


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def domain_names() -> list[str]:
    return [f"d{n:02d}.bench.example" for n in range(DOMAINS)]


def log_rows(count: int, now: float) -> Iterator[tuple[object, ...]]:
    """`count` message-log rows, oldest first, evenly over the last DAYS days."""
    rng = random.Random(7)
    events, weights = list(MIX), list(MIX.values())
    names = domain_names()
    start = now - DAYS * 86400
    step = DAYS * 86400 / count
    for n in range(count):
        event = rng.choices(events, weights)[0]
        domain = names[n % DOMAINS]
        rejected = event == "rejected"
        yield (
            start + n * step,
            event,
            None if rejected else uuid.UUID(int=rng.getrandbits(128)).hex[:16].upper(),
            f"198.51.100.{n % 250}",
            f"sender{n % 3000}@sender{n % 97}.example",
            f"user{n % 500}@{domain}",
            None if rejected else f"box{n % 500}@mailbox.example",
            domain,
            2000 + n % 50_000,
            "unknown_user" if rejected else None,
            550 if rejected else (250 if event == "delivered" else None),
            "550 5.1.1 no such user" if rejected else None,
            "mx.mailbox.example" if event in ("delivered", "deferred", "bounced") else None,
            1.5 if event == "delivered" else None,
        )


def seed(url: str, rows: int) -> None:
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
    started = time.perf_counter()
    placeholders = ", ".join("?" for _ in COLUMNS)
    if url.startswith("sqlite"):
        import sqlite3

        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        conn.execute("PRAGMA synchronous = OFF")
        with conn:
            conn.executemany(
                f"INSERT INTO message_log ({', '.join(COLUMNS)}) VALUES ({placeholders})",
                log_rows(rows, now),
            )
        conn.execute("ANALYZE")
        conn.close()
    else:
        import psycopg

        with psycopg.connect(url) as conn:
            with (
                conn.cursor() as cur,
                cur.copy(f"COPY message_log ({', '.join(COLUMNS)}) FROM STDIN") as copy,
            ):
                for row in log_rows(rows, now):
                    copy.write_row(row)
            conn.commit()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE message_log")
    print(f"  seeded {rows:,} message-log rows in {time.perf_counter() - started:.1f} s")


@contextlib.contextmanager
def running_api(url: str, state_dir: str) -> Iterator[str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMTPY_")}
    env.update(
        {
            "SMTPY_DATABASE_URL": url,
            "SMTPY_HOSTNAME": "mx.bench.example",
            "SMTPY_STATE_DIR": state_dir,
            "SMTPY_API_LISTEN": f"127.0.0.1:{port}",
            "SMTPY_SIGNUP": "open",
            "SMTPY_DNS_NAMESERVERS": "127.0.0.1:9",  # nothing answers: no query leaves
            "SMTPY_DNS_TIMEOUT": "1",
        }
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "smtpy", "api"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"smtpy api exited with {proc.returncode}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                    break
            time.sleep(0.1)
        else:
            raise SystemExit("smtpy api did not start")
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def sign_in(client: httpx.Client) -> None:
    answer = client.post("/login", data={"email": EMAIL, "password": PASSWORD, "next": "/"})
    if answer.status_code != 303:
        raise SystemExit(f"signing in failed: {answer.status_code}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


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
