"""`smtpy org …`: the organizations (tenants) that own domains, members and API keys."""

from __future__ import annotations

from typing import Annotated

import typer

from smtpy.cli.context import state
from smtpy.cli.output import (
    JsonOption,
    done,
    nothing,
    print_json,
    print_table,
    rfc3339,
    when,
    yes_no,
)

app = typer.Typer(
    help="Add, list and show organizations: each owns its domains, members and API keys.",
    no_args_is_help=True,
)

NameArg = Annotated[str, typer.Argument(help="The organization's name.", show_default=False)]


@app.command("add")
def add(ctx: typer.Context, name: NameArg, json: JsonOption = False) -> None:
    """Create an organization (without members: add its first owner with
    `smtpy user add EMAIL --org NAME`)."""
    from smtpy.admin.organizations import add_organization

    with state(ctx).database() as db:
        info = add_organization(db=db, name=name)
    if json:
        print_json(info)
        return
    done(
        f"added organization {info.name}; add its first owner with "
        f"`smtpy user add EMAIL --org {info.name!r}`"
    )


@app.command("list")
def list_(ctx: typer.Context, json: JsonOption = False) -> None:
    """List the organizations with their members, domains, aliases and API keys."""
    from smtpy.admin.organizations import list_organizations

    with state(ctx).database() as db:
        orgs = list_organizations(db=db)
    if json:
        print_json(orgs)
        return
    if not orgs:
        nothing("there are no organizations yet; add one with `smtpy org add NAME`")
        return
    print_table(
        None,
        ["organization", "members", "domains", "aliases", "api keys", "added"],
        [(o.name, o.members, o.domains, o.aliases, o.api_keys, when(o.created_at)) for o in orgs],
        whole=["organization"],
    )


@app.command("show")
def show(ctx: typer.Context, name: NameArg, json: JsonOption = False) -> None:
    """Show one organization: what it holds, and its members with their roles."""
    from smtpy.accounts.members import list_members
    from smtpy.admin.organizations import organization_detail, resolve_organization

    with state(ctx).database() as db:
        info = organization_detail(db=db, org=resolve_organization(db=db, name=name).id)
        people = list_members(db=db, org=info.id)
    if json:
        print_json(
            {**info.model_dump(mode="json"), "member_list": [m.model_dump() for m in people]}
        )
        return
    print_table(
        None,
        ["field", "value"],
        [
            ("name", info.name),
            ("id", info.id),
            ("added", rfc3339(info.created_at)),
            ("members", info.members),
            ("domains", info.domains),
            ("aliases", info.aliases),
            ("api keys", info.api_keys),
        ],
    )
    if people:
        print_table(
            "members",
            ["email", "name", "role", "2fa", "since"],
            [(m.email, m.name, m.role, yes_no(m.two_factor), when(m.created_at)) for m in people],
            whole=["email"],
        )
