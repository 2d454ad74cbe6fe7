"""The ASGI application `smtpy api` serves: the JSON API and the dashboard, over one store."""

from __future__ import annotations

from fastapi import FastAPI

from smtpy.api.app import install as install_api
from smtpy.api.pool import Pool
from smtpy.config import Settings
from smtpy.store.db import Database
from smtpy.web.app import install as install_web


def create_app(settings: Settings) -> FastAPI:
    """The application over the store named by `settings` (its schema must be current)."""
    with Database(settings.database_url, create=False):
        pass  # a missing or outdated store fails here, before the first request
    app = FastAPI(
        title="smtpy",
        summary="The JSON HTTP API of smtpy, a self-hosted mail forwarder.",
        openapi_url="/api/v1/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.pool = Pool(settings.database_url)
    install_api(app)
    install_web(app)
    return app
