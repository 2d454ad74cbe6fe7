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

The queue gauges and the HTTP server are `smtpy.runtime.metrics_server`.

With several serving processes (SMTPY_PROCESSES) every process counts and the
first one serves the sums, by prometheus_client's multiprocess mode
(PROMETHEUS_MULTIPROC_DIR, set by the supervisor before the import, and
`MultiProcessCollector`): the processes share one listening address, so one
scrape must see all of them, and that mode is the library's documented way.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry


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


# -- what the server shows ---------------------------------------------------------


def registry() -> CollectorRegistry:
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
