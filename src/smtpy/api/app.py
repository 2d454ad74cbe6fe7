"""The API's part of the application: its routes under /api/v1, /healthz and /readyz,
the OpenAPI document and docs page, and what every answer goes through (problems for
errors, security headers, trusted proxies, CORS, idempotency keys, the access log)."""

from __future__ import annotations

import importlib

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from smtpy.api import docs, problems, routes
from smtpy.api.deps import SettingsDep
from smtpy.api.idempotency import Idempotency
from smtpy.api.middleware import AccessLog, SecurityHeaders, TrustedProxies
from smtpy.config import Settings, parse_networks
from smtpy.errors import StoreError
from smtpy.store.db import SCHEMA_REVISION, Database


def install(app: FastAPI) -> None:
    """Add the API to `app` (made by `smtpy.app.create_app`, `app.state.settings` set)."""
    settings: Settings = app.state.settings
    # Middleware, innermost first: each add_middleware wraps what is there.
    problems.install(app)  # the routes' errors
    app.add_middleware(Idempotency)
    app.add_middleware(problems.CatchAll)  # any other error; still gets the headers below
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=False,  # API keys only: a session cookie never crosses sites
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
            expose_headers=["Retry-After", "Idempotent-Replayed", "Location"],
            max_age=600,
        )
    public_https = bool(settings.public_url and settings.public_url.startswith("https://"))
    app.add_middleware(SecurityHeaders, hsts=public_https)
    app.add_middleware(AccessLog)
    app.add_middleware(TrustedProxies, trusted=parse_networks(settings.trusted_proxies))

    docs.install(app)
    for name in routes.MODULES:
        module = importlib.import_module(f"smtpy.api.routes.{name}")
        app.include_router(module.router, prefix="/api/v1")

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        """200 while the process runs."""
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    def readyz(settings: SettingsDep) -> dict[str, str]:
        """200 when the store answers with the schema this smtpy needs; else a 503
        problem (`store_unavailable`). A new connection each time: a pooled one would
        still read a SQLite file that was removed."""
        with Database(settings.database_url, create=False, check_schema=False) as db:
            revision = db.schema_revision()
        if revision != SCHEMA_REVISION:
            raise StoreError(
                f"the store's schema is at {revision or 'nothing'}, this smtpy needs "
                f"{SCHEMA_REVISION}: run `smtpy db upgrade`"
            )
        return {"status": "ready"}
