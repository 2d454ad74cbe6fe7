"""The store seen from the event loop: one thread, one connection, group commit.

Blocking database calls never run on the event loop. `StoreThread.call(fn)`
runs `fn(db)` on the thread and awaits the result. `StoreThread.write(fn)` is
for writes that must be durable before the caller goes on (a received
message, delivery results): every write handed in while the previous commit
was running goes into ONE transaction, each in its own savepoint, so many
concurrent sessions and deliveries share each fsync (group commit) and
durability does not cap throughput. Each caller learns only after that
commit returned; a write that fails is undone alone and fails alone.

A connection that broke (the PostgreSQL server restarted, the network went
away) fails the jobs that met it, and the next job opens a new one: the
daemon recovers once the store is back, without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from smtpy import log
from smtpy.queue.queries import NewMessage, enqueue
from smtpy.store.db import Database

T = TypeVar("T")
logger = log.get(__name__)

_STOP = object()


@dataclass(slots=True)
class _Job:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    fn: Callable[[Database], Any]
    grouped: bool = False  # runs in the shared transaction of a group commit


class StoreThread:
    """A dedicated thread owning a `Database` connection."""

    def __init__(self, url: str, *, name: str = "store", max_batch: int = 256) -> None:
        self.url = url
        self.max_batch = max_batch
        self._jobs: queue.SimpleQueue[_Job | object] = queue.SimpleQueue()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._db: Database | None = None
        self.commits = 0  # group commits done, for tests and stats
        self._thread = threading.Thread(target=self._main, name=f"smtpy-{name}", daemon=True)

    def start(self) -> None:
        """Open the connection on the thread; raise here if that fails."""
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        self._jobs.put(_STOP)
        self._thread.join(timeout=30)

    async def call(self, fn: Callable[[Database], T]) -> T:
        """Run `fn(db)` on the thread, on its own (it manages any transaction itself)."""
        return await self._submit(fn, grouped=False)

    async def write(self, fn: Callable[[Database], T]) -> T:
        """Run `fn(db)` in the next group commit; return once that commit is durable."""
        return await self._submit(fn, grouped=True)

    async def enqueue(self, message: NewMessage) -> None:
        """Return once `message` is durably committed; raise if it could not be."""
        await self.write(partial(enqueue, message=message))

    async def _submit(self, fn: Callable[[Database], T], *, grouped: bool) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put(_Job(loop, future, fn, grouped))
        return await future

    # -- the thread -------------------------------------------------------

    def _main(self) -> None:
        try:
            self._db = Database(self.url)
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            while True:
                job = self._jobs.get()
                if job is _STOP:
                    return
                assert isinstance(job, _Job)
                if not job.grouped:
                    self._run(job)
                    continue
                batch = [job]
                stop_after = False
                while len(batch) < self.max_batch:
                    try:
                        more = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if more is _STOP:
                        stop_after = True
                        break
                    assert isinstance(more, _Job)
                    if not more.grouped:
                        self._run(more)
                    else:
                        batch.append(more)
                self._commit(batch)
                if stop_after:
                    return
        finally:
            if self._db is not None:
                self._db.close()

    def _connection(self) -> Database:
        """The connection, opened again if the previous one broke."""
        if self._db is None:
            self._db = Database(self.url)
        return self._db

    def _healthy(self) -> bool:
        """After an error: whether the connection still works; a broken one is dropped."""
        if self._db is None:
            return False
        try:
            self._db.scalar("SELECT 1")
        except Exception as exc:
            logger.warning("store_connection_lost", error=str(exc))
            self._db.close()
            self._db = None
            return False
        return True

    @staticmethod
    def _resolve(job: _Job, result: Any = None, error: BaseException | None = None) -> None:
        def settle() -> None:
            if job.future.done():
                return
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(result)

        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            job.loop.call_soon_threadsafe(settle)

    def _run(self, job: _Job) -> None:
        try:
            result = job.fn(self._connection())
        except BaseException as exc:
            self._healthy()
            self._resolve(job, error=exc)
        else:
            self._resolve(job, result)

    def _commit(self, batch: list[_Job]) -> None:
        outcomes: list[tuple[_Job, Any, BaseException | None]] = []
        try:
            db = self._connection()
            with db.transaction():
                for job in batch:
                    try:
                        with db.transaction():  # a savepoint: a failure undoes this job only
                            outcomes.append((job, job.fn(db), None))
                    except Exception as exc:
                        outcomes.append((job, None, exc))
        except Exception as exc:
            if self._healthy() and len(batch) > 1:
                for job in batch:  # the commit itself failed: try each job alone
                    self._commit([job])
                return
            logger.error("group_commit_failed", jobs=len(batch), error=str(exc))
            for job in batch:
                self._resolve(job, error=exc)
            return
        self.commits += 1
        for job, result, error in outcomes:
            self._resolve(job, result, error)
