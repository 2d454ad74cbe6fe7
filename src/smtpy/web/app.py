"""The dashboard's part of the application: its pages and /static, and the page a
browser gets for a path that is none of them (a 404 page, not the API's JSON)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from smtpy.errors import NotFound
from smtpy.web import pages
from smtpy.web.routing import error_page, page_router
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
    _pages_not_found(app)


def _pages_not_found(app: FastAPI) -> None:
    """A browser asking for a page that does not exist gets a page that says so; the API's
    paths, and clients that do not ask for HTML, keep the API's problem (JSON)."""
    api_answer = app.exception_handlers[StarletteHTTPException]

    async def answer(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        wants_page = "text/html" in request.headers.get("accept", "")
        if exc.status_code == 404 and wants_page and not request.url.path.startswith("/api/"):
            return error_page(request, NotFound(f"there is no page at {request.url.path}"))
        response = api_answer(request, exc)
        return await response if inspect.isawaitable(response) else response

    app.add_exception_handler(StarletteHTTPException, answer)


_home = page_router()


@_home.get("/")
def home(request: Request, user: HomeUser) -> Response:
    """The signed-in user's start page (the overview replaces it)."""
    return render(request, "home.html", user=user)
