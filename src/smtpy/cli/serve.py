"""`smtpy serve`: the MX and delivery daemon."""

from __future__ import annotations

import os

import typer

from smtpy.cli.context import state


def serve(ctx: typer.Context) -> None:
    """Receive mail for the served domains and forward it (runs until SIGTERM).

    The first log lines name the hostname, the store, the listeners and the serving
    processes, and warn when SMTPY_HOSTNAME cannot be right for an MX (no dot, localhost,
    no address in DNS). A SQLite store that does not exist yet is created; a PostgreSQL
    one needs `smtpy db upgrade` first.

    A local trial, with no mail leaving the machine: listen on a high port and hand every
    message to an SMTP sink (or to your provider's relay) instead of the destinations' MX
    hosts with SMTPY_RELAY_HOST; SMTPY_DELIVERY_PORT instead keeps the MX lookups and
    connects to them on another port. For example, with the sink aiosmtpd (installed with
    smtpy) printing what it gets:

    aiosmtpd -n -l 127.0.0.1:2526 &

    SMTPY_LISTEN=127.0.0.1:2525 SMTPY_RELAY_HOST=127.0.0.1:2526 smtpy serve

    Then, in another shell with the same settings, `smtpy test ALIAS` proves that a message
    to ALIAS is forwarded.
    """
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
