"""Statistics: counts per hour or day over a period, for the organization or one domain,
the per-domain breakdown, and the export as CSV or JSON. Every chart has its table."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from smtpy.admin import domains, stats
from smtpy.api.deps import Db
from smtpy.errors import InvalidInput
from smtpy.web.pages._view import iso
from smtpy.web.pages.messages import day_start
from smtpy.web.routing import page_router
from smtpy.web.session import PageUser
from smtpy.web.templating import FormErrors, render

router = page_router()

DAY = 86400
DEFAULT_DAYS = 7


def period(form: dict[str, str], now: float) -> tuple[float, float]:
    """(since, until) of the form's dates, UTC; by default the last 7 days, today included."""
    today = float(int(now // DAY) * DAY)
    since = day_start(form["since"], "since")
    until = day_start(form["until"], "until", end=True)
    if until is None:
        until = today + DAY
    if since is None:
        since = until - DEFAULT_DAYS * DAY
    return since, until  # the core says if they make no period


def _form(request: Request) -> dict[str, str]:
    form = {
        name: request.query_params.get(name, "").strip()
        for name in ("since", "until", "interval", "domain")
    }
    form["interval"] = form["interval"] or "day"
    return form


def _series(db: Db, org: int, form: dict[str, str]) -> Any:
    since, until = period(form, time.time())
    return stats.series(
        db=db,
        org=org,
        since=since,
        until=until,
        interval=form["interval"],
        domain=form["domain"] or None,
    )


def label(t: float, interval: str) -> str:
    text = iso(t)
    return text[:10] if interval == "day" else text[:13].replace("T", " ") + ":00"


@router.get("/stats")
def stats_page(request: Request, db: Db, user: PageUser) -> Response:
    org = user.principal.org
    form = _form(request)
    errors = FormErrors()
    result: Any = None
    breakdown: Any = None
    try:
        result = _series(db, org, form)
        breakdown = stats.compute(
            db=db, org=org, since=result.since, until=result.until, by="domain"
        )
    except InvalidInput as exc:
        errors.error(exc)  # at its field (a date), else above the form
    points = []
    if result is not None:
        points = [
            {"t": label(p.t, result.interval), **p.model_dump(exclude={"t"})} for p in result.series
        ]
    shown = {k: v for k, v in form.items() if v}
    return render(
        request,
        "stats/index.html",
        {
            "form": form,
            "result": result,
            "points": points,
            "breakdown": breakdown.groups if breakdown is not None else [],
            "domain_options": [("", "All domains")]
            + [(d.ascii_name, d.name) for d in domains.list_domains(db=db, org=org)],
            "export_csv": "/stats/export?" + urlencode({**shown, "format": "csv"}),
            "export_json": "/stats/export?" + urlencode({**shown, "format": "json"}),
            "errors": errors,
            "today": datetime.fromtimestamp(time.time(), UTC).date().isoformat(),
        },
        user=user,
        status_code=422 if errors else 200,
    )


@router.get("/stats/export")
def stats_export(request: Request, db: Db, user: PageUser) -> Response:
    """The series as a file: CSV (one line per hour or day) or JSON (the API's shape)."""
    form = _form(request)
    kind = request.query_params.get("format", "csv")
    if kind not in ("csv", "json"):
        raise InvalidInput(f"format {kind!r} is not one of csv, json")
    result = _series(db, user.principal.org, form)
    stamp = datetime.fromtimestamp(result.since, UTC).strftime("%Y%m%d")
    name = f"smtpy-stats-{stamp}-{result.interval}.{kind}"
    disposition = {"Content-Disposition": f'attachment; filename="{name}"'}
    if kind == "json":
        body = {
            "series": [{**p.model_dump(), "t": iso(p.t)} for p in result.series],
            "totals": result.totals.model_dump(),
        }
        return JSONResponse(body, headers=disposition)
    return Response(
        stats.series_csv(result),
        media_type="text/csv; charset=utf-8",
        headers=disposition,
    )
