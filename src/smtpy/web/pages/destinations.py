"""The page a destination's confirmation link opens (`smtpy.admin.destinations`).

Its owner needs no account: the GET only shows what is asked and a button (a mail
scanner that opens links uses nothing up); the POST confirms, once, within 24 hours.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Form, Request
from fastapi.responses import Response

from smtpy.accounts.actor import acting
from smtpy.admin import destinations
from smtpy.api.deps import Db
from smtpy.errors import InvalidInput
from smtpy.web.pages.auth import not_cross_site, visitor
from smtpy.web.routing import page_router
from smtpy.web.templating import FormErrors, render

router = page_router()


@router.get(destinations.CONFIRM_PATH)
def confirm_page(request: Request, token: str = "") -> Response:
    return render(request, "destinations/confirm.html", {"token": token})


@router.post(destinations.CONFIRM_PATH)
def confirm(
    request: Request, db: Db, token: Annotated[str, Form(max_length=4096)] = ""
) -> Response:
    not_cross_site(request)
    try:
        with acting(visitor(request)):
            confirmed = destinations.confirm_link(db=db, token=token)
    except InvalidInput as exc:
        errors = FormErrors()
        errors.error(exc)
        return render(
            request,
            "destinations/confirm.html",
            {"token": token, "errors": errors},
            status_code=422,
        )
    return render(request, "destinations/confirm.html", {"confirmed": confirmed.address})
