"""Prometheus metrics of `smtpy serve`, served on GET /metrics when SMTPY_METRICS_LISTEN is set.

Counters and histograms live in prometheus_client's default registry and are
updated where things happen, at the cost of one increment; without
SMTPY_METRICS_LISTEN nothing is counted and prometheus_client is not loaded:

    smtpy_smtp_sessions_total                       SMTP connections accepted
    smtpy_messages_total{result, reason}            received / discarded / rejected /
                                                    tempfail (RCPT-time refusals count
                                                    once per refused recipient)
    smtpy_deliveries_total{result}                  delivered / deferred / failed, per recipient
    smtpy_delivery_duration_seconds                 one SMTP transaction, DNS included
    smtpy_dns_lookup_duration_seconds{type}         queries sent to the resolvers (cache
                                                    hits are not counted)
    smtpy_queue_deliveries{state}                   pending deliveries: active, deferred, held
    smtpy_queue_oldest_age_seconds                  age of the oldest pending delivery

With several serving processes (SMTPY_PROCESSES) the counters live in files
that every process writes (prometheus_client's multiprocess mode) and the
first process serves their sums. The queue gauges are computed when scraped, with one indexed query through the
daemon's reader thread, reused for `QUEUE_CACHE_SECONDS`; a scrape never
touches the hot path. The listener is a small asyncio server on the daemon's
loop: rendering the text format takes well under a millisecond.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from smtpy import log

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import GaugeMetricFamily

    from smtpy.queue.writer import StoreThread
    from smtpy.store.db import Database

logger = log.get("smtpy.metrics")

QUEUE_CACHE_SECONDS = 5.0
QUEUE_STATES = ("active", "deferred", "held")  # as smtpy.queue.queries.queue_depth counts them
_REQUEST_LIMIT = 8192
_REQUEST_TIMEOUT = 5.0


class _Metrics:
    """The counters and histograms, in prometheus_client's default registry."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram

        self.sessions = Counter("smtpy_smtp_sessions", "SMTP connections accepted.")
        self.messages = Counter(
            "smtpy_messages",
            "Messages received or discarded, and refusals (per recipient at RCPT), "
            "by result and reason.",
            ["result", "reason"],
        )
        deliveries = Counter(
            "smtpy_deliveries", "Delivery attempts per recipient, by result.", ["result"]
        )
        self.deliveries = deliveries
        self.delivery_seconds = Histogram(
            "smtpy_delivery_duration_seconds",
            "Duration of one delivery transaction (MX lookup, connection, SMTP).",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
        )
        self.dns_seconds = Histogram(
            "smtpy_dns_lookup_duration_seconds",
            "Duration of DNS queries sent to the resolvers, by record type.",
            ["type"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.received = self.messages.labels("received", "queued")
        self.discarded = self.messages.labels("discarded", "discard_rule")
        # Children by label value: `labels()` costs more than the increment itself.
        self.delivery_results = {
            r: deliveries.labels(r) for r in ("delivered", "deferred", "failed")
        }
        self.dns_types: dict[str, Any] = {}


_metrics: _Metrics | None = None  # None: nothing is counted (no SMTPY_METRICS_LISTEN)


def enable() -> None:
    """Count from now on (SMTPY_METRICS_LISTEN is set); loads prometheus_client.

    Without a listener nobody could read the counters: the hooks below do
    nothing, and a serving process does not load prometheus_client at all.
    """
    global _metrics
    if _metrics is None:
        _metrics = _Metrics()


# -- what the pipeline calls ----------------------------------------------------------


def session_opened() -> None:
    if _metrics is not None:
        _metrics.sessions.inc()


def message_received() -> None:
    if _metrics is not None:
        _metrics.received.inc()


def message_discarded() -> None:
    if _metrics is not None:
        _metrics.discarded.inc()


def message_refused(reply: str, reason: str) -> None:
    """A refusal sent to a client: `rejected` for 5xx, `tempfail` for 4xx."""
    if _metrics is not None:
        result = "tempfail" if reply[:1] == "4" else "rejected"
        _metrics.messages.labels(result, reason).inc()


def deliveries_done(results: Sequence[str], seconds: float) -> None:
    """One transaction's results (one per recipient) and how long it took."""
    if _metrics is None:
        return
    for result in results:
        child = _metrics.delivery_results.get(result)
        (child or _metrics.deliveries.labels(result)).inc()
    _metrics.delivery_seconds.observe(seconds)


def dns_observed(rtype: str, seconds: float) -> None:
    """`Lookups(observe=…)`: one query answered or failed."""
    if _metrics is None:
        return
    child = _metrics.dns_types.get(rtype)
    if child is None:
        child = _metrics.dns_types.setdefault(rtype, _metrics.dns_seconds.labels(rtype))
    child.observe(seconds)


# -- the queue, at scrape time --------------------------------------------------------


@dataclass(frozen=True)
class QueueSnapshot:
    deliveries: dict[str, int]
    oldest_created_at: float | None
    taken_at: float


def queue_snapshot(db: Database, *, now: float) -> QueueSnapshot:
    """Pending deliveries by state and the oldest one's creation time (one indexed query)."""
    from smtpy.queue.queries import queue_depth

    counts, oldest = queue_depth(db, now=now)
    return QueueSnapshot(counts, oldest, now)


class QueueCollector:
    """Yields the queue gauges from the latest snapshot (refreshed by the server).

    A prometheus_client collector: an object with `collect()`."""

    def __init__(self) -> None:
        self.snapshot: QueueSnapshot | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from prometheus_client.core import GaugeMetricFamily

        snapshot = self.snapshot
        if snapshot is None:
            return
        depth = GaugeMetricFamily(
            "smtpy_queue_deliveries",
            "Pending deliveries (one per recipient) by state: active, deferred, held.",
            labels=["state"],
        )
        for state in QUEUE_STATES:
            depth.add_metric([state], snapshot.deliveries.get(state, 0))
        yield depth
        age = 0.0
        if snapshot.oldest_created_at is not None:
            age = max(0.0, snapshot.taken_at - snapshot.oldest_created_at)
        yield GaugeMetricFamily(
            "smtpy_queue_oldest_age_seconds",
            "Age of the oldest pending delivery in seconds (0 when the queue is empty).",
            value=age,
        )


class MetricsServer:
    """GET /metrics on one address, on the daemon's event loop."""

    def __init__(
        self,
        reader: StoreThread,
        *,
        host: str,
        port: int,
        cache_seconds: float = QUEUE_CACHE_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._registry = _registry()
        self._reader = reader
        self._host = host
        self._port = port
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._collector = QueueCollector()
        self._server: asyncio.Server | None = None
        self._refreshing: asyncio.Future[None] | None = None

    async def start(self) -> None:
        from smtpy.errors import ConfigError

        try:
            self._server = await asyncio.start_server(
                self._handle, self._host, self._port, reuse_address=True
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on SMTPY_METRICS_LISTEN {self._host}:{self._port}: "
                f"{exc.strerror or exc}"
            ) from None
        self._registry.register(self._collector)
        logger.info("metrics_listening", address=f"{self._host}:{self._port}")

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 2)
        self._server = None
        with contextlib.suppress(KeyError):
            self._registry.unregister(self._collector)

    async def render(self) -> bytes:
        """The text exposition format, with a queue snapshot at most `cache_seconds` old."""
        from prometheus_client.exposition import generate_latest

        snapshot = self._collector.snapshot
        if snapshot is None or self._clock() - snapshot.taken_at >= self._cache_seconds:
            await self._refresh()
        return generate_latest(self._registry)

    async def _refresh(self) -> None:
        # Concurrent scrapes share one query.
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self._query())
        await asyncio.shield(self._refreshing)

    async def _query(self) -> None:
        now = self._clock()
        try:
            self._collector.snapshot = await self._reader.call(
                lambda db: queue_snapshot(db, now=now)
            )
        except Exception as exc:  # a scrape without queue gauges beats a failed scrape
            logger.warning("metrics_queue_failed", error=str(exc))

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            request = head[:_REQUEST_LIMIT].split(b"\r\n", 1)[0].decode("latin-1").split()
            if len(request) >= 2 and request[0] in ("GET", "HEAD"):
                path = request[1].split("?", 1)[0]
                if path == "/metrics":
                    from prometheus_client.exposition import CONTENT_TYPE_LATEST

                    body = await self.render()
                    status, media_type = "200 OK", CONTENT_TYPE_LATEST
                else:
                    body = b"smtpy metrics: see /metrics\n"
                    status, media_type = "404 Not Found", "text/plain; charset=utf-8"
                if request[0] == "HEAD":
                    body = b""
            else:
                body, status, media_type = b"", "405 Method Not Allowed", "text/plain"
            writer.write(_response(status, media_type, body))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def _registry() -> CollectorRegistry:
    """This process's metrics, or with PROMETHEUS_MULTIPROC_DIR set, those of every process.

    Under a supervisor (SMTPY_PROCESSES > 1) each serving process keeps its
    counters in that directory and the first one serves them all, summed.
    """
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")  # set by the supervisor
    if not directory:
        return REGISTRY

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return registry


def _response(status: str, media_type: str, body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {media_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body
