"""Billing and webhooks: their places in the navigation, until their own pages come."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response

from smtpy.web.routing import page_router
from smtpy.web.session import PageUser
from smtpy.web.templating import render

router = page_router()


@router.get("/billing")
def billing(request: Request, user: PageUser) -> Response:
    return render(request, "placeholder.html", {"title": "Billing"}, user=user)


@router.get("/webhooks")
def webhooks(request: Request, user: PageUser) -> Response:
    return render(request, "placeholder.html", {"title": "Webhooks"}, user=user)
