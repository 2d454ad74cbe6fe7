"""The DKIM keys that sign outgoing mail: their store query and the delivery workers' cache.

`SignerCache.get(domain)` answers a `Signer` holding the domain's active keys
(none: a Signer that signs nothing), loaded through the store's reader thread
and reloaded every `SIGNER_TTL` seconds or after `clear()` (SIGHUP).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol, TypeVar

from smtpy.dkim.sign import Signer, SigningKey
from smtpy.store.db import Database

__all__ = ["SIGNER_TTL", "SignerCache", "signing_keys"]

SIGNER_TTL = 30.0

T = TypeVar("T")


class StoreCalls(Protocol):
    """A store thread (`smtpy.queue.writer.StoreThread`): runs `fn(db)` off the event loop."""

    async def call(self, fn: Callable[[Database], T]) -> T: ...


def signing_keys(db: Database, domain: str) -> list[dict[str, Any]]:
    """Active keys of `domain` with their private parts, oldest first: for signing only."""
    return db.all(
        "SELECT k.selector, k.algorithm, k.private_key FROM dkim_keys k JOIN domains d"
        " ON d.id = k.domain_id WHERE d.name = :name AND k.active = :t ORDER BY k.id",
        {"name": domain, "t": True},
    )


class SignerCache:
    """The active DKIM keys of each domain, reloaded every `SIGNER_TTL` seconds or on demand.

    Parsing an RSA key holds the GIL for tens of milliseconds, so deliveries
    that miss the cache at the same moment (a restart with a backlog, the TTL
    running out under load) share one load instead of each parsing the keys.
    """

    def __init__(self, store: StoreCalls) -> None:
        self._store = store
        self._cache: dict[str, tuple[float, Signer]] = {}
        self._loading: dict[str, asyncio.Future[Signer]] = {}

    def clear(self) -> None:
        self._cache.clear()
        self._loading.clear()  # a load already running must not fill the cache with old keys

    async def get(self, domain: str) -> Signer:
        hit = self._cache.get(domain)
        if hit is not None and time.monotonic() - hit[0] < SIGNER_TTL:
            return hit[1]
        loading = self._loading.get(domain)
        if loading is None:
            loading = asyncio.ensure_future(self._load(domain))
            self._loading[domain] = loading
            loading.add_done_callback(partial(self._loaded, domain))
        # Shielded: a delivery cancelled while waiting must not cancel the others' load.
        return await asyncio.shield(loading)

    async def _load(self, domain: str) -> Signer:
        rows = await self._store.call(lambda db: signing_keys(db, domain))
        return Signer(
            [SigningKey(domain, r["selector"], r["algorithm"], r["private_key"]) for r in rows]
        )

    def _loaded(self, domain: str, loading: asyncio.Future[Signer]) -> None:
        if self._loading.get(domain) is not loading:
            return  # cleared meanwhile
        del self._loading[domain]
        if not loading.cancelled() and loading.exception() is None:
            self._cache[domain] = (time.monotonic(), loading.result())
