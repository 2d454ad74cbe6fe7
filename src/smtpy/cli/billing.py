"""`smtpy billing …`: Stripe, seen from the operator's shell."""

from __future__ import annotations

from typing import Annotated

import typer

from smtpy.cli.context import state
from smtpy.cli.output import done

app = typer.Typer(help="Billing through Stripe (SMTPY_STRIPE_SECRET_KEY).", no_args_is_help=True)


@app.command("sync")
def sync(
    ctx: typer.Context,
    org: Annotated[
        str | None,
        typer.Argument(
            help="The organization's name (default: every one with a Stripe customer).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Fetch the subscriptions from Stripe again (after a webhook was missed)."""
    from smtpy.admin.organizations import resolve_organization
    from smtpy.billing.stripe import sync as stripe_sync

    settings = state(ctx).settings
    with state(ctx).database() as db:
        org_id = None if org is None else resolve_organization(db=db, name=org).id
        count = stripe_sync(db=db, settings=settings, org=org_id)
    done(f"fetched {count} subscription{'s' if count != 1 else ''} from Stripe")
