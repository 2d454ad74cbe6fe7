"""The daemon's background upkeep, all through the writer thread in small transactions.

- writes the message-log events that had no transaction to join (at most
  once a second, sooner when `FLUSH_ROWS` are waiting);
- writes this node's heartbeat every `heartbeat_seconds` (`smtpy status`, and
  what keeps its name: a heartbeat that finds the name taken over by another
  start calls `on_lost`, and the daemon stops);
- prunes message-log rows older than SMTPY_LOG_RETENTION days (and finished
  webhook deliveries with their events), a batch per transaction, so the group commit of incoming mail never waits long;
- refreshes SQLite's planner statistics of the log hourly (a sampled ANALYZE
  of a few milliseconds), so `smtpy stats` reads its covering indexes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from functools import partial

from smtpy import log
from smtpy.queue.message_log import (
    PRUNE_BATCH,
    EventBuffer,
    prune,
    refresh_statistics,
    write_events,
)
from smtpy.queue.nodes import NodeInfo, heartbeat, stopped
from smtpy.queue.writer import StoreThread

logger = log.get(__name__)

FLUSH_SECONDS = 1.0
PRUNE_SECONDS = 300.0
PRUNE_BATCHES = 50  # per round at most; the next round goes on
ANALYZE_SECONDS = 3600.0


class Upkeep:
    def __init__(
        self,
        store: StoreThread,
        *,
        node: NodeInfo,
        retention_days: int,
        on_lost: Callable[[], None] = lambda: None,
        events: EventBuffer | None = None,
        flush_seconds: float = FLUSH_SECONDS,
        prune_seconds: float = PRUNE_SECONDS,
    ) -> None:
        self.store = store
        self.events = EventBuffer() if events is None else events  # for the SMTP handler
        self.node = node  # claimed already (`smtpy.queue.nodes.claim`)
        self.on_lost = on_lost
        self.retention = retention_days * 86400.0
        self.flush_seconds = flush_seconds
        self.heartbeat_seconds = node.heartbeat_seconds
        self.prune_seconds = prune_seconds
        self._wake = asyncio.Event()
        self.events.on_full(self._wake.set)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self.run())

    async def run(self) -> None:
        """Until cancelled; `stop` writes what is left."""
        next_beat = next_prune = 0.0
        next_analyze = time.monotonic() + 60.0  # not during start-up
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_seconds)
            self._wake.clear()
            await self.flush()
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + self.heartbeat_seconds
                await self._beat()
            if now >= next_prune:
                next_prune = now + self.prune_seconds
                if self.retention:
                    await self.prune()
            if now >= next_analyze:
                next_analyze = now + ANALYZE_SECONDS
                await self._analyze()

    async def stop(self) -> None:
        """Write what is left and record this node's clean stop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()
        try:
            await self.store.call(partial(stopped, node=self.node, now=time.time()))
        except Exception as exc:
            logger.error("node_stop_not_recorded", error=str(exc))

    async def flush(self) -> None:
        rows = self.events.take()
        if self.events.dropped:
            logger.warning("message_log_rows_dropped", rows=self.events.dropped)
            self.events.dropped = 0
        if not rows:
            return
        try:
            await self.store.write(partial(write_events, events=rows))  # joins a group commit
        except Exception as exc:
            logger.error("message_log_write_failed", rows=len(rows), error=str(exc))
            self.events.put_back(rows)

    async def _analyze(self) -> None:
        try:
            await self.store.call(refresh_statistics)
        except Exception as exc:
            logger.error("message_log_analyze_failed", error=str(exc))

    async def _beat(self) -> None:
        try:
            kept = await self.store.call(partial(heartbeat, node=self.node, now=time.time()))
        except Exception as exc:
            logger.error("heartbeat_failed", error=str(exc))
            return
        if not kept:
            logger.error(
                "node_name_taken_over",
                node=self.node.name,
                consequence="stopping: another smtpy serve now runs as this node",
            )
            self.on_lost()

    async def prune(self) -> int:
        """Delete rows past the retention, batch by batch; the number deleted."""
        before = time.time() - self.retention
        total = 0
        for _ in range(PRUNE_BATCHES):
            try:
                deleted = await self.store.call(partial(prune, before=before))
            except Exception as exc:
                logger.error("message_log_prune_failed", error=str(exc))
                break
            total += deleted
            if deleted < PRUNE_BATCH:
                break
        if total:
            logger.info("message_log_pruned", rows=total, retention_days=self.retention / 86400)
        await self._prune_webhooks(before)
        return total

    async def _prune_webhooks(self, before: float) -> None:
        """Finished webhook deliveries and their events go after the same retention."""
        from smtpy.events.deliveries import PRUNE_BATCH as WEBHOOK_BATCH
        from smtpy.events.deliveries import prune as prune_webhooks

        total = 0
        for _ in range(PRUNE_BATCHES):
            try:
                deleted = await self.store.call(partial(prune_webhooks, before=before))
            except Exception as exc:
                logger.error("webhook_prune_failed", error=str(exc))
                break
            total += deleted
            if deleted < WEBHOOK_BATCH:
                break
        if total:
            logger.info("webhook_deliveries_pruned", rows=total)
