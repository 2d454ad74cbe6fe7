"""The in-memory side of the monthly message quota (`smtpy.checks.quota`): what one
serving process counted stays counted while a sync carries it to the store, is kept
when the sync fails, and is not counted twice once the store's answer holds it."""

from __future__ import annotations

import asyncio
import io
import json
import sys
from collections.abc import Awaitable, Callable, Mapping

from smtpy import log
from smtpy.checks.quota import MessageQuota, QuotaState, QuotaSync

DOMAIN = "example.test"
ORG = 1


class Store:
    """The store's side of a sync: adds counts, answers the states (like `sync_usage`)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.fail = False

    def sync(self, db: object, counts: Mapping[int, int], now: float) -> dict[str, QuotaState]:
        if self.fail:
            raise RuntimeError("database is locked")
        self.used += counts.get(ORG, 0)
        return {DOMAIN: QuotaState(org=ORG, limit=self.limit, used=self.used)}


def syncer(quota: MessageQuota, store: Store, during: Callable[[], None]) -> QuotaSync:
    """A sync whose store call runs `during` first: what the SMTP side sees meanwhile."""

    async def call(write: Callable[[object], dict[str, QuotaState]]) -> dict[str, QuotaState]:
        during()
        await asyncio.sleep(0)
        return write(None)

    def sync(db: object, counts: Mapping[int, int], now: float) -> dict[str, QuotaState]:
        return store.sync(db, counts, now)

    caller: Callable[..., Awaitable[dict[str, QuotaState]]] = call
    return QuotaSync(quota, caller, sync, interval=1.0, clock=lambda: 0.0)


def started(store: Store) -> MessageQuota:
    quota = MessageQuota()
    quota.apply(store.sync(None, {}, 0.0))
    return quota


def test_counts_a_sync_has_taken_still_count_until_the_store_answers() -> None:
    store = Store(limit=5)
    quota = started(store)
    for _ in range(5):
        assert not quota.reached(DOMAIN)
        quota.count([DOMAIN])
    assert quota.reached(DOMAIN)

    seen: list[bool] = []
    assert asyncio.run(syncer(quota, store, lambda: seen.append(quota.reached(DOMAIN))).sync())
    assert seen == [True]  # the fifth message was taken by the sync, and still counted
    assert store.used == 5 and quota.reached(DOMAIN)
    assert quota.full() == {ORG}

    store.limit = 6  # a plan raised: once the store says so, one more is accepted
    assert asyncio.run(syncer(quota, store, lambda: None).sync())
    assert not quota.reached(DOMAIN)  # not counted twice: 5 of 6


def test_a_failed_sync_keeps_its_counts_for_the_next() -> None:
    store = Store(limit=3)
    quota = started(store)
    quota.count([DOMAIN])
    quota.count([DOMAIN])
    store.fail = True
    seen: list[bool] = []

    def meanwhile() -> None:
        seen.append(quota.reached(DOMAIN))
        quota.count([DOMAIN])  # a message accepted while the sync runs

    assert not asyncio.run(syncer(quota, store, meanwhile).sync())
    assert seen == [False] and quota.reached(DOMAIN)  # 2 taken and given back, 1 new
    store.fail = False
    assert asyncio.run(syncer(quota, store, lambda: None).sync())
    assert store.used == 3 and quota.reached(DOMAIN)


def test_a_message_counts_once_per_organization_and_unknown_domains_not_at_all() -> None:
    store = Store(limit=2)
    quota = started(store)
    quota.count([DOMAIN, DOMAIN, "elsewhere.test"])
    assert quota.take_counts() == {ORG: 1}


def test_used_up_and_open_again_are_each_told_once_at_the_sync_that_sees_them() -> None:
    store = Store(limit=2)
    quota = started(store)
    stderr = io.StringIO()
    saved, sys.stderr = sys.stderr, stderr
    try:
        log.configure("info", json=True)  # as the daemon does, onto this stderr
        quota.count([DOMAIN])
        quota.count([DOMAIN])  # used up in memory: told once a sync has carried it
        assert asyncio.run(syncer(quota, store, lambda: None).sync())
        assert asyncio.run(syncer(quota, store, lambda: None).sync())
        store.limit = 10  # a plan raised
        assert asyncio.run(syncer(quota, store, lambda: None).sync())
    finally:
        sys.stderr = saved
        log.configure()  # back onto the test session's stderr
    events = [json.loads(line)["event"] for line in stderr.getvalue().splitlines() if line]
    assert [e for e in events if e.startswith("quota_")] == ["quota_full", "quota_open"]
