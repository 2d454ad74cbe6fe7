"""`smtpy db …`: the store's schema."""

from __future__ import annotations

import typer

from smtpy.cli.context import state
from smtpy.cli.output import done

app = typer.Typer(help="Manage the store's schema.", no_args_is_help=True)


@app.command("upgrade")
def upgrade(ctx: typer.Context) -> None:
    """Create or migrate the schema to this version (needed once per release on PostgreSQL)."""
    from smtpy.config import mask_url
    from smtpy.store.migrate import upgrade as run_upgrade

    url = state(ctx).settings.database_url
    run_upgrade(url)
    done(f"store {mask_url(url)} is up to date")
