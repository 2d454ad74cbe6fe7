"""Rendering pages: the Jinja2 templates, the one-time success message, redirects after a post.

    return render(request, "settings/profile.html", {"form": ...}, user=user)
    return done(request, "/settings/profile", "Your name was saved.")   # 303 + message

A form posts, then `done()` redirects (303) with a success message that the next page
shows once (a short-lived cookie; works without JavaScript). With htmx the same post
is made by fetch(), which follows the redirect, and the new page's <main> replaces the
old one in place. A form with errors is rendered again with status 422 and each error
next to its field (`FormErrors`).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from smtpy import __version__
from smtpy.errors import SmtpyError
from smtpy.web.session import BrowserSession, SignedIn

HERE = Path(__file__).parent
FLASH_COOKIE = "smtpy_flash"
NAVIGATION = (  # (label, path): the main navigation of a signed-in user
    ("Overview", "/"),
    ("Domains", "/domains"),
    ("Messages", "/messages"),
    ("Statistics", "/stats"),
    ("Billing", "/billing"),
    ("Webhooks", "/webhooks"),
    ("Settings", "/settings/profile"),
)

templates = Jinja2Templates(directory=HERE / "templates")


def static_url(path: str) -> str:
    """The URL of a file under static/, changing with smtpy's version (long caching)."""
    return f"/static/{path}?v={__version__}"


def _nav_current(path: str, target: str) -> bool:
    if target == "/":
        return path == "/"
    prefix = target.rsplit("/", 1)[0] if target.startswith("/settings/") else target
    return path in (target, prefix) or path.startswith(prefix + "/")


def format_time(value: float | None) -> str:
    """A Unix time as `2026-12-03 11:30 UTC` (empty for None)."""
    if value is None:
        return ""
    return datetime.fromtimestamp(float(value), UTC).strftime("%Y-%m-%d %H:%M UTC")


templates.env.filters["datetime"] = format_time
templates.env.globals["static_url"] = static_url
templates.env.globals["navigation"] = NAVIGATION
templates.env.globals["nav_current"] = _nav_current


def sentence(message: str) -> str:
    """The core's one-line message as a sentence on a page: capital first, full stop."""
    message = message.strip()
    if not message:
        return message
    message = message[0].upper() + message[1:]
    return message if message[-1] in ".!?" else message + "."


templates.env.filters["sentence"] = sentence


class FormErrors:
    """Errors of a form: by field (shown next to it) and for the whole form."""

    def __init__(self) -> None:
        self.fields: dict[str, str] = {}
        self.form: str | None = None

    def __bool__(self) -> bool:
        return bool(self.fields) or self.form is not None

    def add(self, field: str | None, message: str) -> None:
        message = sentence(message)
        if field:
            self.fields.setdefault(field, message)
        elif self.form is None:
            self.form = message

    def error(self, exc: SmtpyError, field: str | None = None) -> FormErrors:
        """Record a core error: on its own field if it names one, else on `field`."""
        self.add(getattr(exc, "field", None) or field, exc.message)
        return self

    def get(self, field: str) -> str | None:
        return self.fields.get(field)


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def render(
    request: Request,
    template: str,
    context: Mapping[str, Any] | None = None,
    *,
    user: SignedIn | None = None,
    session: BrowserSession | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    """A full page (the base layout shows the navigation when `user` is given)."""
    flash = request.cookies.get(FLASH_COOKIE)
    browser = user.session if user is not None else session
    values: dict[str, Any] = {
        "user": user,
        "csrf_token": browser.csrf_token if browser is not None else None,
        "flash": unquote(flash) if flash else None,
        "path": request.url.path,
        "settings": request.app.state.settings,
        "errors": FormErrors(),
    }
    values.update(context or {})
    response = templates.TemplateResponse(request, template, values, status_code=status_code)
    response.headers["Cache-Control"] = "no-store"
    if flash:
        response.delete_cookie(FLASH_COOKIE, path="/")
    return response


def done(request: Request, location: str, message: str | None = None) -> RedirectResponse:
    """After a change: 303 to `location`, which shows `message` once."""
    response = RedirectResponse(location, status_code=303)
    if message:
        response.set_cookie(
            FLASH_COOKIE,
            quote(message),
            max_age=60,
            path="/",
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
        )
    return response
