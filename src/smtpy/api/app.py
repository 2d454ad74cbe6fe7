"""The API's part of the application: its routes under /api/v1, /healthz and /readyz."""

from __future__ import annotations

import importlib

from fastapi import FastAPI

from smtpy.api import routes


def install(app: FastAPI) -> None:
    """Add the API to `app` (made by `smtpy.app.create_app`)."""
    for name in routes.MODULES:
        module = importlib.import_module(f"smtpy.api.routes.{name}")
        app.include_router(module.router, prefix="/api/v1")

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}
