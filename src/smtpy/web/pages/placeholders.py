"""Webhooks: its place in the navigation, until its own page comes."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response

from smtpy.web.routing import page_router
from smtpy.web.session import PageUser
from smtpy.web.templating import render

router = page_router()


@router.get("/webhooks")
def webhooks(request: Request, user: PageUser) -> Response:
    return render(request, "placeholder.html", {"title": "Webhooks"}, user=user)
