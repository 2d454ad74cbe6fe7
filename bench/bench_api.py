"""Benchmark `smtpy api` over a large message log: latency of the message list and the stats,
requests per second with an API key, and the API process's memory.

    .venv/bin/python bench/bench_api.py [--rows 1000000] [--requests 200]
        [--postgres postgresql://smtpy:smtpy@127.0.0.1:5432/smtpy] [--no-sqlite]

On each store (a temporary SQLite file; with `--postgres`, a temporary database
created next to the one the URL names and dropped at the end), it seeds an
organization with 20 domains and `--rows` message-log rows spread over the last
30 days (bulk insert: executemany on SQLite, COPY on PostgreSQL), starts the real
`smtpy api` on a free loopback port, and measures:

- GET /api/v1/messages: the first page, a deep page (a cursor half-way down the
  log), and filtered pages (one domain; one status): p50 and p99 of `--requests`
  sequential requests each, against the 50 ms p99 target;
- GET /api/v1/stats for 30 days at day interval: p50 and p99 against 300 ms;
- GET /api/v1/domains with an API key from 50 concurrent clients (httpx async):
  requests per second, bounded by a count and by time;
- the API process's memory (PSS and RSS from /proc) after the load.

Figures are client-side wall-clock times over loopback HTTP. Every wait is
bounded: the benchmark stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from smtpy.accounts import api_keys
from smtpy.admin.domains import DomainCreate, add_domain
from smtpy.store.db import Database
from smtpy.store.pages import encode_cursor

DAYS = 30
DOMAINS = 20
LIST_TARGET = 0.050  # seconds, p99 of GET /messages
STATS_TARGET = 0.300  # seconds, GET /stats 30 days by day
CONCURRENCY = 50
RPS_REQUESTS = 5000  # at most this many requests in the throughput run
RPS_SECONDS = 20.0  # and at most this long
START_TIMEOUT = 60.0
REQUEST_TIMEOUT = 30.0
# event → share of the rows (a forwarder's usual mix)
MIX = {
    "received": 0.45,
    "delivered": 0.40,
    "rejected": 0.07,
    "deferred": 0.05,
    "bounced": 0.03,
}
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


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def domain_names() -> list[str]:
    return [f"d{n:02d}.bench.example" for n in range(DOMAINS)]


def log_rows(count: int, now: float) -> Iterator[tuple[object, ...]]:
    """`count` rows, oldest first, evenly over the last DAYS days."""
    rng = random.Random(7)
    events = list(MIX)
    weights = list(MIX.values())
    names = domain_names()
    start = now - DAYS * 86400
    step = DAYS * 86400 / count
    for n in range(count):
        event = rng.choices(events, weights)[0]
        domain = names[n % DOMAINS]
        user = f"user{n % 500}@{domain}"
        rejected = event == "rejected"
        yield (
            start + n * step,
            event,
            None if rejected else uuid.UUID(int=rng.getrandbits(128)).hex[:16].upper(),
            f"198.51.100.{n % 250}",
            f"sender{n % 3000}@sender{n % 97}.example",
            user,
            None if rejected else f"box{n % 500}@mailbox.example",
            domain,
            2000 + n % 50_000,
            "unknown_user" if rejected else None,
            550 if rejected else (250 if event == "delivered" else None),
            "550 5.1.1 no such user" if rejected else None,
            "mx.mailbox.example" if event in ("delivered", "deferred", "bounced") else None,
            1.5 if event == "delivered" else None,
        )


def seed(url: str, rows: int) -> tuple[str, float]:
    """The organization, its domains and API key, and the log rows; (key, now)."""
    now = time.time()
    with Database(url) as db:
        org = db.insert(
            "INSERT INTO organizations (name, created_at) VALUES ('bench', :now) RETURNING id",
            {"now": now},
        )
        for name in domain_names():
            add_domain(db=db, org=org, domain=DomainCreate(name=name, key_algorithm="ed25519"))
        key = api_keys.create_key(db=db, org=org, name="bench").key
    load_log(url, rows, now)
    return key, now


def load_log(url: str, rows: int, now: float) -> None:
    """Bulk-load `rows` message-log rows (`log_rows`), then refresh the planner's statistics."""
    started = time.perf_counter()
    if url.startswith("sqlite"):
        import sqlite3

        lite = sqlite3.connect(url.removeprefix("sqlite:///"))
        lite.execute("PRAGMA synchronous = OFF")
        placeholders = ", ".join("?" for _ in COLUMNS)
        with lite:
            lite.executemany(
                f"INSERT INTO message_log ({', '.join(COLUMNS)}) VALUES ({placeholders})",
                log_rows(rows, now),
            )
        lite.execute("PRAGMA analysis_limit = 1000")
        lite.execute("ANALYZE")
        lite.close()
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
            conn.execute("VACUUM ANALYZE message_log")  # visibility map: index-only scans
    print(f"  seeded {rows:,} rows in {time.perf_counter() - started:.1f} s")


def deep_cursor(url: str, offset: int) -> str:
    """The cursor a client would hold after paging `offset` rows down the newest-first list."""
    with Database(url, create=False) as db:
        row = db.one(
            "SELECT at, id FROM message_log ORDER BY at DESC, id DESC LIMIT 1 OFFSET :n",
            {"n": offset},
        )
    assert row is not None
    return encode_cursor(float(row["at"]), int(row["id"]))


@dataclass
class Api:
    proc: subprocess.Popen[bytes]
    base_url: str


@contextlib.contextmanager
def running_api(url: str, state_dir: str, **settings: str) -> Iterator[Api]:
    """The real `smtpy api` on a free port, with `settings` (SMTPY_… names) added."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMTPY_")}
    env.update(
        {
            "SMTPY_DATABASE_URL": url,
            "SMTPY_HOSTNAME": "mx.bench.example",
            "SMTPY_STATE_DIR": state_dir,
            "SMTPY_API_LISTEN": f"127.0.0.1:{port}",
            **settings,
        }
    )
    # Its log (a line per request) goes to a file: a pipe nobody reads would fill and stall it.
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    errors = Path(state_dir) / f"api-{port}.log"
    with errors.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "smtpy", "api"], env=env, stdout=sink, stderr=sink
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                sys.exit(f"smtpy api exited {proc.returncode}: {errors.read_text()[-2000:]}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                sys.exit("smtpy api did not answer /healthz in time")
            time.sleep(0.05)
        yield Api(proc, base)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def latency(client: httpx.Client, path: str, requests: int) -> tuple[float, float]:
    """p50 and p99 seconds of `requests` sequential GETs (after five warm-up ones)."""
    times = []
    for n in range(requests + 5):
        start = time.perf_counter()
        response = client.get(path)
        elapsed = time.perf_counter() - start
        if response.status_code != 200:
            sys.exit(f"GET {path}: {response.status_code} {response.text[:300]}")
        if n >= 5:
            times.append(elapsed)
    return statistics.median(times), percentile(times, 0.99)


async def throughput(base: str, key: str) -> tuple[float, int, int]:
    """(requests per second, done, failed) of GET /api/v1/domains from CONCURRENCY clients."""
    done = failed = 0
    deadline = time.monotonic() + RPS_SECONDS
    budget = iter(range(RPS_REQUESTS))
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(
        base_url=base,
        headers={"Authorization": f"Bearer {key}"},
        limits=limits,
        timeout=REQUEST_TIMEOUT,
    ) as client:

        async def worker() -> None:
            nonlocal done, failed
            for _ in budget:
                if time.monotonic() > deadline:
                    return
                try:
                    response = await client.get("/api/v1/domains")
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                done += ok
                failed += not ok

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        elapsed = time.perf_counter() - started
    return done / elapsed, done, failed


def memory(pid: int) -> tuple[float, float]:
    """(PSS, RSS) in MiB of a process, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, _, rest = line.partition(":")
        fields[name.strip()] = int(rest.split()[0])
    return fields.get("Pss", 0) / 1024, fields.get("Rss", 0) / 1024


def run_store(label: str, url: str, rows: int, requests: int, state_dir: str) -> list[str]:
    print(f"{label}: seeding")
    key, _ = seed(url, rows)
    cursor = deep_cursor(url, rows // 2)
    lines = []
    with (
        running_api(url, state_dir) as api,
        httpx.Client(
            base_url=api.base_url,
            headers={"Authorization": f"Bearer {key}"},
            timeout=REQUEST_TIMEOUT,
        ) as client,
    ):
        cases = [
            ("messages, first page", "/api/v1/messages", LIST_TARGET),
            (
                f"messages, deep page (row {rows // 2:,})",
                f"/api/v1/messages?cursor={cursor}",
                LIST_TARGET,
            ),
            ("messages, domain=d07", "/api/v1/messages?domain=d07.bench.example", LIST_TARGET),
            ("messages, status=bounced", "/api/v1/messages?status=bounced", LIST_TARGET),
            (
                "messages, domain + deep",
                f"/api/v1/messages?domain=d07.bench.example&cursor={cursor}",
                LIST_TARGET,
            ),
            ("stats, 30 days by day", "/api/v1/stats?interval=day", STATS_TARGET),
        ]
        for name, path, target in cases:
            p50, p99 = latency(
                client, path, requests if "stats" not in name else max(20, requests // 5)
            )
            verdict = "ok" if p99 <= target else "SLOW"
            lines.append(
                f"{label:<10} {name:<34} {p50 * 1000:>8.1f} {p99 * 1000:>8.1f}   <{target * 1000:.0f} ms {verdict}"
            )
            print(lines[-1])
        rps, done, failed = asyncio.run(throughput(api.base_url, key))
        lines.append(
            f"{label:<10} {'domains, 50 clients (req/s)':<34} {rps:>8.0f} {'':>8}   {done} ok, {failed} failed"
        )
        print(lines[-1])
        pss, rss = memory(api.proc.pid)
        lines.append(
            f"{label:<10} {'API process memory (MiB)':<34} {pss:>8.1f} {rss:>8.1f}   PSS, RSS"
        )
        print(lines[-1])
    return lines


@contextlib.contextmanager
def postgres_database(url: str) -> Iterator[str]:
    import psycopg

    name = f"smtpy_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    base, _, _ = url.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="message-log rows to seed")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per case")
    parser.add_argument("--postgres", help="a PostgreSQL URL whose role may create databases")
    parser.add_argument("--no-sqlite", action="store_true", help="PostgreSQL only")
    args = parser.parse_args()
    rows = max(1000, min(args.rows, 20_000_000))
    requests = max(10, min(args.requests, 10_000))

    lines = []
    with tempfile.TemporaryDirectory(prefix="smtpy-bench-api-") as tmp:
        if not args.no_sqlite:
            url = f"sqlite:///{Path(tmp) / 'smtpy.db'}"
            lines += run_store("SQLite", url, rows, requests, tmp)
        if args.postgres:
            with postgres_database(args.postgres) as url:
                from smtpy.store.migrate import upgrade

                upgrade(url)
                lines += run_store("PostgreSQL", url, rows, requests, tmp)
    print()
    print(f"smtpy api, {rows:,} message-log rows over {DAYS} days, {requests} requests per case")
    print(f"{'store':<10} {'case':<34} {'p50 ms':>8} {'p99 ms':>8}   target")
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
