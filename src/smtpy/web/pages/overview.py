"""The overview, `/`: today's and the week's figures, the queue, a 7-day chart, recent
activity (live, see `events`) and the domains that need something done."""

from __future__ import annotations

import time

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


@router.get("/")
def overview(request: Request, db: Db, user: HomeUser) -> Response:
    org = user.principal.org
    now = time.time()
    midnight = float(int(now // DAY) * DAY)
    # The last 7 UTC days, today included, one point per day: one read of the store.
    week = stats.series(db=db, org=org, since=midnight - 6 * DAY, until=now + 1, interval="day")
    series = [{"t": iso(p.t)[:10], **p.model_dump(exclude={"t"})} for p in week.series]
    recent = messages.message_page(
        db=db, org=org, query=messages.MessageQuery(), limit=RECENT
    ).data  # newest first
    needing = [d for d in domains.list_domains(db=db, org=org) if not d.verified]
    return render(
        request,
        "overview/index.html",
        {
            "today": week.series[-1],
            "week": week.totals,
            "queued": len(queue.list_messages(db=db, org=org, now=now)),
            "series": series,
            "recent": recent,
            "last_id": max((r.id for r in recent), default=0),
            "needing": needing,
        },
        user=user,
    )
