"""The in-memory side of the monthly message quota (`smtpy.checks.quota`) against the
store's side (`smtpy.billing.quota.sync_usage`, on a real store): what one serving
process counted stays counted while a sync carries it to the store, is kept when the
sync fails, and is not counted twice once the store's answer holds it."""

from __future__ import annotations

import asyncio
import io
import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from smtpy import log
from smtpy.admin.domains import DomainCreate, add_domain
from smtpy.admin.organizations import resolve_organization
from smtpy.billing.quota import sync_usage
from smtpy.checks.quota import MessageQuota, QuotaState, QuotaSync
from smtpy.config import Settings
from smtpy.errors import StoreError
from smtpy.store.db import Database

DOMAIN = "example.test"


class Store:
    """The real store, its plan's monthly limit (the operator may raise it), and a switch
    that makes its next syncs fail as a locked database would."""

    def __init__(self, db: Database, tmp_path: Path, limit: int) -> None:
        self.db = db
        self.tmp_path = tmp_path
        self.limit = limit
        self.fail = False
        self.org = resolve_organization(db=db).id
        add_domain(db=db, org=self.org, domain=DomainCreate(name=DOMAIN))

    def settings(self) -> Settings:
        plan = {"name": "Free", "default": True, "limits": {"messages_per_month": self.limit}}
        return Settings(state_dir=self.tmp_path, plans={"free": plan})

    def sync(self, db: Database, counts: Mapping[int, int], now: float) -> dict[str, QuotaState]:
        if self.fail:
            raise StoreError("database is locked")
        with db.transaction():
            return sync_usage(db, counts, now, settings=self.settings())

    def used(self) -> int:
        return int(self.db.scalar("SELECT coalesce(sum(messages), 0) FROM usage_months") or 0)


def syncer(quota: MessageQuota, store: Store, during: Callable[[], None]) -> QuotaSync:
    """A sync whose store call runs `during` first: what the SMTP side sees meanwhile."""

    async def call(write: Callable[[Database], Any]) -> Any:
        during()
        await asyncio.sleep(0)
        return write(store.db)

    return QuotaSync(quota, call, store.sync, interval=1.0)


def started(store: Store) -> MessageQuota:
    quota = MessageQuota()
    assert asyncio.run(syncer(quota, store, lambda: None).sync())
    return quota


@pytest.fixture
def store(db: Database, tmp_path: Path) -> Store:
    return Store(db, tmp_path, limit=5)


def test_counts_a_sync_has_taken_still_count_until_the_store_answers(store: Store) -> None:
    quota = started(store)
    for _ in range(5):
        assert not quota.reached(DOMAIN)
        quota.count([DOMAIN])
    assert quota.reached(DOMAIN)

    seen: list[bool] = []
    assert asyncio.run(syncer(quota, store, lambda: seen.append(quota.reached(DOMAIN))).sync())
    assert seen == [True]  # the fifth message was taken by the sync, and still counted
    assert store.used() == 5 and quota.reached(DOMAIN)
    assert quota.full() == {store.org}

    store.limit = 6  # a plan raised: once the store says so, one more is accepted
    assert asyncio.run(syncer(quota, store, lambda: None).sync())
    assert not quota.reached(DOMAIN)  # not counted twice: 5 of 6
    assert store.used() == 5


def test_a_failed_sync_keeps_its_counts_for_the_next(store: Store) -> None:
    store.limit = 3
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
    assert store.used() == 0
    store.fail = False
    assert asyncio.run(syncer(quota, store, lambda: None).sync())
    assert store.used() == 3 and quota.reached(DOMAIN)


def test_a_message_counts_once_per_organization_and_unknown_domains_not_at_all(
    store: Store,
) -> None:
    quota = started(store)
    quota.count([DOMAIN, DOMAIN, "elsewhere.test"])
    assert asyncio.run(syncer(quota, store, lambda: None).sync())
    assert store.used() == 1


def test_used_up_and_open_again_are_each_told_once_at_the_sync_that_sees_them(
    store: Store,
) -> None:
    store.limit = 2
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
    told = [e for e in events if e in ("quota_full", "quota_open")]  # the store tells others
    assert told == ["quota_full", "quota_open"]
