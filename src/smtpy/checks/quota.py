"""The monthly message quota of each organization, at RCPT time, with no store access.

`smtpy serve` knows, for every served domain, its organization, the month's
message quota and how much of it all processes and nodes used as of the last
sync (`QuotaState`). A recipient of an organization whose quota is used up is
refused with a temporary 452: the sender retries, and the message is accepted
once the plan is raised. Each accepted message counts once per organization,
in memory; `QuotaSync` adds the counts to the store every interval in ONE
transaction and takes the new states (`smtpy.billing.quota.sync_usage`), as
`RateSync` does for the rate limits. Between syncs a process decides with its
own counts (those a sync in flight took included) on top of the shared ones, so
the processes together may accept up to one interval's worth more than the
quota; a failed sync is retried with the next one, counts kept.

A plan's `max_message_size` is checked at the end of DATA (`PlanSize`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from smtpy import log
from smtpy.checks.stages import Client, Message, Refusal, Transaction
from smtpy.smtp.replies import QUOTA_REACHED, TOO_BIG_FOR_PLAN

if TYPE_CHECKING:
    from smtpy.checks.recipients import Accepted
    from smtpy.store.db import Database

logger = log.get(__name__)


@dataclass(frozen=True, slots=True)
class QuotaState:
    """One organization's quota as all nodes used it at the last sync."""

    org: int
    limit: int | None  # messages a month; None: no quota
    used: int
    max_message_size: int | None = None


Sync = Callable[[Mapping[int, int], float], dict[str, QuotaState]]  # runs in the store thread


class MessageQuota:
    """Domain -> organization quota state, and what this process counted since the sync."""

    def __init__(self) -> None:
        self._domains: dict[str, QuotaState] = {}
        self._counted: dict[int, int] = {}  # since the last sync took the counts
        self._syncing: dict[int, int] = {}  # taken by the sync in flight, not in `used` yet
        self._logged_full: set[int] = set()  # used up as of the last sync

    def state(self, domain: str) -> QuotaState | None:
        return self._domains.get(domain)

    def reached(self, domain: str) -> bool:
        state = self._domains.get(domain)
        if state is None or state.limit is None:
            return False
        return self._used(state) >= state.limit

    def _used(self, state: QuotaState) -> int:
        org = state.org
        return state.used + self._counted.get(org, 0) + self._syncing.get(org, 0)

    def count(self, domains: Iterable[str]) -> None:
        """One accepted message for these recipient domains: once per organization."""
        orgs = {state.org for d in domains if (state := self._domains.get(d)) is not None}
        for org in orgs:
            self._counted[org] = self._counted.get(org, 0) + 1

    def take_counts(self) -> dict[int, int]:
        """The counts for a sync to add to the store; they still count until it answers."""
        self._syncing, self._counted = self._counted, {}
        return dict(self._syncing)

    def give_back(self) -> None:
        """The sync failed: the counts it took wait for the next one."""
        for org, n in self._syncing.items():
            self._counted[org] = self._counted.get(org, 0) + n
        self._syncing = {}

    def apply(self, states: dict[str, QuotaState]) -> None:
        """The states every node reached together (what was counted since still counts).

        Logs `quota_full` / `quota_open` when an organization's quota became used up
        or open again in this process since the last sync (a plan raised, a new month)."""
        self._domains = states
        self._syncing = {}  # the states hold them now
        before, after = self._logged_full, self.full()
        self._logged_full = after
        for org in sorted(after - before):
            logger.info("quota_full", organization=org)
        for org in sorted(before - after):
            logger.info("quota_open", organization=org)

    def full(self) -> set[int]:
        """The organizations whose quota is used up, as this process sees it."""
        orgs = {state.org: state for state in self._domains.values()}
        return {
            org
            for org, state in orgs.items()
            if state.limit is not None and self._used(state) >= state.limit
        }


@dataclass(frozen=True)
class QuotaCheck:
    """RCPT TO: refuse (452) a recipient whose organization used up its monthly quota."""

    quota: MessageQuota

    async def check_rcpt(
        self, client: Client, txn: Transaction, recipient: Accepted
    ) -> Refusal | None:
        if recipient.srs_reversed or not self.quota.reached(recipient.alias_domain):
            return None
        return Refusal(QUOTA_REACHED, "quota")


@dataclass(frozen=True)
class PlanSize:
    """End of DATA: a message bigger than a recipient organization's plan allows (552)."""

    quota: MessageQuota

    async def check_data(
        self, client: Client, txn: Transaction, message: Message
    ) -> Refusal | None:
        size = len(message.content)
        for accepted in txn.accepted:
            state = self.quota.state(accepted.alias_domain)
            limit = None if state is None else state.max_message_size
            if limit is not None and size > limit:
                return Refusal(TOO_BIG_FOR_PLAN, "plan_size")
        return None


class QuotaSync:
    """Every `interval` seconds: add the counts to the store, take the new states."""

    def __init__(
        self,
        quota: MessageQuota,
        call: Callable[
            [Callable[[Database], dict[str, QuotaState]]], Awaitable[dict[str, QuotaState]]
        ],
        sync: Callable[[Database, Mapping[int, int], float], dict[str, QuotaState]],
        *,
        interval: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.quota = quota
        self._call = call
        self._sync = sync
        self.interval = interval
        self._clock = clock

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.sync()

    async def sync(self) -> bool:
        counted = self.quota.take_counts()
        now = self._clock()

        def write(db: Database) -> dict[str, QuotaState]:
            return self._sync(db, counted, now)

        try:
            states = await self._call(write)
        except Exception as exc:
            logger.warning("quota_sync_failed", organizations=len(counted), error=str(exc)[:200])
            self.quota.give_back()
            return False
        self.quota.apply(states)
        return True
