"""Benchmark the message-log reads on a big log: `smtpy stats`, `smtpy log`, `smtpy status`.

    .venv/bin/python bench/bench_stats.py [--rows 1000000] [--postgres URL] [--runs 3]

Fills a fresh store with `--rows` message-log rows spread over 30 days (a
realistic mix: received, forwarded, deferred, bounced, discarded, rejected by
reason; 200 domains, 5,000 aliases), then times each query the commands run,
on SQLite and, when `--postgres` or SMTPY_TEST_POSTGRES_URL names a database
whose role may create databases, on PostgreSQL (in a scratch database that is
dropped afterwards). Prints the fastest of `--runs` runs of each query, in
milliseconds. The fill is a bulk insert (executemany in large transactions on
SQLite, COPY on PostgreSQL), bounded by `--rows`.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from smtpy.admin.messages import LogFilter, recent
from smtpy.admin.organizations import resolve_organization
from smtpy.admin.stats import compute
from smtpy.admin.status import status
from smtpy.queue.message_log import LogEvent, prune, refresh_statistics, write_events
from smtpy.store.db import Database

DAYS = 30
DOMAINS = 200
ALIASES = 5_000
MAX_ROWS = 5_000_000
CHUNK = 50_000

# (event, weight, reason)
MIX: list[tuple[str, float, str | None]] = [
    ("received", 0.35, None),
    ("delivered", 0.33, None),
    ("deferred", 0.05, None),
    ("bounced", 0.02, None),
    ("discarded", 0.01, "alias_discard"),
    ("rejected", 0.12, "unknown_user"),
    ("rejected", 0.08, "relay"),
    ("rejected", 0.03, "rate_limit"),
    ("rejected", 0.01, "too_big"),
]


def generate(rows: int, now: float, seed: int = 1) -> Iterator[LogEvent]:
    """`rows` events, oldest first, over the last `DAYS` days."""
    rng = random.Random(seed)
    kinds = [(event, reason) for event, _, reason in MIX]
    weights = [weight for _, weight, _ in MIX]
    start = now - DAYS * 86400
    step = DAYS * 86400 / rows
    picks = rng.choices(range(len(kinds)), weights, k=rows)
    for n in range(rows):
        event, reason = kinds[picks[n]]
        alias_n = int(rng.paretovariate(1.2)) % ALIASES
        domain = f"domain{alias_n % DOMAINS}.example"
        yield LogEvent(
            at=start + n * step,
            event=event,
            queue_id=f"Q{n // 3:015d}",
            client_ip=f"192.0.2.{n % 250}",
            sender=f"sender{n % 997}@senders.example",
            alias=f"user{alias_n}@{domain}",
            recipient=f"box{alias_n}@mailbox.example" if event != "rejected" else None,
            domain=domain,
            size=2000 + n % 50_000,
            reason=reason,
            code=250
            if event == "delivered"
            else (550 if event in ("rejected", "bounced") else None),
            reply="2.0.0 Ok: queued" if event == "delivered" else None,
            remote_host="mx.mailbox.example[198.51.100.7]" if event == "delivered" else None,
            delay=rng.expovariate(1 / 3.0) if event in ("delivered", "bounced") else None,
        )


def fill_sqlite(db: Database, rows: int, now: float) -> None:
    batch: list[LogEvent] = []
    for event in generate(rows, now):
        batch.append(event)
        if len(batch) == CHUNK:
            with db.transaction():
                write_events(db, batch)
            batch = []
    if batch:
        with db.transaction():
            write_events(db, batch)
    refresh_statistics(db)  # what the daemon's upkeep does hourly


def fill_postgres(url: str, rows: int, now: float) -> None:
    import psycopg

    from smtpy.queue.message_log import LogEvent as Row

    columns = list(Row.__dataclass_fields__)
    with psycopg.connect(url) as conn, conn.cursor() as cursor:
        with cursor.copy(f"COPY message_log ({', '.join(columns)}) FROM STDIN") as copy:
            for event in generate(rows, now):
                copy.write_row([getattr(event, c) for c in columns])
        conn.commit()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE message_log")


def org(db: Database) -> int:
    """The default organization, as the CLI resolves it for each command."""
    return resolve_organization(db=db).id


def queries(now: float) -> list[tuple[str, Callable[[Database], Any]]]:
    week = now - 7 * 86400
    month = now - DAYS * 86400
    return [
        ("stats --since 7d", lambda db: compute(db=db, org=org(db), since=week, until=now)),
        ("stats --since 30d", lambda db: compute(db=db, org=org(db), since=month, until=now)),
        ("stats --since 24h", lambda db: compute(db=db, org=org(db), since=now - 86400, until=now)),
        (
            "stats --since 7d --by domain",
            lambda db: compute(db=db, org=org(db), since=week, until=now, by="domain"),
        ),
        (
            "stats --since 7d --by alias",
            lambda db: compute(db=db, org=org(db), since=week, until=now, by="alias"),
        ),
        (
            "stats --since 30d --by day",
            lambda db: compute(db=db, org=org(db), since=month, until=now, by="day"),
        ),
        ("log (newest 100)", lambda db: recent(db=db, org=org(db), flt=LogFilter(), limit=100)),
        (
            "log --domain D (newest 100)",
            lambda db: recent(
                db=db, org=org(db), flt=LogFilter(domain="domain7.example"), limit=100
            ),
        ),
        (
            "log --alias A --since 7d",
            lambda db: recent(
                db=db,
                org=org(db),
                flt=LogFilter(alias="user42@domain42.example", since=week),
                limit=100,
            ),
        ),
        (
            "log --event bounced (newest 100)",
            lambda db: recent(db=db, org=org(db), flt=LogFilter(event="bounced"), limit=100),
        ),
        ("status", lambda db: status(db, now=now)),
    ]


def time_queries(db: Database, now: float, runs: int) -> None:
    for name, query in queries(now):
        best = float("inf")
        for _ in range(runs):
            started = time.perf_counter()
            query(db)
            best = min(best, time.perf_counter() - started)
        print(f"  {name:<36} {best * 1000:9.1f} ms")
    started = time.perf_counter()
    deleted = prune(db, before=now - (DAYS - 1) * 86400)
    print(
        f"  {'prune one batch (' + str(deleted) + ' rows)':<36} {(time.perf_counter() - started) * 1000:9.1f} ms"
    )


def bench_sqlite(rows: int, runs: int) -> None:
    directory = Path(tempfile.mkdtemp(prefix="smtpy-bench-stats-"))
    try:
        url = f"sqlite:///{directory / 'smtpy.db'}"
        now = time.time()
        with Database(url) as db:
            started = time.perf_counter()
            fill_sqlite(db, rows, now)
            elapsed = time.perf_counter() - started
            size = (directory / "smtpy.db").stat().st_size / 1e6
            print(
                f"SQLite: {rows:,} rows written in {elapsed:.1f} s ({rows / elapsed:,.0f} rows/s), {size:,.0f} MB"
            )
            time_queries(db, now, runs)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def bench_postgres(base_url: str, rows: int, runs: int) -> None:
    import psycopg

    from smtpy.store.migrate import upgrade

    name = f"smtpy_bench_{uuid.uuid4().hex[:10]}"
    url = f"{base_url.rpartition('/')[0]}/{name}"
    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        upgrade(url)
        now = time.time()
        started = time.perf_counter()
        fill_postgres(url, rows, now)
        elapsed = time.perf_counter() - started
        print(
            f"PostgreSQL: {rows:,} rows written in {elapsed:.1f} s (COPY, {rows / elapsed:,.0f} rows/s)"
        )
        with Database(url) as db:
            time_queries(db, now, runs)
    finally:
        with psycopg.connect(base_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="log rows to fill (max 5M)")
    parser.add_argument("--runs", type=int, default=3, help="runs per query (the fastest counts)")
    parser.add_argument(
        "--postgres",
        default=os.environ.get("SMTPY_TEST_POSTGRES_URL", ""),
        help="PostgreSQL URL whose role may create databases (default: SMTPY_TEST_POSTGRES_URL)",
    )
    parser.add_argument("--no-sqlite", action="store_true", help="only PostgreSQL")
    args = parser.parse_args()
    rows = max(1, min(args.rows, MAX_ROWS))
    runs = max(1, min(args.runs, 20))
    if not args.no_sqlite:
        bench_sqlite(rows, runs)
    if args.postgres:
        bench_postgres(args.postgres, rows, runs)


if __name__ == "__main__":
    main()
