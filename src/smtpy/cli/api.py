"""`smtpy api`: the HTTP API and the dashboard."""

from __future__ import annotations

import typer

from smtpy.cli.context import state


def api(ctx: typer.Context) -> None:
    """Serve the JSON HTTP API (/api/v1) and the dashboard on SMTPY_API_LISTEN (runs until
    SIGTERM).

    Plain HTTP on 127.0.0.1:8025 by default: put a TLS reverse proxy in front, set
    SMTPY_PUBLIC_URL to the address users reach and SMTPY_TRUSTED_PROXIES to the proxy's
    address. The store must exist and be current (`smtpy db upgrade`); several `smtpy api`
    processes may share it.

    Logs go to stderr (JSON when it is not a terminal): a `started` line naming the URL and
    the store, then one `request` line per request. On SIGTERM the requests in flight are
    answered and the command exits 0. The reference of the API is served at /api/docs and
    /api/v1/openapi.json. Exit 2 when the store is missing or outdated, or the address is
    taken.
    """
    from smtpy import log
    from smtpy.app import serve

    st = state(ctx)
    st.print_warnings = False  # logged below, as the first events
    settings = st.settings
    log.configure(settings.log_level)
    for warning in st.loaded.warnings:
        log.get("smtpy.config").warning("setting_ignored", reason=warning)
    raise typer.Exit(serve(settings))
