"""`smtpy serve`: the MX and delivery daemon."""

from __future__ import annotations

import typer

from smtpy.cli.context import state


def serve(ctx: typer.Context) -> None:
    """Receive mail for the served domains and forward it (runs until SIGTERM)."""
    from smtpy.config import load
    from smtpy.runtime.daemon import run

    st = state(ctx)
    raise typer.Exit(run(st.settings, reload=lambda: load(st.config_file).settings))
