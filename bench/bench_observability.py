"""Benchmark what observability costs the daemon: metric updates, a scrape, the queue query.

    .venv/bin/python bench/bench_observability.py [--deliveries 100000]

Prints:
- the cost of the metric updates one forwarded message makes on the hot path
  (a session, a received message, one delivery transaction, two DNS lookups);
- the time to render /metrics (the text exposition of every metric);
- the scrape-time queue query (`metrics_server.queue_snapshot`) on a SQLite queue of
  `--deliveries` pending deliveries (run at most once per 5 s per scrape);
- a cached MTA-STS / TLS policy answer (`TlsPolicies.for_domain`), which every
  delivery asks for.
Every loop has a fixed number of rounds, so the benchmark always ends.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from smtpy import log, metrics
from smtpy.dns import Lookups, make_resolver
from smtpy.outbound.tls_policy import TlsPolicies
from smtpy.queue.queries import NewDelivery, NewMessage, enqueue
from smtpy.runtime import metrics_server
from smtpy.store.db import Database


def per_call(fn: object, rounds: int) -> float:
    assert callable(fn)
    started = time.perf_counter()
    for _ in range(rounds):
        fn()
    return (time.perf_counter() - started) / rounds


def hot_path() -> None:
    metrics.session_opened()
    metrics.message_received()
    metrics.deliveries_done(["delivered", "delivered"], 0.05)
    metrics.dns_observed("MX", 0.002)
    metrics.dns_observed("A", 0.001)


def fill_queue(db: Database, deliveries: int) -> None:
    per_message = 5
    with db.transaction():
        for n in range(deliveries // per_message):
            enqueue(
                db,
                NewMessage(
                    queue_id=f"BENCH{n:011d}",
                    sender="alice@sender.test",
                    data=b"Subject: x\r\n\r\nx\r\n",
                    deliveries=[
                        NewDelivery(
                            "team@example.test",
                            f"r{i}@dest{n % 50}.test",
                            f"dest{n % 50}.test",
                            "SRS0=x=AA=sender.test=alice@fwd.test",
                        )
                        for i in range(per_message)
                    ],
                ),
            )


async def cached_policy(rounds: int) -> float:
    # Nothing listens on this resolver: the first answer comes from the failed
    # lookup and is then reused, as the daemon reuses it for RECHECK_SECONDS.
    lookups = Lookups(make_resolver([("127.0.0.1", 9)], timeout=0.2))
    policies = TlsPolicies(lookups)
    await policies.for_domain("dest.test")
    started = time.perf_counter()
    for _ in range(rounds):
        await policies.for_domain("dest.test")
    return (time.perf_counter() - started) / rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=100_000)
    args = parser.parse_args()
    log.configure("error")
    metrics.enable()
    from prometheus_client import generate_latest

    cost = per_call(hot_path, 100_000)
    print(f"metric updates per forwarded message: {cost * 1e6:.2f} µs")

    renders = [per_call(lambda: generate_latest(metrics.registry()), 1) for _ in range(200)]
    print(f"render /metrics: median {statistics.median(renders) * 1e3:.3f} ms")

    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'bench.db'}"
        with Database(url) as db:
            fill_queue(db, args.deliveries)
            runs = []
            for _ in range(20):
                started = time.perf_counter()
                snapshot = metrics_server.queue_snapshot(db, now=time.time())
                runs.append(time.perf_counter() - started)
        print(
            f"queue snapshot over {sum(snapshot.deliveries.values())} pending deliveries (SQLite): "
            f"median {statistics.median(runs) * 1e3:.1f} ms"
        )

    policy = asyncio.run(cached_policy(100_000))
    print(f"TLS policy for a domain, cached: {policy * 1e6:.2f} µs")


if __name__ == "__main__":
    main()
