"""The dashboard's part of the application: its pages and /static."""

from __future__ import annotations

import importlib
import pkgutil

from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles

from smtpy.web import pages
from smtpy.web.routing import page_router
from smtpy.web.session import HomeUser
from smtpy.web.templating import render


def page_modules() -> list[str]:
    """Every module of smtpy.web.pages (each has `router`), in name order."""
    return sorted(
        info.name for info in pkgutil.iter_modules(pages.__path__) if not info.name.startswith("_")
    )


def install(app: FastAPI) -> None:
    """Add the dashboard's pages and static files (package data) to `app`."""
    app.mount("/static", StaticFiles(packages=[("smtpy.web", "static")]), name="static")
    for name in page_modules():
        module = importlib.import_module(f"smtpy.web.pages.{name}")
        app.include_router(module.router)
    if not any(isinstance(r, APIRoute) and r.path == "/" for r in app.router.routes):
        app.include_router(_home)  # until the overview page exists


_home = page_router()


@_home.get("/")
def home(request: Request, user: HomeUser) -> Response:
    """The signed-in user's start page (the overview replaces it)."""
    return render(request, "home.html", user=user)
