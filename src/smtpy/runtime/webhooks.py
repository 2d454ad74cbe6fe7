"""The webhook worker of `smtpy serve`: drains the outbox next to the delivery scheduler.

It makes the message log's new rows into events (`smtpy.queue.event_feed`, whose
deliveries come leased to it) and claims the deliveries due otherwise (retries,
and the events of core services: `smtpy.events.deliveries.claim_due`, leased like
the mail queue, so each goes to one process of one node), signs each as Standard
Webhooks at the moment it is sent, posts it (`smtpy.events.sender`), and
records the answers through the writer's group commit. A cheap read through
the reader thread comes first, so an empty outbox and a read log cost no write.

The store is the resource the mail shares, so the worker writes little: a
claim takes a batch, and answers are recorded together, once a batch of them
is in or `flush_seconds` after the first (a stop records those left). A
delivery whose answer was not recorded yet is still leased: if the process
dies meanwhile, it is sent again once the lease runs out (a receiver tells
the two apart by `webhook-id`).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from smtpy import log
from smtpy.events.deliveries import (
    DISABLE_AFTER,
    SCHEDULE,
    Answer,
    Claimed,
    Settled,
    claim_due,
    has_due,
    record,
    record_delivered,
    release,
)
from smtpy.events.sender import Sender, send_delivery
from smtpy.queue import event_feed
from smtpy.queue.writer import StoreThread
from smtpy.store.db import Database

logger = log.get(__name__)

POLL_SECONDS = 0.5
FLUSH_SECONDS = 0.1  # an answer waits at most this long to be recorded with others


@dataclass(frozen=True)
class WebhookSettings:
    node: str  # the lease owner: this serving process
    concurrency: int = 32  # posts in flight at once
    schedule: tuple[int, ...] = SCHEDULE
    timeout: float = 10.0
    lease_seconds: float = 90.0
    allow_private: bool = False
    ca_file: Path | None = None
    disable_after: float = DISABLE_AFTER
    poll_seconds: float = POLL_SECONDS
    flush_seconds: float = FLUSH_SECONDS


OnDisabled = Callable[[Database, str, str], None]  # (db, webhook id, reason), in the transaction


class WebhookWorker:
    def __init__(
        self,
        *,
        settings: WebhookSettings,
        store: StoreThread,
        reader: StoreThread | None = None,
        on_disabled: OnDisabled | None = None,
        sender: Sender | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.reader = reader or store
        self.on_disabled = on_disabled
        self.sender = sender or Sender(
            allow_private=settings.allow_private,
            timeout=settings.timeout,
            ca_file=settings.ca_file,
        )
        self._clock = clock
        self._rng = random.Random()
        self._lease = max(settings.lease_seconds, settings.timeout * 3)
        self._tasks: set[asyncio.Task[None]] = set()
        self._inflight: set[int] = set()
        self._wake = asyncio.Event()
        self._stopping = False
        self._saturated = False  # the last claim took all it could: more may be due
        self._batch = max(1, settings.concurrency // 4)
        self._answered: list[tuple[Claimed, Answer]] = []  # not recorded yet
        self._have_answers = asyncio.Event()
        self._batch_full = asyncio.Event()
        self.delivered = 0  # for tests and benchmarks
        self._held_checked = 0.0  # when the feed was last checked for a transaction holding it

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Claim due deliveries in batches and launch them; between batches, sleep.

        A claim is a write, so it is not made for every free slot: with the
        outbox drained (a claim found fewer than it could take), the worker
        sleeps `poll_seconds` (or until `wake()`); with more due than it can
        send, it claims again once a quarter of its slots are free.
        """
        recorder = asyncio.create_task(self._record_answers())
        try:
            await self._claim_loop()
        finally:
            recorder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await recorder

    async def _claim_loop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            free = self.settings.concurrency - len(self._inflight)
            if free < self._batch and self._inflight:  # saturated: wait for slots to free up
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.settings.poll_seconds)
                continue
            claimed: list[Claimed] = []
            try:
                claimed = await self._claim(free)
            except Exception as exc:
                logger.error("webhook_claim_failed", error=str(exc))
                self._saturated = False
            for delivery in claimed:
                self._launch(delivery)
            if self._saturated:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.poll_seconds)

    async def _claim(self, free: int) -> list[Claimed]:
        """The log's new events (leased as they are made), then the deliveries due, up to
        `free`; `_saturated` says whether more may be waiting."""
        now = self._clock()
        claimed: list[Claimed] = []
        more = False
        if await self.reader.call(partial(event_feed.waiting, now=now)):
            fed = await self.store.write(
                partial(
                    event_feed.feed, node=self.settings.node, lease=self._lease, now=now, limit=free
                )
            )
            claimed, more = fed.claimed, fed.more
        elif now - self._held_checked >= event_feed.HELD_WARNING:
            self._held_checked = now
            await self._report_holdup(now)
        room = free - len(claimed)
        if room > 0 and await self.reader.call(partial(has_due, now=now)):
            due = await self.store.write(
                partial(claim_due, node=self.settings.node, limit=room, lease=self._lease, now=now)
            )
            claimed += due
            more = more or len(due) == room
        self._saturated = more or len(claimed) >= free
        return claimed

    async def _report_holdup(self, now: float) -> None:
        """Warn when events wait for a write transaction left open (PostgreSQL)."""
        holdup = await self.reader.call(partial(event_feed.held_back, now=now))
        if holdup is not None:
            logger.warning(
                "webhook_events_held_back",
                waiting_s=round(holdup.waiting),
                by_pid=holdup.pid,
                database=holdup.database,
                transaction_s=None if holdup.running is None else round(holdup.running),
                hint="message events wait for every older write transaction in the cluster"
                " to end; end that one, or cancel it (pg_cancel_backend)",
            )

    def _launch(self, delivery: Claimed) -> None:
        self._inflight.add(delivery.id)
        task = asyncio.create_task(self._deliver(delivery))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, delivery: Claimed) -> None:
        try:
            answer = await self.send(delivery)
        except asyncio.CancelledError:
            self._inflight.discard(delivery.id)
            raise
        except Exception as exc:  # the lease runs out and the delivery is tried again
            self._inflight.discard(delivery.id)
            logger.error(
                "webhook_delivery_error",
                webhook=delivery.webhook_id,
                event_id=delivery.event_id,
                error_type=type(exc).__name__,
                error=str(exc)[:300],
            )
            return
        self._answered.append((delivery, answer))  # its slot is freed once it is recorded
        self._have_answers.set()
        if len(self._answered) >= self._batch:
            self._batch_full.set()

    async def _record_answers(self) -> None:
        """Record the answers in batches: once `_batch` are in, or `flush_seconds` after the first."""
        while True:
            await self._have_answers.wait()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._batch_full.wait(), self.settings.flush_seconds)
            self._have_answers.clear()
            self._batch_full.clear()
            await self._flush()

    async def _flush(self) -> None:
        answered, self._answered = self._answered, []
        if not answered:
            return
        settled: list[Settled | None]
        try:
            settled = await self.store.write(partial(self._record_all, answered=answered))
        except Exception as exc:  # the leases run out and the deliveries are tried again
            logger.error("webhook_record_failed", deliveries=len(answered), error=str(exc))
            settled = [None] * len(answered)
        finally:
            for delivery, _ in answered:
                self._inflight.discard(delivery.id)
            if self._saturated:  # more is due: the freed slots may start the next batch
                self._wake.set()
        for (delivery, answer), result in zip(answered, settled, strict=True):
            if result is not None:
                self._report(delivery, answer, result)

    def _report(self, delivery: Claimed, answer: Answer, settled: Settled) -> None:
        if settled.status == "delivered":
            self.delivered += 1
        logger.info(
            "webhook_" + ("delivered" if answer.ok else "failed"),
            webhook=delivery.webhook_id,
            event_id=delivery.event_id,
            type=delivery.type,
            status=answer.status_code,
            error=answer.error,
            attempt=delivery.attempts + 1,
            ms=answer.duration_ms,
            next=settled.status,
        )
        if settled.disabled:
            logger.warning("webhook_disabled", webhook=delivery.webhook_id, reason=settled.disabled)

    async def send(self, delivery: Claimed) -> Answer:
        """Sign `delivery` now and post it."""
        return await send_delivery(self.sender, delivery, now=self._clock())

    def _record_all(
        self, db: Database, *, answered: list[tuple[Claimed, Answer]]
    ) -> list[Settled | None]:
        """Record the answers: those that delivered together (`record_delivered`), each
        other one in its own savepoint; a part that fails leaves the others."""
        settled: dict[int, Settled | None] = {}
        delivered = [(delivery, answer) for delivery, answer in answered if answer.ok]
        try:
            record_delivered(db, delivered, now=self._clock())
            settled.update((delivery.id, Settled("delivered", None)) for delivery, _ in delivered)
        except Exception as exc:  # their leases run out and they are sent again
            logger.error("webhook_record_failed", deliveries=len(delivered), error=str(exc)[:300])
        for delivery, answer in answered:
            if answer.ok:
                continue
            try:
                settled[delivery.id] = self._record(db, delivery=delivery, answer=answer)
            except Exception as exc:  # its lease runs out and it is tried again
                logger.error(
                    "webhook_record_failed", event_id=delivery.event_id, error=str(exc)[:300]
                )
        return [settled.get(delivery.id) for delivery, _ in answered]

    def _record(self, db: Database, *, delivery: Claimed, answer: Answer) -> Settled:
        settled = record(
            db,
            delivery,
            answer,
            node=self.settings.node,
            schedule=self.settings.schedule,
            disable_after=self.settings.disable_after,
            now=self._clock(),
            rng=self._rng,
        )
        if settled.disabled is not None and self.on_disabled is not None:
            self.on_disabled(db, delivery.webhook_id, settled.disabled)
        return settled

    async def stop(self, grace: float = 10.0) -> None:
        """Let posts in flight finish for `grace` seconds; return the rest to the outbox."""
        self._stopping = True
        self._wake.set()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self._flush()  # the answers that came in: recorded, not sent again
        if self._inflight:
            try:
                await self.store.call(partial(release, owners=[self.settings.node]))
            except Exception as exc:  # the leases run out instead
                logger.error("webhook_release_failed", error=str(exc))
        self._inflight.clear()
        await self.sender.close()
