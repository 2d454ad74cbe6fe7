"""SignerCache: deliveries that miss the cache together share one load of the keys."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from smtpy.outbound.signers import SignerCache


class FakeDatabase:
    def all(self, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        return []  # no active key: an empty Signer


class SlowStore:
    """Runs store calls after a delay, counting them; fails them while `failing`."""

    def __init__(self) -> None:
        self.calls = 0
        self.failing = False

    async def call(self, fn: Callable[[Any], Any]) -> Any:
        self.calls += 1
        await asyncio.sleep(0.05)
        if self.failing:
            raise RuntimeError("store down")
        return fn(FakeDatabase())


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_concurrent_misses_share_one_load() -> None:
    store = SlowStore()
    cache = SignerCache(store)  # type: ignore[arg-type]

    async def scenario() -> list[Any]:
        return await asyncio.gather(*(cache.get("example.test") for _ in range(50)))

    signers = run(scenario())
    assert store.calls == 1
    assert all(s is signers[0] for s in signers)


def test_a_failed_load_fails_its_waiters_and_the_next_get_tries_again() -> None:
    store = SlowStore()
    store.failing = True
    cache = SignerCache(store)  # type: ignore[arg-type]

    async def scenario() -> Any:
        results = await asyncio.gather(
            *(cache.get("example.test") for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(r, RuntimeError) for r in results)
        store.failing = False
        return await cache.get("example.test")

    assert run(scenario()) is not None
    assert store.calls == 2


def test_clear_during_a_load_keeps_its_result_out_of_the_cache() -> None:
    store = SlowStore()
    cache = SignerCache(store)  # type: ignore[arg-type]

    async def scenario() -> None:
        first = asyncio.ensure_future(cache.get("example.test"))
        await asyncio.sleep(0.01)
        cache.clear()  # SIGHUP: keys may have changed
        await first
        await cache.get("example.test")

    run(scenario())
    assert store.calls == 2


def test_a_cancelled_waiter_does_not_cancel_the_others() -> None:
    store = SlowStore()
    cache = SignerCache(store)  # type: ignore[arg-type]

    async def scenario() -> Any:
        first = asyncio.ensure_future(cache.get("example.test"))
        second = asyncio.ensure_future(cache.get("example.test"))
        await asyncio.sleep(0.01)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        return await second

    assert run(scenario()) is not None
    assert store.calls == 1
