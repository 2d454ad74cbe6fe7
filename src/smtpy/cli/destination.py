"""`smtpy destination …`: the addresses and URLs organizations forward to, and whether
their owners confirmed them."""

from __future__ import annotations

from typing import Annotated

import typer

from smtpy.cli.context import state
from smtpy.cli.output import (
    JsonOption,
    OrgOption,
    YesOption,
    acting_org,
    confirm,
    done,
    nothing,
    print_json,
    print_table,
    when,
)

app = typer.Typer(
    help="Destinations: the addresses mail is forwarded to, and their confirmation.",
    no_args_is_help=True,
)


@app.command("list")
def list_(ctx: typer.Context, org: OrgOption = None, json: JsonOption = False) -> None:
    """List destinations (every organization's, or --org's), confirmed or pending.

    An address no destination names (aliases added with the CLI) is the
    operator's own and counts as confirmed: it is not listed.
    """
    from smtpy.admin.destinations import list_destinations
    from smtpy.admin.organizations import list_organizations

    with state(ctx).database() as db:
        found = list_destinations(db=db, org=None if org is None else acting_org(db, org))
        names = {o.id: o.name for o in list_organizations(db=db)} if found and not json else {}
    if json:
        print_json(found)
        return
    if not found:
        nothing("there are no destinations added through the API or dashboard")
        return
    print_table(
        None,
        ["id", "destination", "organization", "state", "created"],
        [
            (
                d.id,
                d.address,
                names.get(d.organization_id, d.organization_id),
                f"confirmed {when(d.confirmed_at)}" if d.confirmed else "pending confirmation",
                when(d.created_at),
            )
            for d in found
        ],
        whole=["id", "destination"],
    )


@app.command("confirm")
def confirm_(
    ctx: typer.Context,
    address: Annotated[str, typer.Argument(help="The mail address to mark confirmed.")],
    org: OrgOption = None,
) -> None:
    """Mark a mail address confirmed (in --org, else in every organization that has it):
    the mail waiting for it goes out at once."""
    from smtpy.admin.destinations import confirm_address

    with state(ctx).database() as db:
        confirmed = confirm_address(
            db=db, address=address, org=None if org is None else acting_org(db, org)
        )
    done(
        f"{confirmed[0].address} is confirmed"
        + (f" in {len(confirmed)} organizations" if len(confirmed) > 1 else "")
    )


@app.command("remove")
def remove(
    ctx: typer.Context,
    destination_id: Annotated[
        str,
        typer.Argument(metavar="ID", help="The destination's id (see `smtpy destination list`)."),
    ],
    org: OrgOption = None,
    yes: YesOption = False,
) -> None:
    """Remove a destination that no alias names any more."""
    from smtpy.admin.destinations import organization_of_destination, remove_destination

    confirm(f"Remove destination {destination_id}?", yes)
    with state(ctx).database() as db:
        owner = (
            organization_of_destination(db=db, destination_id=destination_id)
            if org is None
            else acting_org(db, org)
        )
        removed = remove_destination(db=db, org=owner, destination_id=destination_id)
    done(f"removed destination {removed.id} ({removed.address})")
