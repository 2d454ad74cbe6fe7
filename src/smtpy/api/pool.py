"""A small pool of store connections for the API's worker threads."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from contextlib import contextmanager

from smtpy.errors import SmtpyError, StoreError
from smtpy.store.db import Database


class Pool:
    """Up to `size` open connections, reused across requests."""

    def __init__(self, url: str, size: int = 8) -> None:
        self.url = url
        self._idle: queue.LifoQueue[Database] = queue.LifoQueue(maxsize=size)

    @contextmanager
    def connection(self) -> Iterator[Database]:
        try:
            db = self._idle.get_nowait()
        except queue.Empty:
            db = Database(self.url, create=False, check_schema=False)
        try:
            yield db
        except SmtpyError as exc:
            # A caller's mistake (not found, invalid, forbidden) leaves the connection as
            # it was (transactions roll back on the way out); a store error may not.
            if isinstance(exc, StoreError):
                db.close()
                raise
            self._give_back(db)
            raise
        except BaseException:
            db.close()  # its state after an error is unknown: never reuse it
            raise
        self._give_back(db)

    def _give_back(self, db: Database) -> None:
        try:
            self._idle.put_nowait(db)
        except queue.Full:
            db.close()

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return
