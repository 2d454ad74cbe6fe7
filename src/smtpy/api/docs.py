"""The OpenAPI document (/api/v1/openapi.json) and the offline docs page (/api/docs).

The document is FastAPI's, with what it cannot know: the two ways to authenticate
(an API key as a bearer token, the dashboard's session cookie) and the problem
answers (RFC 9457) in place of FastAPI's own validation-error shape.

The page is rendered on the server from that document with Jinja2: one HTML page
and one stylesheet from the package, no script and nothing from another site, so
it works offline and under the Content-Security-Policy.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, Response

from smtpy import __version__
from smtpy.accounts.sessions import COOKIE
from smtpy.api import problems

BEARER = "apiKey"
SESSION = "session"
METHODS = ("get", "post", "put", "patch", "delete")

PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "type": "object",
    "description": "An error, as RFC 9457 describes (`application/problem+json`).",
    "required": ["type", "title", "status", "detail", "code"],
    "properties": {
        "type": {"type": "string", "description": "A URI naming the kind of problem."},
        "title": {"type": "string", "description": "The HTTP status's phrase."},
        "status": {"type": "integer", "description": "The HTTP status code."},
        "detail": {"type": "string", "description": "What went wrong and what to do, in a line."},
        "code": {
            "type": "string",
            "enum": sorted(problems.CODES),
            "description": "A stable name for scripts.",
        },
        "errors": {
            "type": "array",
            "description": "On 422: which fields are wrong.",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {
                    "field": {"type": "string", "description": "A dotted path: destinations.0"},
                    "message": {"type": "string"},
                },
            },
        },
    },
}
DESCRIPTION = """\
The JSON HTTP API of smtpy. Authenticate with an API key
(`Authorization: Bearer smtpy_<id>_<secret>`, made with `smtpy apikey create` or
`POST /api/v1/api-keys`) or, in the dashboard, with the session cookie set by
`POST /api/v1/auth/login` (changes then need the `X-CSRF-Token` header).
Lists answer `{"data", "has_more", "next_cursor"}`; errors are RFC 9457 problems;
creates accept an `Idempotency-Key` header."""


def openapi(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document of `app` (made once, then kept)."""
    if app.openapi_schema:
        return app.openapi_schema
    document = get_openapi(
        title="smtpy",
        version=__version__,
        summary="The JSON HTTP API of smtpy, a self-hosted mail forwarder.",
        description=DESCRIPTION,
        routes=app.routes,
    )
    components = document.setdefault("components", {})
    schemes = components.setdefault("securitySchemes", {})
    schemes[BEARER] = {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key: smtpy_<id>_<secret>. It acts in its organization.",
    }
    schemes[SESSION] = {
        "type": "apiKey",
        "in": "cookie",
        "name": COOKIE,
        "description": (
            "The dashboard's session (__Host-smtpy_session under https); changes need "
            "the X-CSRF-Token header."
        ),
    }
    schemas = components.setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    schemas["Problem"] = PROBLEM_SCHEMA
    problem_content = {
        "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
    }
    for item in document.get("paths", {}).values():
        for method in METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            responses = operation.setdefault("responses", {})
            if "422" in responses:
                responses["422"] = {"description": "Invalid input", "content": problem_content}
            responses.setdefault(
                "default", {"description": "An error (a problem)", "content": problem_content}
            )
    app.openapi_schema = document
    return document


# -- the page ------------------------------------------------------------------------


@cache
def _environment() -> Any:
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(
        loader=PackageLoader("smtpy.api", "templates"),
        autoescape=select_autoescape(default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["type_of"] = type_of
    env.filters["ticks"] = ticks
    return env


def ticks(text: str) -> Any:
    """`code` spans of a description as <code>, the rest escaped."""
    from markupsafe import Markup, escape

    parts = str(text).split("`")
    if len(parts) % 2 == 0:  # an unpaired backtick: show the text as it is
        return escape(text)
    return Markup("").join(
        Markup("<code>%s</code>") % part if i % 2 else escape(part) for i, part in enumerate(parts)
    )


def type_of(schema: dict[str, Any] | None) -> str:
    """A schema in a few words: `string`, `array of Alias`, `integer | null`."""
    if not schema:
        return "any"
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    for combinator in ("anyOf", "oneOf", "allOf"):
        if combinator in schema:
            return " | ".join(type_of(part) for part in schema[combinator])
    kind = schema.get("type", "object")
    if kind == "array":
        return f"array of {type_of(schema.get('items'))}"
    if "enum" in schema:
        return " | ".join(repr(v) if isinstance(v, str) else str(v) for v in schema["enum"])
    if "format" in schema:
        return f"{kind} ({schema['format']})"
    return str(kind)


def operations(document: dict[str, Any]) -> list[dict[str, Any]]:
    """Every operation of the document, in path order, ready for the template."""
    result = []
    for path, item in document.get("paths", {}).items():
        for method in METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            body: dict[str, Any] = operation.get("requestBody", {}).get("content", {})
            media: dict[str, Any] = next(iter(body.values()), {})
            body_schema = media.get("schema")
            result.append(
                {
                    "id": f"{method}-{path}".replace("/", "-").replace("{", "").replace("}", ""),
                    "method": method.upper(),
                    "path": path,
                    "summary": operation.get("summary", ""),
                    "description": operation.get("description", ""),
                    "parameters": operation.get("parameters", []),
                    "body": body_schema,
                    "responses": operation.get("responses", {}),
                    "security": [
                        name
                        for requirement in operation.get("security", [])
                        for name in requirement
                    ],
                    "tags": operation.get("tags", []),
                }
            )
    return result


def install(app: FastAPI) -> None:
    """The document at /api/v1/openapi.json (FastAPI serves it) and the page."""
    app.openapi = lambda: openapi(app)  # type: ignore[method-assign]

    @app.get("/api/docs", include_in_schema=False)
    def docs_page(request: Request) -> HTMLResponse:
        document = openapi(app)
        html = (
            _environment()
            .get_template("docs.html")
            .render(
                document=document,
                operations=operations(document),
                schemas=document.get("components", {}).get("schemas", {}),
                schemes=document.get("components", {}).get("securitySchemes", {}),
                codes=problems.CODES,
            )
        )
        return HTMLResponse(html)

    @app.get("/api/docs/docs.css", include_in_schema=False)
    def docs_css() -> Response:
        css = files("smtpy.api").joinpath("static/docs.css").read_bytes()
        return Response(
            css, media_type="text/css", headers={"Cache-Control": "public, max-age=3600"}
        )
