"""Page routers: what a page's errors become in the browser (HTML, never JSON).

Each module in smtpy.web.pages makes `router = page_router()`. Its routes turn what
the core raises, and the session's redirects, into pages:

- `Redirect` (not signed in, 2FA step first)  -> 303 to the sign-in page
- `Landing` (a visitor on / with sign-up open)  -> the landing page
- `Unauthorized`                                -> 303 to /login
- `Forbidden` 403, `NotFound` 404, `TooManyRequests` 429 (Retry-After), other
  `SmtpyError` 422                              -> an error page with the core's message

Errors that belong to a form field are caught by the page itself and shown at the field
(`templating.FormErrors`).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse, Response
from fastapi.routing import APIRoute

from smtpy.api.deps import cookie_name
from smtpy.errors import (
    Forbidden,
    InvalidInput,
    NotFound,
    SmtpyError,
    TooManyRequests,
    Unauthorized,
)
from smtpy.web.session import Landing, Redirect, login_url
from smtpy.web.templating import render


def error_page(request: Request, exc: SmtpyError) -> Response:
    """The page that shows a core error that belongs to no form field."""
    if isinstance(exc, Unauthorized):
        return _redirect(request, Redirect(login_url(request), clear_cookie=True))
    status, title = 422, "That did not work"
    if isinstance(exc, Forbidden):
        status, title = 403, "Not allowed"
    elif isinstance(exc, NotFound):
        status, title = 404, "Not found"
    elif isinstance(exc, TooManyRequests):
        status, title = 429, "Too many attempts"
    response = render(
        request, "error.html", {"title": title, "message": exc.message}, status_code=status
    )
    if isinstance(exc, TooManyRequests):
        response.headers["Retry-After"] = str(exc.retry_after)
    return response


def _redirect(request: Request, redirect: Redirect) -> Response:
    response = RedirectResponse(redirect.location, status_code=303)
    if redirect.clear_cookie:
        response.delete_cookie(cookie_name(request.app.state.settings), path="/")
    return response


class PageRoute(APIRoute):
    """An APIRoute whose errors are pages."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def page_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except Redirect as redirect:
                return _redirect(request, redirect)
            except Landing:
                return render(request, "landing.html")
            except SmtpyError as exc:
                return error_page(request, exc)
            except RequestValidationError as exc:
                fields = ", ".join(str(e["loc"][-1]) for e in exc.errors() if e.get("loc"))
                message = f"the form was not valid ({fields}): go back and try again"
                return error_page(request, InvalidInput(message))

        return page_handler


def page_router() -> APIRouter:
    """A router for pages (kept out of the OpenAPI document)."""
    return APIRouter(route_class=PageRoute, include_in_schema=False)
