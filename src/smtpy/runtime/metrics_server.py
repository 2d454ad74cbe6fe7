"""GET /metrics on SMTPY_METRICS_LISTEN: prometheus_client's own HTTP server.

The counters and histograms are `smtpy.metrics`, updated where things
happen. This module adds the queue gauges, computed when scraped, and serves
them all with `prometheus_client.start_http_server` (a small threaded WSGI
server, off the event loop):

    smtpy_queue_deliveries{state}     pending deliveries: active, deferred, held
    smtpy_queue_oldest_age_seconds    age of the oldest pending delivery

A scrape asks the daemon's reader thread for one indexed query and reuses
its answer for `QUEUE_CACHE_SECONDS`; concurrent scrapes share one query, and
a scrape never touches the hot path.

With several serving processes, `smtpy.metrics.registry()` sums the counters
of every process (prometheus_client's multiprocess mode) and only the first
process runs this server.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from smtpy import log, metrics
from smtpy.errors import ConfigError
from smtpy.queue.queries import queue_depth

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client import CollectorRegistry
    from prometheus_client.core import GaugeMetricFamily

    from smtpy.queue.writer import StoreThread
    from smtpy.store.db import Database

logger = log.get(__name__)

QUEUE_CACHE_SECONDS = 5.0
QUEUE_STATES = ("active", "deferred", "held")  # as smtpy.queue.queries.queue_depth counts them
QUERY_TIMEOUT = 5.0  # a scrape waits this long for the store, then goes without queue gauges


@dataclass(frozen=True)
class QueueSnapshot:
    deliveries: dict[str, int]
    oldest_created_at: float | None
    taken_at: float


def queue_snapshot(db: Database, *, now: float) -> QueueSnapshot:
    """Pending deliveries by state and the oldest one's creation time (one indexed query)."""
    counts, oldest = queue_depth(db, now=now)
    return QueueSnapshot(counts, oldest, now)


class QueueCollector:
    """The queue gauges, from a snapshot at most `cache_seconds` old (a prometheus_client
    custom collector: `collect()` runs in the server's thread, at each scrape)."""

    def __init__(
        self,
        query: Callable[[float], QueueSnapshot],
        *,
        cache_seconds: float = QUEUE_CACHE_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._query = query  # blocking: runs on the scrape's thread
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._lock = threading.Lock()  # concurrent scrapes share one query
        self.snapshot: QueueSnapshot | None = None

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """The families, without a query (registering must not touch the store)."""
        return self._families(None)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            snapshot = self.snapshot
            if snapshot is None or self._clock() - snapshot.taken_at >= self._cache_seconds:
                try:
                    snapshot = self.snapshot = self._query(self._clock())
                except Exception as exc:  # a scrape without queue gauges beats a failed scrape
                    logger.warning("metrics_queue_failed", error=str(exc) or type(exc).__name__)
                    return iter(())
        return self._families(snapshot)

    @staticmethod
    def _families(snapshot: QueueSnapshot | None) -> Iterator[GaugeMetricFamily]:
        from prometheus_client.core import GaugeMetricFamily

        depth = GaugeMetricFamily(
            "smtpy_queue_deliveries",
            "Pending deliveries (one per recipient) by state: active, deferred, held.",
            labels=["state"],
        )
        age = GaugeMetricFamily(
            "smtpy_queue_oldest_age_seconds",
            "Age of the oldest pending delivery in seconds (0 when the queue is empty).",
        )
        if snapshot is not None:
            for state in QUEUE_STATES:
                depth.add_metric([state], snapshot.deliveries.get(state, 0))
            oldest = snapshot.oldest_created_at
            age.add_metric([], 0.0 if oldest is None else max(0.0, snapshot.taken_at - oldest))
        yield depth
        yield age


class MetricsServer:
    """prometheus_client's HTTP server on one address, with the queue gauges of `reader`."""

    def __init__(self, reader: StoreThread, *, host: str, port: int) -> None:
        self._reader = reader
        self._host = host
        self._port = port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._collector: QueueCollector | None = None
        self._registry: CollectorRegistry | None = None

    async def start(self) -> None:
        from prometheus_client import start_http_server

        loop = asyncio.get_running_loop()
        reader = self._reader

        def query(now: float) -> QueueSnapshot:
            call = reader.call(lambda db: queue_snapshot(db, now=now))
            return asyncio.run_coroutine_threadsafe(call, loop).result(QUERY_TIMEOUT)

        registry = self._registry = metrics.registry()
        self._collector = QueueCollector(query)
        registry.register(self._collector)
        try:
            self._server, self._thread = start_http_server(
                self._port, addr=self._host, registry=registry
            )
        except OSError as exc:
            registry.unregister(self._collector)
            raise ConfigError(
                f"cannot listen on SMTPY_METRICS_LISTEN {self._host}:{self._port}: "
                f"{exc.strerror or exc}"
            ) from None
        logger.info("metrics_listening", address=f"{self._host}:{self._port}")

    async def stop(self) -> None:
        if self._server is None:
            return
        server, self._server = self._server, None
        await asyncio.to_thread(server.shutdown)  # waits for serve_forever's next poll
        server.server_close()
        if self._thread is not None:
            self._thread.join(2)
        if self._registry is not None and self._collector is not None:
            self._registry.unregister(self._collector)
