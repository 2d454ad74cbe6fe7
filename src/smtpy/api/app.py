"""The FastAPI application `smtpy api` serves."""

from __future__ import annotations

import importlib

from fastapi import FastAPI

from smtpy.api import routes
from smtpy.api.pool import Pool
from smtpy.config import Settings
from smtpy.store.db import Database


def create_app(settings: Settings) -> FastAPI:
    """The API over the store named by `settings` (its schema must be current)."""
    with Database(settings.database_url, create=False):
        pass  # a missing or outdated store fails here, before the first request
    app = FastAPI(
        title="smtpy",
        openapi_url="/api/v1/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.pool = Pool(settings.database_url)
    for name in routes.MODULES:
        module = importlib.import_module(f"smtpy.api.routes.{name}")
        app.include_router(module.router, prefix="/api/v1")

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
