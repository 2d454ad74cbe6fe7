"""The delivery scheduler's invariants (smtpy.queue.scheduler), over a real store.

The scheduler hands prepared messages to a `Target` (smtpy.outbound.target);
here that Target is `ScriptedTarget`, which records each call and answers as
the test scripts it (a destination of our own, not a stand-in for a network
peer). Everything else is real: the store (SQLite, and PostgreSQL where
SMTPY_TEST_POSTGRES_URL is set) with its writer and reader threads, the DKIM
signer cache, preparation, result recording and bounces. Time is the worker's
injected clock, so retry times are exact and nothing waits for a timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from smtpy.outbound.signers import SignerCache
from smtpy.outbound.target import Origin, Outcome, Status
from smtpy.queue.queries import NewDelivery, NewMessage, new_queue_id
from smtpy.queue.scheduler import DeliveryWorker, WorkerSettings
from smtpy.queue.writer import StoreThread

T = 1_800_000_000.0
SCHEDULE = (60, 300, 3600)
LIFETIME = 5 * 86400.0
NODE = "node-a"
HOSTNAME = "mx.forwarder.test"
SENDER = "carol@sender.test"

R = TypeVar("R")
_serial = itertools.count()

REPLIES: dict[Status, tuple[int, str]] = {
    "delivered": (250, "2.0.0 Ok: queued"),
    "deferred": (451, "4.3.0 try again later"),
    "failed": (550, "5.1.1 no such user here"),
}


# -- the Target the scheduler talks to ---------------------------------------------


@dataclass
class Call:
    sender: str
    recipients: list[str]
    message: bytes
    released: asyncio.Event = field(default_factory=asyncio.Event)


class ScriptedTarget:
    """Records every delivery it is given and answers as scripted.

    `script[recipient]` lists the answers for that recipient's attempts in
    order (then "delivered"). With `hold`, each call waits until the test
    releases it, so the test sees what is in flight at once.
    """

    def __init__(self, *, hold: bool = False, script: dict[str, list[Status]] | None = None):
        self.hold = hold
        self.script = {r: list(answers) for r, answers in (script or {}).items()}
        self.calls: list[Call] = []
        self.held: list[Call] = []
        self.per_domain: Counter[str] = Counter()  # transactions in flight per destination
        self.recipients_in_flight = 0
        self.peak_per_domain: Counter[str] = Counter()
        self.peak_recipients = 0

    async def deliver(
        self,
        *,
        sender: str,
        recipients: Sequence[str],
        message: bytes,
        smtputf8: bool = False,
        origin: Origin | None = None,
    ) -> list[Outcome]:
        call = Call(sender, list(recipients), message)
        domain = recipients[0].rpartition("@")[2]
        self.calls.append(call)
        self.per_domain[domain] += 1
        self.recipients_in_flight += len(recipients)
        self.peak_per_domain[domain] = max(self.peak_per_domain[domain], self.per_domain[domain])
        self.peak_recipients = max(self.peak_recipients, self.recipients_in_flight)
        try:
            if self.hold:
                self.held.append(call)
                await call.released.wait()
        finally:
            self.per_domain[domain] -= 1
            self.recipients_in_flight -= len(recipients)
        return [self._answer(r) for r in recipients]

    async def close(self) -> None:
        return None

    def _answer(self, recipient: str) -> Outcome:
        answers = self.script.get(recipient)
        status: Status = answers.pop(0) if answers else "delivered"
        code, reply = REPLIES[status]
        return Outcome(recipient, status, code, reply, "mx.dest.test[127.0.0.2]", reply[:5])

    def release_oldest(self) -> None:
        self.held.pop(0).released.set()

    def release_all(self) -> None:
        while self.held:
            self.release_oldest()

    def attempts_of(self, recipient: str) -> int:
        return sum(recipient in call.recipients for call in self.calls)


# -- the harness: a real store, a real worker ---------------------------------------


@dataclass
class Clock:
    now: float = T

    def __call__(self) -> float:
        return self.now


@dataclass
class Harness:
    worker: DeliveryWorker
    writer: StoreThread
    reader: StoreThread
    target: ScriptedTarget
    clock: Clock

    async def put(self, message: NewMessage) -> None:
        """Queue a message in the store, due now (as a message another node received)."""
        await self.writer.enqueue(message)

    async def query(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        return await self.reader.call(lambda db: db.all(sql, params))

    async def deliveries(self) -> list[dict[str, Any]]:
        return await self.query(
            "SELECT recipient, attempts, next_attempt_at, lease_owner FROM deliveries ORDER BY id"
        )

    async def count(self, table: str) -> int:
        rows = await self.query(f"SELECT count(*) AS n FROM {table}")
        return int(rows[0]["n"])

    async def until(self, check: Callable[[], Awaitable[bool]], what: str) -> None:
        """Wait for `check` to hold (bounded: twenty seconds of polls)."""
        for _ in range(2000):
            if await check():
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"never happened: {what}")

    async def queue_empty(self) -> bool:
        return await self.count("messages") == 0 and await self.count("deliveries") == 0

    def later(self, seconds: float) -> None:
        """Move the clock on and tell the worker, as its next poll would find out."""
        self.clock.now += seconds
        self.worker.wake()


@contextlib.asynccontextmanager
async def running(
    store_url: str,
    target: ScriptedTarget,
    *,
    concurrency: int = 10,
    destination_concurrency: int = 10,
    before: Sequence[NewMessage] = (),
) -> AsyncIterator[Harness]:
    """A delivery worker on `store_url` delivering to `target`; `before` is queued first."""
    writer = StoreThread(store_url, name="writer")
    reader = StoreThread(store_url, name="reader")
    writer.start()
    reader.start()
    clock = Clock()
    worker = DeliveryWorker(
        settings=WorkerSettings(
            node=NODE,
            hostname=HOSTNAME,
            concurrency=concurrency,
            retry_schedule=SCHEDULE,
            queue_lifetime=LIFETIME,
            destination_concurrency=destination_concurrency,
        ),
        store=writer,
        deliverer=target,
        signers=SignerCache(reader),
        reader=reader,
        clock=clock,
    )
    harness = Harness(worker, writer, reader, target, clock)
    for message in before:
        await harness.put(message)
    task = asyncio.create_task(worker.run())
    try:
        yield harness
    finally:
        target.hold = False
        target.release_all()
        await worker.stop(grace=10)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        writer.stop()
        reader.stop()


def message(*recipients: str, sender: str = SENDER, at: float = T) -> NewMessage:
    """A message from `sender` forwarded to `recipients` (alias n -> recipient n)."""
    n = next(_serial)
    data = (
        f"From: {sender or 'MAILER-DAEMON@elsewhere.test'}\r\nTo: team@forward.test\r\n"
        f"Subject: message {n}\r\nMessage-ID: <{n}@sender.test>\r\n\r\nHello.\r\n"
    ).encode()
    return NewMessage(
        queue_id=new_queue_id(at + n / 1000),
        sender=sender,
        data=data,
        deliveries=[
            NewDelivery(
                original_recipient=f"alias{i}@forward.test",
                recipient=r,
                domain=r.rpartition("@")[2],
                envelope_sender=f"SRS0=hash=TT=sender.test=carol@{HOSTNAME}" if sender else "",
            )
            for i, r in enumerate(recipients)
        ],
        received_at=at,
    )


def run(coro: Coroutine[Any, Any, R]) -> R:
    async def bounded() -> R:
        return await asyncio.wait_for(coro, 60)

    return asyncio.run(bounded())


# -- each due delivery is attempted once per claim ---------------------------------------


def test_each_due_delivery_is_attempted_once_per_claim(store_url: str) -> None:
    stored = [
        message("a1@one.test", "a2@one.test", "a3@two.test"),  # one.test's two share a call
        message("b1@two.test"),
        message("c1@three.test", "c2@one.test"),
    ]
    handed = [message("d1@two.test", "d2@two.test"), message("e1@three.test")]
    everyone = [d.recipient for m in stored + handed for d in m.deliveries]
    # Deferred once: tried again at the next claim, after the retry delay, not before.
    target = ScriptedTarget(script={"a2@one.test": ["deferred"], "d2@two.test": ["deferred"]})

    async def scenario() -> tuple[list[list[str]], list[dict[str, Any]], list[list[str]]]:
        async with running(store_url, target, before=stored) as h:
            for m in handed:  # received here: handed over already leased, from memory
                await h.worker.queue(m)

            async def first_round_settled() -> bool:
                rows = await h.deliveries()
                return len(rows) == 2 and all(
                    r["attempts"] == 1 and r["lease_owner"] is None for r in rows
                )

            await h.until(first_round_settled, "every first attempt settled")
            first_round = [sorted(c.recipients) for c in target.calls]
            waiting = await h.deliveries()
            h.later(SCHEDULE[0])
            await h.until(h.queue_empty, "the queue drained")
            return first_round, waiting, [sorted(c.recipients) for c in target.calls]

    first_round, waiting, calls = run(scenario())
    assert sorted(first_round) == sorted(
        [
            ["a1@one.test", "a2@one.test"],
            ["a3@two.test"],
            ["b1@two.test"],
            ["c1@three.test"],
            ["c2@one.test"],
            ["d1@two.test", "d2@two.test"],
            ["e1@three.test"],
        ]
    )
    assert [(r["recipient"], r["attempts"]) for r in waiting] == [
        ("a2@one.test", 1),
        ("d2@two.test", 1),
    ]
    assert sorted(calls[len(first_round) :]) == [["a2@one.test"], ["d2@two.test"]]
    attempts = Counter(r for call in calls for r in call)
    assert attempts == Counter(everyone) + Counter(["a2@one.test", "d2@two.test"])


# -- concurrency ------------------------------------------------------------------------


def test_never_more_than_destination_concurrency_per_destination(store_url: str) -> None:
    slow = [message(f"user{n}@slow.test") for n in range(6)]
    fast = message("someone@fast.test")
    target = ScriptedTarget(hold=True)

    async def scenario() -> tuple[int, list[list[str]]]:
        async with running(store_url, target, destination_concurrency=2, before=[*slow, fast]) as h:

            async def two_slow_in_flight() -> bool:
                return target.per_domain["slow.test"] == 2 and target.per_domain["fast.test"] == 1

            await h.until(two_slow_in_flight, "two transactions to slow.test in flight")
            # Another destination is not held up by a busy one.
            fast_call = next(c for c in target.held if c.recipients == ["someone@fast.test"])
            target.held.remove(fast_call)
            fast_call.released.set()

            async def fast_done() -> bool:
                return await h.count("messages") == len(slow)

            await h.until(fast_done, "the message to fast.test delivered")
            in_flight_then = target.per_domain["slow.test"]
            for _ in range(len(slow) * 2):
                if await h.queue_empty():
                    break

                async def one_held() -> bool:
                    return bool(target.held) or await h.queue_empty()

                await h.until(one_held, "a delivery in flight")
                if target.held:
                    target.release_oldest()
            await h.until(h.queue_empty, "the queue drained")
            return in_flight_then, [c.recipients for c in target.calls]

    in_flight_then, calls = run(scenario())
    assert in_flight_then == 2  # slow.test kept its two transactions while fast.test went out
    assert target.peak_per_domain["slow.test"] == 2
    assert sorted(r for call in calls for r in call) == sorted(
        [f"user{n}@slow.test" for n in range(6)] + ["someone@fast.test"]
    )


def test_never_more_than_delivery_concurrency_in_all(store_url: str) -> None:
    messages = [message(f"x{n}@d{n}.test", f"y{n}@e{n}.test") for n in range(4)]
    target = ScriptedTarget(hold=True)

    async def scenario() -> int:
        async with running(store_url, target, concurrency=3, before=messages) as h:

            async def saturated() -> bool:
                return target.recipients_in_flight == 3

            await h.until(saturated, "three deliveries in flight")
            at_saturation = target.recipients_in_flight
            for _ in range(20):
                if await h.queue_empty():
                    break

                async def one_held() -> bool:
                    return bool(target.held) or await h.queue_empty()

                await h.until(one_held, "a delivery in flight")
                if target.held:
                    target.release_oldest()
            await h.until(h.queue_empty, "the queue drained")
            return at_saturation

    assert run(scenario()) == 3
    assert target.peak_recipients == 3
    assert len(target.calls) == 8  # each delivery once


# -- retries -------------------------------------------------------------------------------


def test_a_deferral_schedules_the_next_attempt_by_the_retry_schedule(store_url: str) -> None:
    target = ScriptedTarget(script={"bob@dest.test": ["deferred", "deferred", "delivered"]})

    async def scenario() -> list[tuple[int, float, float]]:
        seen: list[tuple[int, float, float]] = []
        async with running(store_url, target, before=[message("bob@dest.test")]) as h:
            for attempt in (1, 2):

                async def settled(attempt: int = attempt) -> bool:
                    rows = await h.deliveries()
                    return (
                        len(rows) == 1
                        and rows[0]["attempts"] == attempt
                        and not rows[0]["lease_owner"]
                    )

                await h.until(settled, f"attempt {attempt} recorded")
                [row] = await h.deliveries()
                seen.append(
                    (target.attempts_of("bob@dest.test"), h.clock.now, row["next_attempt_at"])
                )
                h.later(row["next_attempt_at"] - h.clock.now)
            await h.until(h.queue_empty, "delivered at the third attempt")
        return seen

    seen = run(scenario())
    assert seen == [(1, T, T + 60), (2, T + 60, T + 60 + 300)]
    assert target.attempts_of("bob@dest.test") == 3


# -- bounces -------------------------------------------------------------------------------


def test_a_permanent_failure_sends_one_dsn_to_the_original_sender(store_url: str) -> None:
    target = ScriptedTarget(script={"bob@dest.test": ["failed"]})
    original = message("bob@dest.test", "ann@dest.test")

    async def scenario() -> None:
        async with running(store_url, target, before=[original]) as h:

            async def bounced() -> bool:
                return any(SENDER in c.recipients for c in target.calls) and await h.queue_empty()

            await h.until(bounced, "the DSN delivered and the queue empty")

    run(scenario())
    [first, dsn] = target.calls
    assert sorted(first.recipients) == ["ann@dest.test", "bob@dest.test"]
    assert (dsn.sender, dsn.recipients) == ("", [SENDER])
    assert b"multipart/report" in dsn.message
    assert b"alias0@forward.test" in dsn.message  # the address the sender wrote to
    assert b"5.1.1" in dsn.message
    assert b"alias1@forward.test" not in dsn.message  # ann's copy was delivered


def test_a_failed_bounce_sends_no_dsn(store_url: str) -> None:
    target = ScriptedTarget(script={"carol@dest.test": ["failed"]})

    async def scenario() -> int:
        async with running(store_url, target, before=[message("carol@dest.test", sender="")]) as h:

            async def settled() -> bool:
                return bool(target.calls) and await h.queue_empty()

            await h.until(settled, "the failure recorded")
            # A DSN would have been queued in the transaction that recorded the failure.
            return await h.count("messages")

    assert run(scenario()) == 0
    assert [c.recipients for c in target.calls] == [["carol@dest.test"]]


# -- stopping ------------------------------------------------------------------------------


def test_a_stop_returns_leased_unstarted_deliveries_to_the_queue(store_url: str) -> None:
    target = ScriptedTarget(hold=True)
    messages = [message(f"user{n}@slow.test") for n in range(3)]

    async def scenario() -> list[dict[str, Any]]:
        async with running(store_url, target, destination_concurrency=1, before=messages) as h:

            async def one_running_one_waiting() -> bool:
                leased = [r for r in await h.deliveries() if r["lease_owner"] == NODE]
                return len(target.held) == 1 and len(leased) == 2

            await h.until(one_running_one_waiting, "one delivery in flight, one waiting here")
            stopping = asyncio.create_task(h.worker.stop(grace=30))
            await asyncio.sleep(0)  # the stop has begun: the slot that frees must not be reused
            target.release_oldest()
            await stopping
            return await h.deliveries()

    rows = run(scenario())
    [call] = target.calls  # the one in flight, let finish within the grace
    unstarted = sorted({f"user{n}@slow.test" for n in range(3)} - set(call.recipients))
    assert [(r["recipient"], r["attempts"], r["lease_owner"]) for r in rows] == [
        (recipient, 0, None) for recipient in unstarted
    ]
    assert all(r["next_attempt_at"] <= T for r in rows)  # due again at once


# -- removal -------------------------------------------------------------------------------


def test_a_message_is_removed_once_its_last_delivery_is_settled(store_url: str) -> None:
    target = ScriptedTarget(script={"b@two.test": ["deferred"]})

    async def scenario() -> tuple[int, list[str], int]:
        async with running(store_url, target, before=[message("a@one.test", "b@two.test")]) as h:

            async def one_left() -> bool:
                rows = await h.deliveries()
                return [r["recipient"] for r in rows] == ["b@two.test"] and rows[0]["attempts"] == 1

            await h.until(one_left, "a@one.test delivered, b@two.test deferred")
            kept = await h.count("messages")
            left = [r["recipient"] for r in await h.deliveries()]
            h.later(SCHEDULE[0])
            await h.until(h.queue_empty, "b@two.test delivered")
            return kept, left, await h.count("messages")

    kept, left, after = run(scenario())
    assert (kept, left, after) == (1, ["b@two.test"], 0)
    assert target.attempts_of("b@two.test") == 2
