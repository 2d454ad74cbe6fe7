"""The API's part of the application: its routes under /api/v1, /healthz and /readyz,
and what every answer shares (problems for errors)."""

from __future__ import annotations

import importlib

from fastapi import FastAPI

from smtpy.api import problems, routes
from smtpy.api.deps import SettingsDep
from smtpy.errors import StoreError
from smtpy.store.db import SCHEMA_REVISION, Database


def install(app: FastAPI) -> None:
    """Add the API to `app` (made by `smtpy.app.create_app`)."""
    problems.install(app)
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
