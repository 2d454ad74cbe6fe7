"""Reading the message log: filtered listings and the follow cursor.

Rows come back oldest first, only those of the acting organization (`org`:
events about its domains; see `smtpy.admin.organizations`). A listing gives the newest `limit` rows that
match; following asks for rows after the last id seen, so each poll is one
indexed range read however big the log is.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict

from smtpy.admin.organizations import scope
from smtpy.errors import Conflict, InvalidInput, NotFound
from smtpy.queue.message_log import EVENTS
from smtpy.store.db import Database, Row
from smtpy.store.pages import Page, check_limit, decode_cursor, encode_cursor, page_of

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


# -- the API's view: pages of the log, one message in full, retry and delete -------------

# What `status` may ask for: the log's events, and `forwarded` as the stats name delivered.
STATUSES = (*EVENTS, "forwarded")
MAX_QUERY = 200  # characters of free text
_QUEUE_ID = re.compile(r"[0-9A-HJKMNP-TV-Z]{16}")  # Crockford base 32 (queue.new_queue_id)


class LogEntry(BaseModel):
    """One row of the message log as the API lists it (`status` is the event)."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    id: int
    at: float
    status: str
    queue_id: str | None  # the message's id in GET /messages/{id}; None for RCPT refusals
    client_ip: str | None
    sender: str | None
    alias: str | None
    recipient: str | None
    domain: str | None
    size: int | None
    reason: str | None
    code: int | None
    reply: str | None
    remote_host: str | None
    delay: float | None


@dataclass(frozen=True, slots=True)
class MessageQuery:
    """The filters of a listing, normalized (`make` validates what a user typed)."""

    domain: str | None = None  # A-label
    alias: str | None = None  # local@a-label
    status: str | None = None  # an event
    # Lower case: a queue id (an indexed lookup), else a substring of the sender, alias or
    # recipient (a scan of the rows the other filters leave: narrow it with since/until).
    text: str | None = None
    since: float | None = None  # Unix time, inclusive
    until: float | None = None  # Unix time, exclusive

    @classmethod
    def make(
        cls,
        *,
        domain: str | None = None,
        alias: str | None = None,
        status: str | None = None,
        q: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> MessageQuery:
        from smtpy.mail.addresses import normalize_domain, parse_address

        if status is not None and status not in STATUSES:
            raise _field(f"status {status!r} is not one of {', '.join(STATUSES)}", "status")
        if q is not None and len(q) > MAX_QUERY:
            raise _field(f"q is longer than {MAX_QUERY} characters", "q")
        if since is not None and until is not None and until <= since:
            raise _field("until must be later than since", "until")
        try:
            domain = None if domain is None else normalize_domain(domain)
        except InvalidInput as exc:
            raise _field(exc.message, "domain") from None
        try:
            alias = None if alias is None else str(parse_address(alias))
        except InvalidInput as exc:
            raise _field(exc.message, "alias") from None
        return cls(
            domain=domain,
            alias=alias,
            status="delivered" if status == "forwarded" else status,
            text=(q.strip().lower() or None) if q is not None else None,
            since=since,
            until=until,
        )

    @property
    def reads_rows(self) -> bool:
        """Free text other than a queue id: a substring no index answers."""
        return self.text is not None and not _QUEUE_ID.fullmatch(self.text.upper())

    def where(
        self, db: Database, org: int, *, text: bool = True
    ) -> tuple[list[str], dict[str, Any]]:
        """SQL conditions and parameters; `text=False` leaves the free text out."""
        clauses, params = [], {}
        # On SQLite, `+domain` keeps the organization's list of domains from choosing the
        # domain index (which would sort every row of the organization): the newest-first
        # walk of the time index stops after one page.
        column = "+domain" if db.dialect == "sqlite" else "domain"
        seen, seen_params = scope(db=db, org=org).where(column)
        if seen:
            clauses.append(seen)
            params.update(seen_params)
        for column, value in (("domain", self.domain), ("alias", self.alias)):
            if value is not None:
                clauses.append(f"{column} = :{column}")
                params[column] = value
        if self.status is not None:
            clauses.append("event = :event")
            params["event"] = self.status
        if text:
            more, more_params = self.text_condition()
            clauses += more
            params.update(more_params)
        if self.since is not None:
            clauses.append("at >= :since")
            params["since"] = self.since
        if self.until is not None:
            clauses.append("at < :until")
            params["until"] = self.until
        return clauses, params

    def text_condition(self) -> tuple[list[str], dict[str, Any]]:
        """The free text's condition (none without text): a queue id, or a substring."""
        if self.text is None:
            return [], {}
        if _QUEUE_ID.fullmatch(self.text.upper()):
            return ["queue_id = :q_id"], {"q_id": self.text.upper()}  # one indexed lookup
        like = self.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return [
            "(queue_id = :q_id OR lower(sender) LIKE :q_like ESCAPE '\\'"
            " OR lower(alias) LIKE :q_like ESCAPE '\\'"
            " OR lower(recipient) LIKE :q_like ESCAPE '\\')"
        ], {"q_id": self.text.upper(), "q_like": f"%{like}%"}


class _FieldInvalid(InvalidInput):
    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


def _field(message: str, field: str) -> InvalidInput:
    return _FieldInvalid(message, field=field)


def _entry(row: Row) -> LogEntry:
    return LogEntry(status=row["event"], **{c: row[c] for c in COLUMNS if c != "event"})


def message_page(
    *,
    db: Database,
    org: int,
    query: MessageQuery,
    limit: int | None = None,
    cursor: str | None = None,
    window: int | None = None,
) -> Page[LogEntry]:
    """Matching log rows, newest first, a page at a time.

    The cursor holds the last row's (at, id): the next page is the rows strictly
    older, so rows written meanwhile never shift it. The condition is written as a
    range on `at` (`at <= t AND (at < t OR id < i)`) so that both stores read the
    (…, at) indexes from the cursor on, however deep the page.

    A free-text search (a substring, which no index answers) reads at most `window`
    (`SEARCH_WINDOW`) rows of the log per page: when they hold fewer matches than a
    page, the page is shorter, `has_more` is true and the cursor goes on from the
    last row read. A search for text that no row holds thus costs the same bounded
    time per page on a log of any size, instead of reading all of it at once.
    """
    size = check_limit(limit)
    clauses, params = query.where(db, org, text=False)
    text, text_params = query.text_condition()
    params.update(text_params)
    after: list[str] = []
    if cursor is not None:
        at, row_id = decode_cursor(cursor)
        if not isinstance(row_id, int):
            raise _field("cursor is not valid: pass the next_cursor of the previous page", "cursor")
        after.append("at <= :cursor_at AND (at < :cursor_at OR id < :cursor_id)")
        params.update({"cursor_at": at, "cursor_id": row_id})
    end = None
    if query.reads_rows:
        end = _search_window(db, [*clauses, *after], params, window or SEARCH_WINDOW)
    if end is not None:
        after.append("(at > :window_at OR (at = :window_at AND id >= :window_id))")
        params.update({"window_at": end[0], "window_id": end[1]})
    where = " AND ".join([*clauses, *text, *after]) or "1 = 1"
    rows = db.all(
        f"{_SELECT} WHERE {where} ORDER BY at DESC, id DESC LIMIT :n",
        {**params, "n": size + 1},
    )
    page = page_of([_entry(r) for r in rows], size, key=lambda e: (e.at, e.id))
    if end is not None and not page.has_more:  # older rows are left to search
        return Page[LogEntry](data=page.data, has_more=True, next_cursor=encode_cursor(*end))
    return page


SEARCH_WINDOW = 10_000  # log rows a free-text search reads for one page, at most


def _search_window(
    db: Database, clauses: list[str], params: dict[str, Any], window: int
) -> tuple[float, int] | None:
    """(at, id) of the last row a free-text page may read; None when no more remain.

    Found with the page's other conditions (`clauses`, without the text) by walking
    the (…, at) index they use, which is cheap next to comparing text in every row."""
    where = " AND ".join(clauses) or "1 = 1"
    rows = db.all(  # the window's last row, and whether any is older
        f"SELECT at, id FROM message_log WHERE {where}"  # noqa: S608
        " ORDER BY at DESC, id DESC LIMIT 2 OFFSET :window",
        {**params, "window": window - 1},
    )
    return (float(rows[0]["at"]), int(rows[0]["id"])) if len(rows) == 2 else None


class AttemptView(BaseModel):
    """One delivery attempt and the remote's reply."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    at: float
    result: str  # delivered | deferred | bounced (failed)
    remote_host: str | None
    code: int | None
    reply: str | None


class DeliveryView(BaseModel):
    """One destination of a message: where it goes, where it stands, what was tried."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    original_recipient: str  # the address the sender used
    recipient: str  # where it goes
    status: str  # queued: active | deferred | held; done: delivered | bounced | discarded
    attempts: list[AttemptView]


class MessageDetail(BaseModel):
    """A message as the API shows it: its envelope, its state, and every event."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    id: str  # the queue id
    status: str  # queued | deferred | held | delivered | bounced | rejected | discarded
    queued: bool  # still in the queue: retry and delete apply
    sender: str | None
    recipients: list[str]  # the addresses the sender used
    client_ip: str | None
    size: int | None
    received_at: float | None
    headers: str | None  # while the message is still queued (the body is never kept after)
    authentication_results: str | None  # while queued (RFC 8601 value computed at reception)
    deliveries: list[DeliveryView]
    events: list[LogEntry]  # oldest first


def _log_rows(db: Database, org: int, queue_id: str) -> list[Row]:
    clauses, params = MessageQuery().where(db, org)
    where = " AND ".join([*clauses, "queue_id = :qid"])
    return db.all(f"{_SELECT} WHERE {where} ORDER BY at, id", {**params, "qid": queue_id})


def _queued(db: Database, org: int, queue_id: str) -> Any:
    from smtpy.admin.queue import show_message

    try:
        return show_message(db=db, org=org, queue_id=queue_id)
    except NotFound:
        return None


def message_detail(*, db: Database, org: int, message_id: str) -> MessageDetail:
    """The message with queue id `message_id`: from the queue while it is there, and from
    the message log (which outlives it). Another organization's message is not found."""
    queue_id = message_id.strip().upper()
    missing = NotFound(f"there is no message {message_id}; list them with GET /messages")
    if not queue_id or len(queue_id) > 32:
        raise missing
    rows = _log_rows(db, org, queue_id)
    queued = _queued(db, org, queue_id)
    if not rows and queued is None:
        raise missing
    events = [_entry(r) for r in rows]
    received = [e for e in events if e.status in ("received", "discarded") and e.size is not None]
    first = received[0] if received else (events[0] if events else None)
    deliveries: dict[tuple[str, str], DeliveryView] = {}
    for e in events:
        if not e.alias:
            continue
        targets = (e.recipient or "").split(", ") if e.recipient else [""]
        if e.status == "received":
            for dest in targets:
                deliveries.setdefault(
                    (e.alias, dest),
                    DeliveryView(
                        original_recipient=e.alias, recipient=dest, status="queued", attempts=[]
                    ),
                )
        elif e.status == "discarded":  # by its alias, or by an admin
            for dest in targets:
                old = deliveries.get((e.alias, dest))
                deliveries[(e.alias, dest)] = DeliveryView(
                    original_recipient=e.alias,
                    recipient=dest,
                    status="discarded",
                    attempts=old.attempts if old else [],
                )
        elif e.status in ("delivered", "deferred", "bounced") and e.recipient:
            old = deliveries.get((e.alias, e.recipient))
            attempt = AttemptView(
                at=e.at, result=e.status, remote_host=e.remote_host, code=e.code, reply=e.reply
            )
            deliveries[(e.alias, e.recipient)] = DeliveryView(
                original_recipient=e.alias,
                recipient=e.recipient,
                status=e.status,
                attempts=[*(old.attempts if old else []), attempt],
            )
    headers = auth_results = None
    if queued is not None:
        for d in queued.recipients:
            tried = [
                AttemptView(
                    at=a.at,
                    result="bounced" if a.result == "failed" else a.result,
                    remote_host=a.remote_host,
                    code=a.code,
                    reply=a.reply,
                )
                for a in queued.attempts
                if a.recipient == d.recipient
            ]
            deliveries[(d.original_recipient, d.recipient)] = DeliveryView(
                original_recipient=d.original_recipient,
                recipient=d.recipient,
                status=d.state,
                attempts=tried,
            )
        headers = queued.headers
        auth_results = db.scalar(
            "SELECT auth_results FROM messages WHERE queue_id = :q", {"q": queue_id}
        )
    return MessageDetail(
        id=queue_id,
        status=_overall(queued, events, list(deliveries.values())),
        queued=queued is not None,
        sender=queued.sender if queued is not None else (first.sender if first else None),
        recipients=sorted({d.original_recipient for d in deliveries.values()})
        or sorted({e.alias for e in events if e.alias}),
        client_ip=queued.client_ip if queued is not None else (first.client_ip if first else None),
        size=queued.size if queued is not None else (first.size if first else None),
        received_at=queued.received_at if queued is not None else (first.at if first else None),
        headers=headers,
        authentication_results=auth_results,
        deliveries=sorted(deliveries.values(), key=lambda d: (d.original_recipient, d.recipient)),
        events=events,
    )


def _overall(queued: Any, events: list[LogEntry], deliveries: list[DeliveryView]) -> str:
    if queued is not None:
        return "queued" if queued.state == "active" else str(queued.state)
    states = {d.status for d in deliveries}
    for status in ("bounced", "delivered", "discarded"):
        if status in states:
            return status
    return events[-1].status if events else "queued"


def _still_queued(db: Database, org: int, message_id: str) -> str:
    """The queue id of a message still queued; `Conflict` when it left the queue."""
    detail = message_detail(db=db, org=org, message_id=message_id)
    if not detail.queued:
        raise Conflict(f"message {detail.id} is no longer queued ({detail.status})")
    return detail.id


def retry_message(*, db: Database, org: int, message_id: str) -> MessageDetail:
    """Make a queued message's deliveries due now (a running daemon tries within a second)."""
    from smtpy.admin.queue import retry

    queue_id = _still_queued(db, org, message_id)
    retry(db=db, org=org, queue_ids=[queue_id])
    return message_detail(db=db, org=org, message_id=queue_id)


def delete_message(*, db: Database, org: int, message_id: str) -> None:
    """Remove a queued message without a bounce (the log records it as discarded)."""
    from smtpy.admin.queue import delete

    delete(db=db, org=org, queue_ids=[_still_queued(db, org, message_id)])
