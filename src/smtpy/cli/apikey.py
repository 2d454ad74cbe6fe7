"""`smtpy apikey …`: the API keys scripts use (`Authorization: Bearer smtpy_<id>_<secret>`)."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from smtpy.cli.context import state
from smtpy.cli.output import (
    JsonOption,
    OrgOption,
    acting_org,
    done,
    nothing,
    print_json,
    print_table,
    when,
)

EveryOrgOption = Annotated[
    str | None,
    typer.Option(
        "--org",
        help="Only the keys of the organization of this name (default: every organization).",
        show_default=False,
    ),
]

app = typer.Typer(help="Create, list and revoke an organization's API keys.", no_args_is_help=True)

DAY = 86400.0


@app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[
        str,
        typer.Option("--name", help="What the key is for (shown in lists and the audit log)."),
    ],
    org: OrgOption = None,
    expires_in: Annotated[
        int | None,
        typer.Option(
            "--expires-in",
            min=1,
            help="Days until the key stops working (default: it does not expire).",
            show_default=False,
        ),
    ] = None,
    json: JsonOption = False,
) -> None:
    """Create an API key and print it: this once, it is stored only hashed."""
    from smtpy.accounts.api_keys import create_key

    expires_at = None if expires_in is None else time.time() + expires_in * DAY
    with state(ctx).database() as db:
        key = create_key(db=db, org=acting_org(db, org), name=name, expires_at=expires_at)
    if json:
        print_json(key)
        return
    done(key.key)
    typer.echo(
        f"created API key {key.id} ({key.name}); it is shown only this once: keep it now",
        err=True,
    )


@app.command("list")
def list_(ctx: typer.Context, org: EveryOrgOption = None, json: JsonOption = False) -> None:
    """List API keys, revoked ones included (every organization's, or --org's)."""
    from smtpy.accounts.api_keys import all_keys, key_state, list_keys
    from smtpy.admin.organizations import list_organizations

    with state(ctx).database() as db:
        keys = all_keys(db=db) if org is None else list_keys(db=db, org=acting_org(db, org))
        names = {o.id: o.name for o in list_organizations(db=db)} if keys and not json else {}
    if json:
        print_json(keys)
        return
    if not keys:
        nothing("there are no API keys; create one with `smtpy apikey create --name NAME`")
        return
    now = time.time()
    print_table(
        None,
        ["id", "name", "organization", "state", "created", "expires", "last used"],
        [
            (
                k.id,
                k.name,
                names.get(k.organization_id, k.organization_id),
                key_state(k, now),
                when(k.created_at),
                when(k.expires_at),
                when(k.last_used_at),
            )
            for k in keys
        ],
        whole=["id"],
    )


@app.command("revoke")
def revoke(
    ctx: typer.Context,
    key_id: Annotated[
        str, typer.Argument(metavar="ID", help="The key's id (see `smtpy apikey list`).")
    ],
    org: OrgOption = None,
) -> None:
    """Revoke an API key: requests with it are refused at once."""
    from smtpy.accounts.api_keys import organization_of_key, revoke_key

    with state(ctx).database() as db:
        owner = organization_of_key(db=db, key_id=key_id) if org is None else acting_org(db, org)
        key = revoke_key(db=db, org=owner, key_id=key_id.strip())
    done(f"revoked API key {key.id} ({key.name})")
