"""Server-Sent Events: new rows of the message log, as they are written, for the pages
that watch mail arrive (the overview's recent activity, the message list).

Each connection polls the store every `POLL` seconds with the core's follow cursor
(`smtpy.admin.messages.Follower`, the same as `smtpy log --follow`): one indexed range
read per poll, only the organization's rows, only those the page's filter matches. A
stream ends when the browser goes, and after `LIFETIME` seconds in any case; the
browser's EventSource then reconnects by itself with `Last-Event-ID`, so nothing is
missed and no stream outlives a stopping server by long.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from smtpy.admin import messages
from smtpy.web.pages._view import store
from smtpy.web.routing import page_router
from smtpy.web.session import PageUser
from smtpy.web.templating import templates

router = page_router()

POLL = 2.0  # seconds between two reads of the store, per connection
LIFETIME = 25.0  # seconds a stream lasts before the browser reconnects
RETRY_MS = 1000  # how soon the browser reconnects
VIEWS = {"activity": "overview/_activity_item.html", "table": "messages/_row.html"}


def _event(row: dict[str, Any], html: str) -> str:
    data = "".join(f"data: {line}\n" for line in html.strip().splitlines())
    return f"id: {row['id']}\nevent: message\n{data}\n"


@router.get("/events/messages")
async def message_events(
    request: Request,
    user: PageUser,
    view: str = "table",
    status: str | None = None,
    domain: str | None = None,
    alias: str | None = None,
    after: int = 0,
) -> StreamingResponse:
    """New message-log rows as `message` events whose data is the row's HTML."""
    flt = messages.LogFilter.make(domain=domain or None, alias=alias or None, event=status or None)
    last = request.headers.get("last-event-id", "")
    start = int(last) if last.isdigit() else max(0, after)
    follower = messages.Follower(org=user.principal.org, flt=flt, start_id=start)
    template = templates.env.get_template(VIEWS.get(view, VIEWS["table"]))

    def poll() -> list[dict[str, Any]]:
        with store(request) as db:
            return follower.poll(db, limit=100)

    async def stream() -> AsyncIterator[str]:
        yield f"retry: {RETRY_MS}\n\n"
        deadline = time.monotonic() + LIFETIME
        while time.monotonic() < deadline:
            if await request.is_disconnected():
                return
            for row in await run_in_threadpool(poll):
                entry = {**row, "status": row["event"]}  # as the listing names it
                yield _event(row, template.render(row=entry))
            await asyncio.sleep(POLL)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
