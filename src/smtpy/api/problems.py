"""Every error of the HTTP API as an RFC 9457 problem (`application/problem+json`).

    {"type": "/api/docs#problem-not_found", "title": "Not Found", "status": 404,
     "detail": "no domain example.org in this organization", "code": "not_found"}

422 answers add `errors: [{"field", "message"}]` (`field` is a dotted path into the
request: `destinations.0`, `limit`). `code` is a stable snake_case name scripts can
test; `detail` is the one line for a human. The core raises `smtpy.errors` types and
this module translates them once; routes never build error JSON themselves. An
exception that is not an `SmtpyError` is a bug: it is logged (without local
variables) and answered with a plain 500 problem, never a traceback or an HTML page.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from smtpy import errors, log

MEDIA_TYPE = "application/problem+json"

logger = log.get("smtpy.api")

# The smtpy.errors types, most specific first: (type, status, code).
ERRORS: tuple[tuple[type[errors.SmtpyError], int, str], ...] = (
    (errors.NotFound, 404, "not_found"),
    (errors.Conflict, 409, "conflict"),
    (errors.InvalidInput, 422, "invalid_input"),
    (errors.Unauthorized, 401, "unauthorized"),
    (errors.Forbidden, 403, "forbidden"),
    (errors.TooManyRequests, 429, "too_many_requests"),
    (errors.StoreError, 503, "store_unavailable"),
)

# Every code this module gives, with what it means (the docs page lists them).
CODES: dict[str, str] = {
    "invalid_input": "The request's content is not valid; `errors` names the fields.",
    "malformed_json": "The body is not valid JSON.",
    "idempotency_key_reused": "This Idempotency-Key was used with another request body.",
    "idempotency_key_in_use": "The first request with this Idempotency-Key is still running.",
    "unauthorized": "No credentials, or wrong, expired or revoked ones.",
    "forbidden": "The caller may not do this (role, CSRF token, cross-site request).",
    "not_found": "No such object in the acting organization, or no such path.",
    "method_not_allowed": "The path exists but not with this method (see `Allow`).",
    "conflict": "The object already exists or the change contradicts the store.",
    "too_many_requests": "Throttled: retry after `Retry-After` seconds.",
    "store_unavailable": "The store did not answer: retry later.",
    "internal_error": "A bug in smtpy: it was logged; retry or report it.",
}


def problem(
    status: int,
    code: str,
    detail: str,
    *,
    title: str | None = None,
    field_errors: Sequence[Mapping[str, str | None]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """A problem answer: `status`, a stable `code` and a one-line `detail`."""
    body: dict[str, Any] = {
        "type": f"/api/docs#problem-{code}",
        "title": title or _phrase(status),
        "status": status,
        "detail": detail,
        "code": code,
    }
    if status == 422:
        body["errors"] = [dict(item) for item in field_errors or ()]
    return JSONResponse(body, status_code=status, headers=headers, media_type=MEDIA_TYPE)


def from_error(exc: errors.SmtpyError) -> JSONResponse:
    """The problem for an error the core raised."""
    found = next(((s, c) for kind, s, c in ERRORS if isinstance(exc, kind)), None)
    if found is None:  # ConfigError, CheckFailed: nothing a caller of the API can fix
        return _internal(exc)
    status, code = found
    code = getattr(exc, "code", None) or code  # a core error may name its own code
    headers: dict[str, str] = {}
    if isinstance(exc, errors.TooManyRequests):
        headers["Retry-After"] = str(exc.retry_after)
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    field = getattr(exc, "field", None)
    field_errors = [{"field": str(field), "message": exc.message}] if field else []
    return problem(status, code, exc.message, field_errors=field_errors, headers=headers)


def field_path(loc: Sequence[str | int]) -> str:
    """`("body", "destinations", 0)` → `destinations.0`; `("query", "limit")` → `limit`."""
    parts = list(loc)
    if parts and parts[0] in {"body", "query", "path", "header", "cookie"}:
        parts = parts[1:]
    return ".".join(str(part) for part in parts)


def _validation(exc: RequestValidationError) -> JSONResponse:
    problems = list(exc.errors())
    if any(item.get("type") == "json_invalid" for item in problems):
        reason = next(
            (str(i.get("ctx", {}).get("error", "")) for i in problems if i.get("ctx")), ""
        )
        detail = "the body is not valid JSON" + (f": {reason}" if reason else "")
        return problem(
            422, "malformed_json", detail, field_errors=[{"field": "", "message": detail}]
        )
    field_errors = [
        {"field": field_path(item.get("loc", ())), "message": str(item.get("msg", "invalid"))}
        for item in problems
    ]
    first = field_errors[0] if field_errors else {"field": "", "message": "invalid input"}
    where = f"{first['field']}: " if first["field"] else ""
    more = f" (and {len(field_errors) - 1} more)" if len(field_errors) > 1 else ""
    detail = f"{where}{first['message']}{more}"
    return problem(422, "invalid_input", detail, field_errors=field_errors)


def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    status = exc.status_code
    headers = dict(exc.headers or {})
    if status == 404:
        code = "not_found"
        detail = (
            str(exc.detail)
            if exc.detail and exc.detail != _phrase(404)
            else f"no such path: {request.url.path} (the API's paths: /api/v1/openapi.json)"
        )
    elif status == 405:
        code = "method_not_allowed"
        allowed = headers.get("Allow") or headers.get("allow") or ""
        detail = f"{request.method} is not allowed on {request.url.path}" + (
            f"; allowed: {allowed}" if allowed else ""
        )
    else:
        code = _snake(_phrase(status))
        detail = str(exc.detail) if exc.detail else _phrase(status)
    return problem(status, code, detail, headers=headers)


def _internal(exc: BaseException) -> JSONResponse:
    return problem(
        500,
        "internal_error",
        "smtpy failed to answer this request; the error was logged: retry, or report it",
    )


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _snake(text: str) -> str:
    return "_".join("".join(c if c.isalnum() else " " for c in text.lower()).split())


def for_exception(exc: Exception, method: str, path: str) -> JSONResponse:
    """The problem for any exception, logged as it deserves: a bug (500) with its
    traceback (without local variables), a store that does not answer (503) as a
    warning, what the caller did wrong not at all."""
    if isinstance(exc, errors.SmtpyError):
        response = from_error(exc)
        if response.status_code == 500:
            logger.error(
                "unexpected error",
                method=method,
                path=path,
                error=type(exc).__name__,
                detail=str(exc),
            )
        elif response.status_code == 503:  # the operator wants to know the store is down
            logger.warning("store unavailable", method=method, path=path, detail=str(exc))
        return response
    logger.exception("unhandled error", method=method, path=path, error=type(exc).__name__)
    return _internal(exc)


class CatchAll:
    """ASGI middleware: an exception that no handler took (a bug, or an error raised in
    the middleware inside this one) becomes a problem.

    Inside the middleware that adds the security headers, so the answer still gets
    them; Starlette's own last resort would answer in plain text and log the
    traceback a second time.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            response = for_exception(exc, scope.get("method", ""), scope.get("path", ""))
            if started:  # the answer is under way: all that is left is to drop the connection
                raise
            await response(scope, receive, send)


def install(app: FastAPI) -> None:
    """Answer every error of `app`'s routes with a problem. The application adds
    `CatchAll` among its middleware (smtpy.api.app)."""

    async def smtpy_error(request: Request, exc: Exception) -> JSONResponse:
        return for_exception(exc, request.method, request.url.path)

    async def validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return _validation(exc)

    async def http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return _http(request, exc)

    async def anything(request: Request, exc: Exception) -> JSONResponse:
        # Starlette's last resort, for an error raised outside CatchAll (in a middleware)
        return for_exception(exc, request.method, request.url.path)

    app.add_exception_handler(errors.SmtpyError, smtpy_error)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(StarletteHTTPException, http)
    app.add_exception_handler(Exception, anything)
