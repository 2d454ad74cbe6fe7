"""The overview, `/`: today's and the week's figures, the queue, a 7-day chart, recent
activity (live, see `events`) and the domains that need something done."""

from __future__ import annotations

import time
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from smtpy.admin import domains, messages, queue, stats
from smtpy.api.deps import Db
from smtpy.web.pages._view import iso
from smtpy.web.routing import page_router
from smtpy.web.session import HomeUser
from smtpy.web.templating import render

router = page_router()

DAY = 86400
RECENT = 10  # rows of recent activity


def week_series(db: Any, org: int, now: float) -> list[dict[str, Any]]:
    """The last 7 UTC days (today included), one entry per day, days without mail too."""
    first = (int(now // DAY) - 6) * DAY
    found = stats.compute(db=db, org=org, since=first, until=now + 1, by="day")
    by_day = {g.key: g for g in found.groups}
    series = []
    for n in range(7):
        day = iso(first + n * DAY)[:10]
        figures = by_day.get(day)
        series.append(
            {
                "t": day,
                "received": figures.received if figures else 0,
                "forwarded": figures.forwarded if figures else 0,
                "bounced": figures.bounced if figures else 0,
                "rejected": figures.rejected if figures else 0,
            }
        )
    return series


@router.get("/")
def overview(request: Request, db: Db, user: HomeUser) -> Response:
    org = user.principal.org
    now = time.time()
    midnight = float(int(now // DAY) * DAY)
    today = stats.compute(db=db, org=org, since=midnight, until=now + 1).total
    week_start = midnight - 6 * DAY
    week = stats.compute(db=db, org=org, since=week_start, until=now + 1).total
    recent = messages.message_page(
        db=db, org=org, query=messages.MessageQuery(), limit=RECENT
    ).data  # newest first
    needing = [d for d in domains.list_domains(db=db, org=org) if not d.verified]
    return render(
        request,
        "overview/index.html",
        {
            "today": today,
            "week": week,
            "queued": len(queue.list_messages(db=db, org=org, now=now)),
            "series": week_series(db, org, now),
            "recent": recent,
            "last_id": max((r.id for r in recent), default=0),
            "needing": needing,
        },
        user=user,
    )
