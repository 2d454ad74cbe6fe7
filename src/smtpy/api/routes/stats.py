"""/api/v1 routes: stats (see API.md): counts per hour or day, every bucket present."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Response
from pydantic import BaseModel

from smtpy.admin import stats
from smtpy.api.deps import Auth, Db
from smtpy.api.routes.messages import unix
from smtpy.api.shapes import rfc3339

router = APIRouter(tags=["stats"])

Interval = Literal["hour", "day"]
DEFAULT_SPAN = {"hour": 86400.0, "day": 30 * 86400.0}  # when `since` is left out


class PointOut(BaseModel):
    t: str  # the bucket's start, RFC 3339 UTC
    received: int
    forwarded: int
    bounced: int
    rejected: int
    deferred: int


class TotalsOut(BaseModel):
    received: int
    forwarded: int
    bounced: int
    rejected: int
    deferred: int


class StatsOut(BaseModel):
    since: str
    until: str
    interval: Interval
    domain: str | None
    series: list[PointOut]
    totals: TotalsOut


def _series(
    db: Db,
    principal: Auth,
    since: datetime | None,
    until: datetime | None,
    interval: Interval,
    domain: str | None,
) -> stats.Series:
    end = unix(until) or time.time()
    start = unix(since)
    return stats.series(
        db=db,
        org=principal.org,
        since=end - DEFAULT_SPAN[interval] if start is None else start,
        until=end,
        interval=interval,
        domain=domain,
    )


def _out(result: stats.Series) -> StatsOut:
    return StatsOut(
        since=rfc3339(result.since) or "",
        until=rfc3339(result.until) or "",
        interval=result.interval,
        domain=result.domain,
        series=[PointOut(**{**p.model_dump(), "t": rfc3339(p.t)}) for p in result.series],
        totals=TotalsOut(**result.totals.model_dump()),
    )


@router.get("/stats")
def get_stats(
    db: Db,
    principal: Auth,
    since: datetime | None = None,
    until: datetime | None = None,
    interval: Interval = "day",
    domain: str | None = None,
) -> StatsOut:
    """Received, forwarded, bounced, rejected and deferred per hour or day (UTC buckets,
    empty ones included); `since` defaults to 30 days (hour: 24 hours) before `until`
    (now)."""
    return _out(_series(db, principal, since, until, interval, domain))


@router.get("/stats/export")
def export_stats(
    db: Db,
    principal: Auth,
    format: Literal["csv", "json"] = "csv",
    since: datetime | None = None,
    until: datetime | None = None,
    interval: Interval = "day",
    domain: str | None = None,
) -> Response:
    """The same series as a file to download: CSV (one line per bucket) or JSON."""
    result = _series(db, principal, since, until, interval, domain)
    stamp = rfc3339(result.until) or ""
    if format == "json":
        body, media = _out(result).model_dump_json(), "application/json"
    else:
        body, media = stats.series_csv(result), "text/csv; charset=utf-8"
    return Response(
        body,
        media_type=media,
        headers={
            "Content-Disposition": f'attachment; filename="smtpy-stats-{stamp[:10]}.{format}"'
        },
    )
