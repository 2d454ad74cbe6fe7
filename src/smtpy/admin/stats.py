"""Numbers from the message log, computed in the store: the figures the dashboard charts.

Over a time window, in total or grouped by domain, alias or day (UTC):
received (recipients accepted), forwarded (deliveries the destination took),
deferred (temporary failures, counted per attempt), bounced, discarded,
rejected in total and by reason, and the median delivery delay of what was
forwarded.

Every figure is read from a covering index of `message_log`, never the table:
the counts of a window are index ranges of `(event, at, reason, delay)` (so a
day or a week costs what it holds, not what the log holds), a day-by-day
series is one such window per day, per-domain figures group the
`(domain, at, event, reason, delay)` index. The median is `percentile_cont`
on PostgreSQL; on SQLite the middle row of the sorted delays (ORDER BY …
OFFSET), per group for grouped figures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from smtpy.admin.organizations import scope
from smtpy.errors import InvalidInput
from smtpy.queue.message_log import EVENTS
from smtpy.store.db import Database

GroupBy = Literal["domain", "alias", "day"]
MAX_DAYS = 3660  # the longest period asked for at once
GROUPS: tuple[GroupBy, ...] = ("domain", "alias", "day")

# message_log.event → the name it has in the figures
_COUNTED = {
    "received": "received",
    "delivered": "forwarded",
    "deferred": "deferred",
    "bounced": "bounced",
    "discarded": "discarded",
}


class FiguresPublic(BaseModel):
    """The figures of one window (and one group), as `stats --json` prints them."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    received: int
    forwarded: int
    deferred: int
    bounced: int
    discarded: int
    rejected: int
    rejected_by_reason: dict[str, int]  # by reason, sorted
    median_delay: float | None  # seconds, of forwarded deliveries, to the millisecond


class GroupFigures(FiguresPublic):
    key: str  # the domain, alias or YYYY-MM-DD (UTC) of the group


class Stats(BaseModel):
    """What `smtpy stats` shows (`--json` prints these keys)."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    since: float
    until: float
    by: GroupBy | None
    total: FiguresPublic
    groups: list[GroupFigures]  # most received first (by day: in date order); [] when not grouped


@dataclass(slots=True)
class Figures:
    """The figures of one window as they are counted (then published as `FiguresPublic`)."""

    received: int = 0
    forwarded: int = 0
    deferred: int = 0
    bounced: int = 0
    discarded: int = 0
    rejected: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    median_delay: float | None = None  # seconds, of forwarded deliveries

    def add(self, event: str, reason: str | None, count: int) -> None:
        if event == "rejected":
            self.rejected += count
            key = reason or "other"
            self.rejected_by_reason[key] = self.rejected_by_reason.get(key, 0) + count
            return
        name = _COUNTED.get(event)
        if name is not None:
            setattr(self, name, getattr(self, name) + count)

    def fields(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "forwarded": self.forwarded,
            "deferred": self.deferred,
            "bounced": self.bounced,
            "discarded": self.discarded,
            "rejected": self.rejected,
            "rejected_by_reason": dict(sorted(self.rejected_by_reason.items())),
            "median_delay": None if self.median_delay is None else round(self.median_delay, 3),
        }


def _day_text(day: int) -> str:
    return datetime.fromtimestamp(day * 86400, UTC).strftime("%Y-%m-%d")


_WINDOW = "at >= :since AND at < :until"

Seen = tuple[str, dict[str, Any]]  # the organization's condition on `domain`, and its parameters


def _window(seen: Seen, since: float, until: float) -> tuple[str, dict[str, Any]]:
    """The window's condition (with the organization's, if it does not see everything)."""
    condition, params = seen
    window = f"{_WINDOW} AND {condition}" if condition else _WINDOW
    return window, {**params, "since": since, "until": until}


def _totals(db: Database, seen: Seen, since: float, until: float) -> Figures:
    """The figures of one window: each count is a range of the (event, at, reason, delay) index."""
    window, params = _window(seen, since, until)
    figures = Figures()
    counts = " UNION ALL ".join(
        f"SELECT '{event}' AS event, NULL AS reason, count(*) AS n FROM message_log"  # noqa: S608
        f" WHERE event = '{event}' AND {window}"
        for event in _COUNTED
    )
    rejected = (
        "SELECT 'rejected' AS event, reason, count(*) AS n FROM message_log"  # noqa: S608
        f" WHERE event = 'rejected' AND {window} GROUP BY reason"
    )
    for row in db.all(f"{counts} UNION ALL {rejected}", params):
        figures.add(row["event"], row["reason"], int(row["n"]))
    figures.median_delay = _median(db, window, params, figures.forwarded)
    return figures


def _median(db: Database, window: str, params: dict[str, Any], count: int) -> float | None:
    """Median delay of the `count` forwarded deliveries in the window."""
    if not count:
        return None
    where = f"event = 'delivered' AND {window} AND delay IS NOT NULL"
    if db.dialect == "postgresql":
        value = db.scalar(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY delay)"  # noqa: S608
            f" FROM message_log WHERE {where}",
            params,
        )
        return None if value is None else float(value)
    middle = db.all(
        f"SELECT delay FROM message_log WHERE {where}"  # noqa: S608
        " ORDER BY delay LIMIT :n OFFSET :skip",
        {**params, "n": 2 - count % 2, "skip": (count - 1) // 2},
    )
    return sum(float(r["delay"]) for r in middle) / len(middle) if middle else None


def _grouped(
    db: Database, seen: Seen, column: str, since: float, until: float
) -> dict[str, Figures]:
    """Figures per domain or alias (`column`, never user text)."""
    window, params = _window(seen, since, until)
    groups: dict[str, Figures] = {}
    # One sort key per row (not key, event, reason): the grouping sort is the cost here.
    counts = ", ".join(f"count(*) FILTER (WHERE event = '{e}') AS {e}" for e in _COUNTED)
    for row in db.all(
        f"SELECT {column} AS k, {counts} FROM message_log"  # noqa: S608
        f" WHERE {window} GROUP BY {column}",
        params,
    ):
        figures = groups.setdefault("" if row["k"] is None else str(row["k"]), Figures())
        for event in _COUNTED:
            figures.add(event, None, int(row[event]))
    hint = (
        " INDEXED BY ix_message_log_domain" if column == "domain" and db.dialect == "sqlite" else ""
    )
    for row in db.all(
        f"SELECT {column} AS k, reason, count(*) AS n FROM message_log{hint}"  # noqa: S608
        f" WHERE event = 'rejected' AND {window} GROUP BY {column}, reason",
        params,
    ):
        key = "" if row["k"] is None else str(row["k"])
        groups.setdefault(key, Figures()).add("rejected", row["reason"], int(row["n"]))
    where = f"event = 'delivered' AND {window} AND delay IS NOT NULL"
    if db.dialect == "postgresql":
        for row in db.all(
            f"SELECT {column} AS k, percentile_cont(0.5) WITHIN GROUP (ORDER BY delay) AS m"  # noqa: S608
            f" FROM message_log WHERE {where} GROUP BY {column}",
            params,
        ):
            key = "" if row["k"] is None else str(row["k"])
            groups[key].median_delay = None if row["m"] is None else float(row["m"])
    else:
        # SQLite's window functions sort slowly: the middle row(s) of each group instead,
        # each read in delay order from the group's range of its index.
        hint = f" INDEXED BY ix_message_log_{column}" if column == "domain" else ""
        for key, figures in groups.items():
            if not figures.forwarded or not key:
                continue
            count = figures.forwarded
            middle = db.all(
                f"SELECT delay FROM message_log{hint} WHERE {column} = :key AND {where}"  # noqa: S608
                " ORDER BY delay LIMIT :n OFFSET :skip",
                {**params, "key": key, "n": 2 - count % 2, "skip": (count - 1) // 2},
            )
            if middle:
                figures.median_delay = sum(float(r["delay"]) for r in middle) / len(middle)
    return dict(sorted(groups.items(), key=lambda item: (-item[1].received, item[0])))


def _by_day(db: Database, seen: Seen, since: float, until: float) -> dict[str, Figures]:
    """Figures per UTC day: one indexed window per day, so no sort over the rows."""
    groups: dict[str, Figures] = {}
    day = int(since // 86400)
    while day * 86400 < until:
        figures = _totals(db, seen, max(since, day * 86400.0), min(until, (day + 1) * 86400.0))
        if figures != Figures():
            groups[_day_text(day)] = figures
        day += 1
    return groups


def compute(
    *,
    db: Database,
    org: int,
    since: float,
    until: float | None = None,
    by: str | None = None,
) -> Stats:
    """The figures for `since <= at < until` (Unix times), in total and per group, of the
    events about the organization's domains."""
    if by is not None and by not in GROUPS:
        raise InvalidInput(f"cannot group by {by!r}: use one of {', '.join(GROUPS)}")
    until = time.time() + 1 if until is None else until
    if until - since > MAX_DAYS * 86400:
        raise InvalidInput(f"the period is too long: at most {MAX_DAYS} days")
    seen = scope(db=db, org=org).where("domain")
    if by == "day":
        groups = _by_day(db, seen, since, until)
    elif by is not None:
        groups = _grouped(db, seen, by, since, until)
    else:
        groups = {}
    return Stats(
        since=since,
        until=until,
        by=by,
        total=FiguresPublic(**_totals(db, seen, since, until).fields()),
        groups=[GroupFigures(key=key, **figures.fields()) for key, figures in groups.items()],
    )


# -- a time series (the API's /stats and its export) -------------------------------------

Interval = Literal["hour", "day"]
INTERVALS: dict[str, int] = {"hour": 3600, "day": 86400}
MAX_BUCKETS = 5000  # points of one series
# message_log.event → the series' name, for the five the series counts
_SERIES = {
    "received": "received",
    "delivered": "forwarded",
    "bounced": "bounced",
    "rejected": "rejected",
    "deferred": "deferred",
}


class Point(BaseModel):
    """One bucket of a series: its start (Unix time, UTC-aligned) and its counts."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    t: float
    received: int
    forwarded: int
    bounced: int
    rejected: int
    deferred: int


class SeriesTotals(BaseModel):
    model_config = ConfigDict(frozen=True, defer_build=True)

    received: int
    forwarded: int
    bounced: int
    rejected: int
    deferred: int


class Series(BaseModel):
    """Counts per hour or day over `since <= at < until`: every bucket, empty ones too."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    since: float
    until: float
    interval: Interval
    domain: str | None  # U-label, when one domain was asked for
    series: list[Point]
    totals: SeriesTotals


HOUR = 3600
SEAL_AFTER = 3600  # seconds after its end before an hour is rolled up (late commits)
_EVENT_LIST = ", ".join(f"'{e}'" for e in _SERIES)


def _bucket(db: Database, column: str) -> str:
    """The SQL of a row's bucket number from `column` (a Unix time), :origin and :step."""
    if db.dialect == "postgresql":
        return f"floor(({column} - :origin) / :step)"
    return f"CAST(({column} - :origin) / :step AS INTEGER)"


def _live(
    db: Database,
    seen: Seen,
    lo: float,
    hi: float,
    bounds: dict[str, float],
    *,
    by_domain: bool = False,
) -> list[dict[str, Any]]:
    """Counts per bucket (or domain, as `b`) and event counted in the log, for `lo <= at < hi`."""
    window, params = _window(seen, lo, hi)
    key = "coalesce(domain, '')" if by_domain else _bucket(db, "at")
    return db.all(
        f"SELECT {key} AS b, event, count(*) AS n FROM message_log"  # noqa: S608
        f" WHERE event IN ({_EVENT_LIST}) AND {window} GROUP BY 1, 2",
        {**params, **bounds},
    )


def _rolled(
    db: Database,
    seen: Seen,
    lo: float,
    hi: float,
    bounds: dict[str, float],
    *,
    by_domain: bool = False,
) -> list[dict[str, Any]]:
    """Counts per bucket (or domain, as `b`) and event from the rollup, for the whole hours
    `lo <= hour < hi`."""
    condition, params = seen
    where = "hour >= :lo AND hour < :hi" + (f" AND {condition}" if condition else "")
    sums = ", ".join(f"sum({e}) AS {e}" for e in _SERIES)
    key = "domain" if by_domain else _bucket(db, "hour")
    rows = db.all(
        f"SELECT {key} AS b, {sums}"  # noqa: S608
        f" FROM message_log_hourly WHERE {where} GROUP BY 1",
        {**params, **bounds, "lo": int(lo), "hi": int(hi)},
    )
    return [{"b": r["b"], "event": e, "n": r[e] or 0} for r in rows for e in _SERIES]


def _counted(
    db: Database,
    seen: Seen,
    since: float,
    until: float,
    bounds: dict[str, float],
    *,
    by_domain: bool = False,
) -> dict[Any, dict[str, int]]:
    """Counts per bucket (or domain) and series name over `since <= at < until`: whole
    hours already rolled up from the rollup, the edges and the open hours from the log."""
    counts: dict[Any, dict[str, int]] = {}

    def add(rows: list[dict[str, Any]]) -> None:
        for row in rows:
            key = str(row["b"]) if by_domain else int(row["b"])
            bucket = counts.setdefault(key, {})
            name = _SERIES[row["event"]]
            bucket[name] = bucket.get(name, 0) + int(row["n"])

    sealed = seal(db)
    first = -(-since // HOUR) * HOUR
    last = min(until // HOUR * HOUR, sealed)
    if first < last:
        add(_rolled(db, seen, first, last, bounds, by_domain=by_domain))
        for lo, hi in ((since, first), (last, until)):
            if lo < hi:
                add(_live(db, seen, lo, hi, bounds, by_domain=by_domain))
    else:
        add(_live(db, seen, since, until, bounds, by_domain=by_domain))
    return counts


def seal(db: Database, *, now: float | None = None) -> float:
    """Roll up the log's hours that ended at least SEAL_AFTER ago and are not rolled up yet;
    the time before which every hour is in `message_log_hourly`.

    One process does it at a time (the state row is updated first, in the same
    transaction: another process that got there first leaves nothing to do).
    The rollup keeps its counts when old log rows are pruned.
    """
    horizon = float((time.time() if now is None else now) - SEAL_AFTER) // HOUR * HOUR
    state = "SELECT sealed_until FROM message_log_rollup WHERE name = 'hourly'"
    mark = db.scalar(state)
    if mark is None:
        oldest = db.scalar("SELECT min(at) FROM message_log")
        start = horizon if oldest is None else min(horizon, float(oldest) // HOUR * HOUR)
        db.execute(
            "INSERT INTO message_log_rollup (name, sealed_until) VALUES ('hourly', :start)"
            " ON CONFLICT (name) DO NOTHING",
            {"start": start},
        )
        mark = db.scalar(state)
    mark = float(mark)
    if mark >= horizon:
        return mark
    hour = (
        "floor(at / 3600) * 3600"
        if db.dialect == "postgresql"
        else "CAST(at / 3600 AS INTEGER) * 3600"
    )
    with db.transaction():
        taken = db.execute(
            "UPDATE message_log_rollup SET sealed_until = :horizon"
            " WHERE name = 'hourly' AND sealed_until = :mark",
            {"horizon": horizon, "mark": mark},
        )
        if taken:
            events = ", ".join(EVENTS)
            counts = ", ".join(f"count(*) FILTER (WHERE event = '{e}')" for e in EVENTS)
            db.execute(
                f"INSERT INTO message_log_hourly (hour, domain, {events})"  # noqa: S608
                f" SELECT {hour}, coalesce(domain, ''), {counts} FROM message_log"
                " WHERE at >= :mark AND at < :horizon GROUP BY 1, 2",
                {"mark": mark, "horizon": horizon},
            )
    return float(db.scalar(state))


def series(
    *,
    db: Database,
    org: int,
    since: float,
    until: float,
    interval: str = "day",
    domain: str | None = None,
) -> Series:
    """The organization's counts per `interval` (UTC hours or days) in the window, or one
    of its domains'. Buckets start on UTC boundaries; the first and last may be partial
    (only the window's rows count). One grouped read of the (event, at) or (domain, at)
    covering index."""
    from smtpy.admin.domains import domain_id
    from smtpy.mail.addresses import display_domain

    if interval not in INTERVALS:
        raise InvalidInput(f"interval {interval!r} is not one of {', '.join(INTERVALS)}")
    if until <= since:
        raise InvalidInput("until must be later than since")
    step = INTERVALS[interval]
    origin = since // step * step
    buckets = int(-(-(until - origin) // step))
    if buckets > MAX_BUCKETS:
        raise InvalidInput(
            f"the period holds {buckets} {interval}s: ask for at most {MAX_BUCKETS} at once"
        )
    seen = scope(db=db, org=org).where("domain")
    alabel = None
    if domain is not None:
        _, alabel = domain_id(db=db, org=org, name=domain)
        seen = "domain = :domain", {"domain": alabel}
    counts = _counted(db, seen, since, until, {"origin": origin, "step": step})
    names = tuple(_SERIES.values())
    points = [
        Point(t=origin + n * step, **{k: counts.get(n, {}).get(k, 0) for k in names})
        for n in range(buckets)
    ]
    totals = SeriesTotals(**{k: sum(getattr(p, k) for p in points) for k in names})
    return Series(
        since=since,
        until=until,
        interval=interval,  # type: ignore[arg-type]
        domain=None if alabel is None else display_domain(alabel),
        series=points,
        totals=totals,
    )


class DomainCounts(SeriesTotals):
    """One domain's counts over a window."""

    domain: str  # U-label; "" for mail no served domain received


def by_domain(*, db: Database, org: int, since: float, until: float) -> list[DomainCounts]:
    """The organization's counts per domain over `since <= at < until`, most received
    first: from the hourly rollup, like `series`, so a month costs thousands of rows."""
    from smtpy.mail.addresses import display_domain

    if until <= since:
        raise InvalidInput("until must be later than since")
    seen = scope(db=db, org=org).where("domain")
    counts = _counted(db, seen, since, until, {}, by_domain=True)
    names = tuple(_SERIES.values())
    rows = [
        DomainCounts(
            domain=display_domain(domain) if domain else "",
            **{k: figures.get(k, 0) for k in names},
        )
        for domain, figures in counts.items()
    ]
    return sorted(rows, key=lambda r: (-r.received, r.domain))


def series_csv(result: Series) -> str:
    """The series as CSV: a header line, then one line per bucket (t in RFC 3339 UTC)."""
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["t", *_SERIES.values()])
    for point in result.series:
        t = datetime.fromtimestamp(point.t, UTC).isoformat(timespec="milliseconds")
        t = t.replace("+00:00", "Z")
        writer.writerow([t, *(getattr(point, k) for k in _SERIES.values())])
    return out.getvalue()
