"""The message log: `/messages` with filters (status, domain, alias, sender or any text,
date range) and stable paging (the core's keyset cursor), new rows arriving live (see
`events`); `/messages/{id}`: envelope, headers, authentication results, every delivery
and attempt with the remote's reply; retry and delete while the message is queued."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import Response

from smtpy.admin import messages
from smtpy.admin.aliases import FieldInvalid
from smtpy.api.deps import Db
from smtpy.errors import InvalidInput
from smtpy.web.pages._view import STATUSES, as_user
from smtpy.web.routing import page_router
from smtpy.web.session import PageUser
from smtpy.web.templating import FormErrors, done, render

router = page_router()

FILTERS = ("status", "domain", "alias", "q", "since", "until")
PAGE = 50


def day_start(text: str, field: str, *, end: bool = False) -> float | None:
    """A date typed in the form (YYYY-MM-DD, UTC) as a Unix time; `end`: the day after it."""
    if not text:
        return None
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise FieldInvalid(f"{text!r} is not a date: write it as YYYY-MM-DD", field=field) from None
    start = datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()
    return start + 86400 if end else start


def query_of(form: dict[str, str]) -> messages.MessageQuery:
    return messages.MessageQuery.make(
        status=form["status"] or None,
        domain=form["domain"] or None,
        alias=form["alias"] or None,
        q=form["q"] or None,
        since=day_start(form["since"], "since"),
        until=day_start(form["until"], "until", end=True),
    )


def live_url(query: Any, last_id: int) -> str | None:
    """The event stream of new rows for this filter (None when the filter is one whose new
    rows the follow cursor cannot select: free text, or a range that ended)."""
    if query.text is not None or query.until is not None:
        return None
    params = {"view": "table", "after": str(last_id)}
    for name in ("status", "domain", "alias"):
        value = getattr(query, name)
        if value:
            params[name] = value
    return "/events/messages?" + urlencode(params)


@router.get("/messages")
def message_list(request: Request, db: Db, user: PageUser) -> Response:
    form = {name: request.query_params.get(name, "").strip() for name in FILTERS}
    cursor = request.query_params.get("cursor") or None
    errors = FormErrors()
    page: Any = None
    live = None
    try:
        query = query_of(form)
        page = messages.message_page(
            db=db, org=user.principal.org, query=query, limit=PAGE, cursor=cursor
        )
        if cursor is None:
            live = live_url(query, max((e.id for e in page.data), default=0))
    except InvalidInput as exc:
        errors.error(exc, "q")
    shown = {k: v for k, v in form.items() if v}
    next_url = None
    if page is not None and page.has_more and page.next_cursor:
        next_url = "/messages?" + urlencode({**shown, "cursor": page.next_cursor})
    return render(
        request,
        "messages/list.html",
        {
            "form": form,
            "statuses": [("", "Any"), *((s, s) for s in STATUSES)],
            "entries": page.data if page is not None else [],
            "next_url": next_url,
            "first_url": "/messages?" + urlencode(shown) if cursor else None,
            "live_url": live,
            "errors": errors,
        },
        user=user,
        status_code=422 if errors else 200,
    )


@router.get("/messages/{message_id}")
def message_page(request: Request, db: Db, user: PageUser, message_id: str) -> Response:
    detail = messages.message_detail(db=db, org=user.principal.org, message_id=message_id)
    return render(request, "messages/detail.html", {"message": detail}, user=user)


@router.post("/messages/{message_id}/retry")
def message_retry(request: Request, db: Db, user: PageUser, message_id: str) -> Response:
    user.principal.require("manage")
    with as_user(user):
        detail = messages.retry_message(db=db, org=user.principal.org, message_id=message_id)
    return done(
        request,
        f"/messages/{detail.id}",
        f"Message {detail.id} will be tried again within a second or two.",
    )


@router.post("/messages/{message_id}/delete")
def message_delete(request: Request, db: Db, user: PageUser, message_id: str) -> Response:
    user.principal.require("manage")
    with as_user(user):
        messages.delete_message(db=db, org=user.principal.org, message_id=message_id)
    return done(request, "/messages", f"Message {message_id.upper()} was deleted without a bounce.")
