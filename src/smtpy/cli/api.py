"""`smtpy api`: the HTTP API and the dashboard."""

from __future__ import annotations

import typer

from smtpy.cli.context import state


def api(ctx: typer.Context) -> None:
    """Serve the JSON HTTP API (/api/v1) and the dashboard on SMTPY_API_LISTEN (runs until
    SIGTERM).

    Plain HTTP on 127.0.0.1:8025 by default: put a TLS reverse proxy in front and set
    SMTPY_PUBLIC_URL to the address users reach. The store must exist (`smtpy db upgrade`
    or `smtpy serve` creates it).
    """
    import uvicorn

    from smtpy.app import create_app

    settings = state(ctx).settings
    host, port = settings.api_listen
    uvicorn.run(create_app(settings), host=host, port=port, log_level="warning")
