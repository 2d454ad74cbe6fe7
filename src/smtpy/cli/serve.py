"""`smtpy serve`: the MX and delivery daemon."""

from __future__ import annotations

import os

import typer

from smtpy.cli.context import state


def serve(ctx: typer.Context) -> None:
    """Receive mail for the served domains and forward it (runs until SIGTERM)."""
    from smtpy import log
    from smtpy.config import load
    from smtpy.runtime.daemon import run
    from smtpy.runtime.watcher import PROCESS_VAR

    st = state(ctx)
    st.print_warnings = False  # logged below, as the daemon's first events
    settings = st.settings
    if PROCESS_VAR not in os.environ:  # a serving process started again has warned already
        log.configure(settings.log_level)
        for warning in st.loaded.warnings:
            log.get("smtpy.config").warning("setting_ignored", reason=warning)
    raise typer.Exit(run(settings, reload=lambda: load(st.config_file).settings))
