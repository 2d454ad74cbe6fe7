"""Delivery workers: claim due deliveries, prepare, hand them to a Target, record, bounce.

One scheduler per node claims due deliveries in batches (up to the free
concurrency), groups those of one message with the same destination domain
into one delivery (one SMTP transaction), prepares the message
(`smtpy.outbound.prepare`) and hands it to its `Target`
(`smtpy.outbound.target`), at most `destination_concurrency` deliveries at
once per destination domain; a group beyond that waits in memory, still
leased, for the next free slot of its destination. Results and any bounce
they cause are written in one transaction. A heartbeat renews the leases of
what is held; stopping returns it to the queue at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial

from smtpy import log, metrics
from smtpy.dkim.sign import Signer
from smtpy.errors import InvalidInput
from smtpy.mail.addresses import split_address
from smtpy.outbound.prepare import outgoing
from smtpy.outbound.signers import SignerCache
from smtpy.outbound.target import Origin, Outcome, Target
from smtpy.queue.message_log import delivery_events, write_events
from smtpy.queue.queries import (
    LEASE_SECONDS,
    UNCONFIRMED_REPLY,
    AttemptResult,
    Claimed,
    NewDelivery,
    NewMessage,
    claim_due,
    claim_expired_unconfirmed,
    enqueue,
    enqueue_claimed,
    message_data,
    new_queue_id,
    record_results,
    release_leases,
    renew_leases,
)
from smtpy.queue.writer import StoreThread
from smtpy.store.db import Database

__all__ = [
    "DeliveryWorker",
    "WorkerSettings",
    "bounce_message",
    "group_claims",
    "unforwardable",
]

logger = log.get(__name__)

POLL_SECONDS = 1.0
UNCONFIRMED_EVERY = 30.0  # seconds between looks for mail whose destination never confirmed
HEARTBEAT_SECONDS = 30.0
WAITING_DATA_MAX = 256 * 1024  # a waiting group keeps a message this small in memory


@dataclass(frozen=True)
class WorkerSettings:
    node: str
    hostname: str
    concurrency: int
    retry_schedule: tuple[int, ...]
    queue_lifetime: float
    destination_concurrency: int = 10  # SMTP transactions at once per destination domain
    arc_seal: bool = False  # ARC-seal what goes out (smtpy.dkim.arc_seal)
    arc_seal_domain: str | None = None  # seal with this domain's key, not the alias domain's
    from_rewrite_name: str | None = None  # apply From-rewrite decisions with this display name
    lease_seconds: float = LEASE_SECONDS  # how long a claim holds (settings: lease_seconds)
    heartbeat_seconds: float = HEARTBEAT_SECONDS  # between lease renewals (heartbeat_seconds)


def group_claims(claims: Sequence[Claimed]) -> list[list[Claimed]]:
    """Deliveries that can share one SMTP transaction: same message, domain, sender, signer."""
    groups: dict[tuple[int, str, str, str, bool], list[Claimed]] = defaultdict(list)
    for claim in claims:
        sign_domain = split_address(claim.original_recipient)[1]
        key = (claim.message_id, claim.domain, claim.envelope_sender, sign_domain)
        groups[(*key, claim.unconfirmed)].append(claim)
    return list(groups.values())


def unforwardable(group: Sequence[Claimed], reason: str) -> list[Outcome]:
    """A permanent failure for every recipient of a message that cannot be prepared to send."""
    reply = f"message cannot be forwarded: {reason}"
    return [Outcome(claim.recipient, "failed", None, reply[:300], None, "5.6.0") for claim in group]


def bounce_message(
    *, hostname: str, failed: Sequence[AttemptResult], original: bytes, now: float
) -> NewMessage | None:
    """The DSN for deliveries of one message that failed, or None for a bounce (null sender)."""
    from smtpy.mail.dsn import FailedRecipient, build_dsn

    first = failed[0].delivery
    if not first.sender:
        return None
    recipients = [
        FailedRecipient(
            original_recipient=r.delivery.original_recipient,
            final_recipient=r.delivery.recipient,
            action="failed",
            status=r.enhanced if r.enhanced[:1] in "45" else "5.0.0",
            diagnostic=f"smtp; {r.code} {r.reply}" if r.code else f"x-smtpy; {r.reply}",
            remote_mta=r.remote_host,
        )
        for r in failed
    ]
    dsn = build_dsn(
        reporting_mta=hostname,
        sender=first.sender,
        recipients=recipients,
        original=original,
        arrival=datetime.fromtimestamp(first.received_at, UTC),
        now=datetime.fromtimestamp(now, UTC),
        queue_id=first.queue_id,
    )
    return NewMessage(
        queue_id=new_queue_id(now),
        sender="",
        data=dsn,
        deliveries=[NewDelivery(first.sender, first.sender, split_address(first.sender)[1], "")],
        received_at=now,
        smtputf8=not first.sender.isascii(),
    )


class DeliveryWorker:
    def __init__(
        self,
        *,
        settings: WorkerSettings,
        store: StoreThread,
        deliverer: Target,
        signers: SignerCache,
        reader: StoreThread | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store  # the writer
        self.reader = reader or store
        self.deliverer = deliverer  # where prepared messages go
        self.signers = signers
        self._clock = clock  # the time leases, retries and bounces are reckoned from
        self._wake = asyncio.Event()
        self._inflight: dict[int, Claimed] = {}  # leased here: running or waiting
        self._running = 0  # deliveries in transactions now (at most settings.concurrency)
        self._busy: Counter[str] = Counter()  # transactions in flight per destination domain
        # Groups leased here waiting for a slot of their destination, with their
        # message when it is small; a finished transaction starts the next at once.
        self._waiting: dict[str, deque[tuple[list[Claimed], bytes | None]]] = {}
        self._waiting_count = 0  # deliveries in _waiting (at most settings.concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._reserved = 0  # slots promised to messages being queued here (`queue`)
        # Whether due work may be waiting in the store: a claim filled every free
        # slot, or a message was queued without being handed over. A slot that
        # frees up then claims at once; otherwise the poll finds retries coming due.
        self._backlog = True
        self._unconfirmed_at = -UNCONFIRMED_EVERY  # the last look for expired unconfirmed mail

    def wake(self) -> None:
        """New mail was queued here: look for due work now instead of at the next poll."""
        self._backlog = True
        self._wake.set()

    async def queue(self, message: NewMessage) -> None:
        """Queue a message received here; return once it is durably committed.

        When this node can take every delivery (a free slot, or room to wait
        for its busy destination), they are committed already leased to it and
        go out with the message in memory: no claim, no reading it back.
        Otherwise they are queued due now and claimed like any other.
        """
        wanted = len(message.deliveries)
        if not self._can_take(message.deliveries):
            await self.store.enqueue(message)
            self.wake()
            return
        self._reserved += wanted
        try:
            claims = await self.store.write(
                partial(
                    enqueue_claimed,
                    message=message,
                    node=self.settings.node,
                    lease=self.settings.lease_seconds,
                )
            )
        finally:
            self._reserved -= wanted
        await self._start(group_claims(claims), data=message.data)

    def _can_take(self, deliveries: Sequence[NewDelivery]) -> bool:
        """Whether `deliveries` can start here now or wait for their busy destination."""
        if self._stopping:
            return False
        limit = self.settings.destination_concurrency
        waiting = sum(1 for d in deliveries if self._busy[d.domain] >= limit)
        if waiting and (
            self._waiting_count + waiting > self.settings.concurrency
            or any(len(self._waiting.get(d.domain, ())) >= limit for d in deliveries)
        ):
            return False
        return self._room(len(deliveries) - waiting)

    def _room(self, deliveries: int) -> bool:
        """Whether this node has slots for `deliveries` more deliveries at once."""
        if self._stopping:
            return False
        return self._running + self._reserved + deliveries <= self.settings.concurrency

    async def run(self) -> None:
        heartbeat = asyncio.create_task(self._heartbeat())
        try:
            while not self._stopping:
                self._wake.clear()
                free = self.settings.concurrency - self._running - self._reserved
                claimed: list[Claimed] = []
                if free > 0:
                    saturated = self._saturated()
                    try:
                        claimed = await self.store.write(
                            partial(
                                claim_due,
                                node=self.settings.node,
                                limit=free,
                                exclude_domains=saturated,
                                lease=self.settings.lease_seconds,
                                now=self._clock(),
                            )
                        )
                    except Exception as exc:
                        logger.error("claim_failed", error=str(exc))
                    else:  # what was left out or did not fit is still waiting
                        self._backlog = bool(saturated) or len(claimed) == free
                await self._start(group_claims(claimed))
                await self._expire_unconfirmed()
                if claimed and len(claimed) == free:
                    await asyncio.sleep(0)  # more may be due: go round again at once
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), POLL_SECONDS)
        finally:
            heartbeat.cancel()

    async def _expire_unconfirmed(self) -> None:
        """Now and then: fail (and bounce) the mail whose destination was not confirmed
        within the queue lifetime; it was never sent."""
        now = time.monotonic()
        free = self.settings.concurrency - self._running - self._reserved
        if free <= 0 or now - self._unconfirmed_at < UNCONFIRMED_EVERY:
            return
        self._unconfirmed_at = now
        try:
            expired = await self.store.write(
                partial(
                    claim_expired_unconfirmed,
                    node=self.settings.node,
                    limit=free,
                    lifetime=self.settings.queue_lifetime,
                    lease=self.settings.lease_seconds,
                    now=self._clock(),
                )
            )
        except Exception as exc:
            logger.error("claim_failed", error=str(exc))
            return
        await self._start(group_claims(expired))

    def _saturated(self) -> list[str]:
        """Destinations with every slot taken: claiming more for them would only wait."""
        limit = self.settings.destination_concurrency
        return [domain for domain, busy in self._busy.items() if busy >= limit]

    async def _start(self, groups: list[list[Claimed]], data: bytes | None = None) -> None:
        """Deliver each group, within each destination's limit; give the rest back to the queue.

        A group whose destination is at its limit waits here for one of its
        slots, up to that limit again; waiting does not take one of the node's
        slots, so a slow destination never stalls the others. What cannot wait
        goes back to the queue. `data` is the message's content when the
        groups all belong to a message still in memory.
        """
        surplus: list[int] = []
        limit = self.settings.destination_concurrency
        for group in groups:
            domain = group[0].domain
            if self._busy[domain] < limit:
                self._launch(group, data)
                continue
            if (
                len(self._waiting.get(domain, ())) < limit
                and self._waiting_count + len(group) <= self.settings.concurrency
            ):
                kept = data if data is not None and len(data) <= WAITING_DATA_MAX else None
                self._waiting.setdefault(domain, deque()).append((group, kept))
                self._waiting_count += len(group)
                for claim in group:
                    self._inflight[claim.id] = claim
            else:
                surplus.extend(claim.id for claim in group)
        if surplus:
            self._backlog = True
            try:
                await self.store.write(
                    partial(release_leases, node=self.settings.node, ids=surplus, now=self._clock())
                )
            except Exception as exc:  # the leases run out and the deliveries come back
                logger.error("release_failed", deliveries=len(surplus), error=str(exc))

    def _launch(self, group: list[Claimed], data: bytes | None) -> None:
        self._busy[group[0].domain] += 1
        self._running += len(group)
        for claim in group:
            self._inflight[claim.id] = claim
        task = asyncio.create_task(self._deliver(group, data))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _next_waiting(self, domain: str) -> None:
        """A transaction to `domain` finished: start the group waiting for its slot."""
        waiting = self._waiting.get(domain)
        if not waiting:
            return
        group, data = waiting.popleft()
        if not waiting:
            del self._waiting[domain]
        self._waiting_count -= len(group)
        self._launch(group, data)

    async def stop(self, grace: float = 10.0) -> None:
        """Let in-flight transactions finish for `grace` seconds, then return the rest to the queue."""
        self._stopping = True
        self._wake.set()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        self._waiting.clear()
        self._waiting_count = 0
        ids = list(self._inflight)  # with those settled during the grace: release skips them
        if ids:
            now = self._clock()
            returned = await self.store.call(
                lambda db: release_leases(db, node=self.settings.node, ids=ids, now=now)
            )
            if returned:
                logger.info("returned_to_queue", deliveries=returned)
        self._inflight.clear()

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_seconds)
            ids = list(self._inflight)
            if ids:
                try:
                    await self.store.call(
                        partial(
                            renew_leases,
                            node=self.settings.node,
                            ids=ids,
                            lease=self.settings.lease_seconds,
                            now=self._clock(),
                        )
                    )
                except Exception as exc:
                    logger.error("lease_renewal_failed", error=str(exc))

    async def _deliver(self, group: list[Claimed], data: bytes | None = None) -> None:
        first = group[0]
        try:
            if data is None:
                data = await self.reader.call(lambda db: message_data(db, first.message_id))
            if data is None:
                return  # deleted by an admin meanwhile
            sign_domain = split_address(first.original_recipient)[1]
            signer = await self.signers.get(sign_domain)
            started = time.monotonic()
            if first.unconfirmed:  # never confirmed within the queue lifetime: never sent
                outcomes = [
                    Outcome(c.recipient, "deferred", None, UNCONFIRMED_REPLY, None, "4.2.1")
                    for c in group
                ]
            else:
                outcomes = await self._send(group, data, signer)
            elapsed = time.monotonic() - started
            results = [
                self._result(claim, outcome) for claim, outcome in zip(group, outcomes, strict=True)
            ]
            metrics.deliveries_done([o.status for o in outcomes], elapsed)
            for r in results:
                logger.info(
                    r.result,
                    queue_id=first.queue_id,
                    recipient=r.delivery.recipient,
                    original_recipient=r.delivery.original_recipient,
                    remote=r.remote_host,
                    code=r.code,
                    reply=r.reply[:300],
                    attempt=r.delivery.attempts + 1,
                    ms=round(elapsed * 1000, 1),
                )
            if await self.store.write(lambda db: self._settle(db, results, data)):
                self.wake()  # a bounce or a fallback delivery was queued
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Unknown failures are temporary: the lease runs out and the delivery is retried.
            logger.error(
                "delivery_error",
                queue_id=first.queue_id,
                error_type=type(exc).__name__,
                error=str(exc)[:300],
            )
        finally:
            self._running -= len(group)
            self._busy[first.domain] -= 1
            if self._busy[first.domain] <= 0:
                del self._busy[first.domain]
            if not self._stopping:
                for claim in group:
                    self._inflight.pop(claim.id, None)
                self._next_waiting(first.domain)
                if self._backlog:
                    self._wake.set()  # a slot is free: claim waiting work now, not at the next poll

    async def _send(self, group: list[Claimed], data: bytes, signer: Signer) -> list[Outcome]:
        first = group[0]
        try:
            wire = outgoing(
                data,
                alias=first.original_recipient,
                signer=signer,
                sealer=await self._sealer(signer),
                auth_results=first.auth_results,
                from_display=self.settings.from_rewrite_name,
            )
        except InvalidInput as exc:  # it would fail the same way at every attempt: bounce
            return unforwardable(group, str(exc))
        return await self.deliverer.deliver(
            sender=first.envelope_sender,
            recipients=[c.recipient for c in group],
            message=wire,
            smtputf8=first.smtputf8,
            origin=Origin(
                first.queue_id,
                first.sender,
                tuple(c.original_recipient for c in group),
                first.received_at,
                first.auth_results,
            ),
        )

    async def _sealer(self, signer: Signer) -> Signer | None:
        """The keys that ARC-seal: the alias domain's, or the configured sealing domain's."""
        if not self.settings.arc_seal:
            return None
        if self.settings.arc_seal_domain is None:
            return signer
        return await self.signers.get(self.settings.arc_seal_domain)

    @staticmethod
    def _result(claim: Claimed, outcome: Outcome) -> AttemptResult:
        return AttemptResult(
            delivery=claim,
            result=outcome.status,
            code=outcome.code,
            reply=outcome.reply,
            remote_host=outcome.remote_host,
            enhanced=outcome.enhanced,
            retry_after=outcome.retry_after,
        )

    def _settle(self, db: Database, results: list[AttemptResult], original: bytes) -> bool:
        """Record results and queue the bounce they need; True if a bounce or a delivery to
        a fallback was queued."""
        now = self._clock()
        with db.transaction():
            settled = record_results(
                db,
                results,
                node=self.settings.node,
                schedule=self.settings.retry_schedule,
                lifetime=self.settings.queue_lifetime,
                now=now,
            )
            write_events(
                db, delivery_events(results, settled.failed, at=now, fallbacks=settled.fallbacks)
            )
            queued = False
            for r in results:
                step = settled.fallbacks.get(r.delivery.id)
                if step is not None:
                    queued = queued or step.kind == "next"
                    logger.info(
                        "fallback",
                        queue_id=r.delivery.queue_id,
                        original_recipient=r.delivery.original_recipient,
                        failed=r.delivery.recipient,
                        fallback=step.address,
                        queued=step.kind == "next",
                    )
            if not settled.failed:
                return queued
            bounce = bounce_message(
                hostname=self.settings.hostname, failed=settled.failed, original=original, now=now
            )
            first = settled.failed[0].delivery
            if bounce is None:
                logger.warning(
                    "bounce_dropped",
                    queue_id=first.queue_id,
                    reason="the failed message is itself a bounce (null sender)",
                )
                return queued
            enqueue(db, bounce)
            logger.info(
                "bounced",
                queue_id=first.queue_id,
                dsn_queue_id=bounce.queue_id,
                to=first.sender,
                recipients=[r.delivery.original_recipient for r in settled.failed],
            )
        return True
