"""Reading the message log: filtered listings and the follow cursor.

Rows come back oldest first, only those of the acting organization (`org`:
events about its domains; see `smtpy.admin.organizations`). A listing gives the newest `limit` rows that
match; following asks for rows after the last id seen, so each poll is one
indexed range read however big the log is.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from smtpy.admin.organizations import scope
from smtpy.errors import InvalidInput
from smtpy.queue.message_log import EVENTS
from smtpy.store.db import Database, Row

COLUMNS = (
    "id",
    "at",
    "event",
    "queue_id",
    "client_ip",
    "sender",
    "alias",
    "recipient",
    "domain",
    "size",
    "reason",
    "code",
    "reply",
    "remote_host",
    "delay",
)


@dataclass(frozen=True, slots=True)
class LogFilter:
    """What `smtpy log` (and later the API) may ask for; inputs are normalized by `make`."""

    since: float | None = None  # Unix time
    domain: str | None = None  # A-label
    alias: str | None = None  # local@a-label
    queue_id: str | None = None
    event: str | None = None

    @classmethod
    def make(
        cls,
        *,
        since: str | None = None,
        domain: str | None = None,
        alias: str | None = None,
        queue_id: str | None = None,
        event: str | None = None,
        now: float | None = None,
    ) -> LogFilter:
        """Validate user input: `since` is an age such as `2h`; addresses and domains are
        normalized as the log stores them (IDNA A-labels)."""
        from smtpy.admin.queue import parse_age
        from smtpy.mail.addresses import normalize_domain, parse_address

        if event is not None and event not in EVENTS:
            raise InvalidInput(f"event {event!r} is not one of {', '.join(EVENTS)}")
        now = time.time() if now is None else now
        return cls(
            since=None if since is None else now - parse_age(since),
            domain=None if domain is None else normalize_domain(domain),
            alias=None if alias is None else str(parse_address(alias)),
            queue_id=None if queue_id is None else queue_id.strip().upper(),
            event=event,
        )

    def where(self, db: Database, org: int) -> tuple[str, dict[str, Any]]:
        """The SQL condition of this filter inside `org`, and its parameters."""
        clauses, params = [], {}
        seen, seen_params = scope(db=db, org=org).where("domain")
        if seen:
            clauses.append(seen)
            params.update(seen_params)
        for name in ("domain", "alias", "queue_id", "event"):
            value = getattr(self, name)
            if value is not None:
                clauses.append(f"{name} = :{name}")
                params[name] = value
        if self.since is not None:
            clauses.append("at >= :since")
            params["since"] = self.since
        return " AND ".join(clauses) or "1 = 1", params


_SELECT = f"SELECT {', '.join(COLUMNS)} FROM message_log"  # noqa: S608 - fixed column names


def recent(*, db: Database, org: int, flt: LogFilter, limit: int = 100) -> list[Row]:
    """The newest `limit` matching rows, oldest first."""
    where, params = flt.where(db, org)
    rows = db.all(
        f"{_SELECT} WHERE {where} ORDER BY id DESC LIMIT :limit", {**params, "limit": limit}
    )
    rows.reverse()
    return rows


def after(*, db: Database, org: int, flt: LogFilter, after_id: int, limit: int = 1000) -> list[Row]:
    """Matching rows written after row `after_id`, oldest first (for --follow)."""
    where, params = flt.where(db, org)
    return db.all(
        f"{_SELECT} WHERE id > :after_id AND {where} ORDER BY id LIMIT :limit",
        {**params, "after_id": after_id, "limit": limit},
    )


def last_id(*, db: Database) -> int:
    """The newest row's id (0 for an empty log): where following starts."""
    return int(db.scalar("SELECT coalesce(max(id), 0) FROM message_log") or 0)


class Follower:
    """New matching rows, poll after poll (`smtpy log --follow`).

    Ids are given at insert but several writers (nodes sharing PostgreSQL)
    may commit out of id order, so each poll looks back `overlap` ids and
    skips the rows already returned: a row that committed late still shows.
    """

    def __init__(self, *, org: int, flt: LogFilter, start_id: int, overlap: int = 256) -> None:
        self.org = org
        self.filter = flt
        self.start_id = start_id  # rows up to here were shown before following began
        self.cursor = start_id
        self.overlap = overlap
        self._seen: set[int] = set()

    def shown(self, rows: list[Row]) -> None:
        """Rows printed already (by the listing before following began)."""
        self._seen.update(int(r["id"]) for r in rows if int(r["id"]) > self.start_id)

    def poll(self, db: Database, *, limit: int = 1000) -> list[Row]:
        floor = max(self.start_id, self.cursor - self.overlap)
        rows = [
            r
            for r in after(db=db, org=self.org, flt=self.filter, after_id=floor, limit=limit)
            if r["id"] not in self._seen
        ]
        if rows:
            self.cursor = max(self.cursor, max(int(r["id"]) for r in rows))
            self._seen.update(int(r["id"]) for r in rows)
            low = self.cursor - self.overlap
            self._seen = {i for i in self._seen if i > low}
        return rows
