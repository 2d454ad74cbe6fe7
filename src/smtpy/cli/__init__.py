"""The `smtpy` command: a thin shell over the core.

Each command parses its input, calls one core function and formats the result.
Heavy modules (the daemon, DKIM, SQL migrations) are imported inside the
commands that need them, so `smtpy alias list` starts fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from smtpy import __version__
from smtpy.accounts.actor import acting
from smtpy.cli import (
    alias,
    api,
    apikey,
    billing,
    config,
    db,
    destination,
    doctor,
    domain,
    key,
    log,
    org,
    plan,
    probe,
    queue,
    route,
    serve,
    stats,
    status,
    user,
    webhook,
)
from smtpy.cli.context import State, cli_actor
from smtpy.errors import SmtpyError

app = typer.Typer(
    name="smtpy",
    help="A self-hosted mail forwarder: SRS, DKIM, a durable queue, and this CLI to run it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(domain.app, name="domain")
app.add_typer(alias.app, name="alias")
app.add_typer(key.app, name="key")
app.add_typer(queue.app, name="queue")
app.add_typer(config.app, name="config")
app.add_typer(db.app, name="db")
app.add_typer(route.app, name="route")
app.add_typer(org.app, name="org")
app.add_typer(user.app, name="user")
app.add_typer(apikey.app, name="apikey")
app.add_typer(plan.app, name="plan")
app.add_typer(billing.app, name="billing")
app.add_typer(webhook.app, name="webhook")
app.add_typer(destination.app, name="destination")
app.command("serve")(serve.serve)
app.command("api")(api.api)
app.command("log")(log.log)
app.command("stats")(stats.stats)
app.command("status")(status.status)
app.command("doctor")(doctor.doctor)
app.command("test")(probe.test)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"smtpy {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    config_file: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            envvar="SMTPY_CONFIG",
            help="TOML settings file (default: /etc/smtpy/smtpy.toml if present).",
            show_default=False,
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Manage and run smtpy. Settings come from SMTPY_* variables and the TOML file."""
    ctx.obj = State(config_file)
    # Every change a command makes is the Unix user's, through the CLI, in the audit log.
    ctx.with_resource(acting(cli_actor()))


def main() -> None:
    """Entry point of the `smtpy` console script."""
    try:
        app()
    except SmtpyError as exc:
        print(f"smtpy: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("smtpy: interrupted", file=sys.stderr)
        sys.exit(130)
