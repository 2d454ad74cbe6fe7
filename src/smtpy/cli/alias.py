"""`smtpy alias …`: where mail for each address goes."""

from __future__ import annotations

from typing import Annotated

import typer

from smtpy.cli.context import state
from smtpy.cli.output import JsonOption, done, print_json, print_table

app = typer.Typer(help="Add, list, remove, enable and disable aliases.", no_args_is_help=True)

AddressArg = Annotated[
    str,
    typer.Argument(
        help="alice@example.org, *@example.org or /PATTERN/@example.org.", show_default=False
    ),
]


@app.command("add")
def add(
    ctx: typer.Context,
    address: AddressArg,
    destinations: Annotated[
        list[str] | None,
        typer.Argument(help="Where the mail goes (one or more addresses).", show_default=False),
    ] = None,
    mode: Annotated[
        str,
        typer.Option(
            "--mode", help="forward (default), reject (550 at RCPT) or discard (accept, drop)."
        ),
    ] = "forward",
    message: Annotated[
        str | None, typer.Option("--message", help="Text of the 550 reply of a reject alias.")
    ] = None,
) -> None:
    """Add an alias.

    ADDRESS is matched in this order: exact (alice@example.org, any case),
    plus-tag (alice+news@ goes to alice@ unless alice+news@ exists),
    regex (/PATTERN/@example.org: an RE2 pattern matched against the whole
    local part, case-insensitive, linear-time, so no pattern can hang the
    server; e.g. '/sales-[0-9]+/@example.org'), then the catch-all
    (*@example.org).
    """
    from smtpy.admin.aliases import add_alias

    with state(ctx).database() as db:
        info = add_alias(db, address, destinations or [], mode=mode, reject_message=message)
    target = ", ".join(info.display_destinations) if info.rule.mode == "forward" else info.rule.mode
    done(f"added {info.display_address} -> {target}")


@app.command("list")
def list_(
    ctx: typer.Context,
    domain: Annotated[str | None, typer.Option("--domain", "-d", help="Only this domain.")] = None,
    json: JsonOption = False,
) -> None:
    """List aliases."""
    from smtpy.admin.aliases import list_aliases

    with state(ctx).database() as db:
        aliases = list_aliases(db, domain=domain)
    if json:
        print_json([a.public() for a in aliases])
        return
    print_table(
        None,
        ["alias", "kind", "destinations", "mode", "enabled"],
        [
            (
                a.display_address,
                a.rule.kind,
                "\n".join(a.display_destinations) or "-",
                a.rule.mode + (f": {a.rule.reject_message}" if a.rule.reject_message else ""),
                "yes" if a.rule.enabled else "no",
            )
            for a in aliases
        ],
    )


@app.command("remove")
def remove(ctx: typer.Context, address: AddressArg) -> None:
    """Remove an alias."""
    from smtpy.admin.aliases import remove_alias

    with state(ctx).database() as db:
        info = remove_alias(db, address)
    done(f"removed {info.display_address}")


@app.command("enable")
def enable(ctx: typer.Context, address: AddressArg) -> None:
    """Enable an alias again."""
    from smtpy.admin.aliases import set_enabled

    with state(ctx).database() as db:
        info = set_enabled(db, address, True)
    done(f"enabled {info.display_address}")


@app.command("disable")
def disable(ctx: typer.Context, address: AddressArg) -> None:
    """Disable an alias: its mail is refused with 550 until it is enabled."""
    from smtpy.admin.aliases import set_enabled

    with state(ctx).database() as db:
        info = set_enabled(db, address, False)
    done(f"disabled {info.display_address}")
