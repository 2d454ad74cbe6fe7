"""`smtpy alias …`: where mail for each address goes."""

from __future__ import annotations

from pathlib import Path
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
    yes_no,
)

app = typer.Typer(
    help="Add, list, remove, enable and disable aliases; set their fallbacks.",
    no_args_is_help=True,
)

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
        typer.Argument(
            help="Where the mail goes: one or more addresses, or https URLs (webhook"
            " destinations: each message is posted as a signed message.received event).",
            show_default=False,
        ),
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
    fallback: Annotated[
        list[str] | None,
        typer.Option(
            "--fallback",
            help="Where mail goes when a destination fails for good; repeat it for an "
            "ordered chain.",
            show_default=False,
        ),
    ] = None,
    org: OrgOption = None,
) -> None:
    """Add an alias.

    ADDRESS is matched in this order: exact (alice@example.org, any case),
    plus-tag (alice+news@ goes to alice@ unless alice+news@ exists),
    regex (/PATTERN/@example.org: an RE2 pattern matched against the whole
    local part, case-insensitive, linear-time, so no pattern can hang the
    server; e.g. '/sales-[0-9]+/@example.org'), then the catch-all
    (*@example.org).

    With --fallback, a destination that refuses the mail for good (5xx) or
    defers it until the queue lifetime runs out is replaced by the first
    fallback not tried yet for that message; the sender gets a bounce only
    when the last fallback failed too.
    """
    from smtpy.admin.aliases import AliasCreate, add_alias
    from smtpy.billing.plans import Catalog

    alias = AliasCreate(
        address=address,
        destinations=destinations or [],
        mode=mode,
        reject_message=message,
        fallbacks=fallback or [],
    )
    settings = state(ctx).settings
    with state(ctx).database() as db:
        info = add_alias(
            db=db,
            org=acting_org(db, org),
            alias=alias,
            catalog=Catalog.of(settings),
            allow_private=settings.webhook_allow_private,
        )
    target = ", ".join(info.destinations) if info.mode == "forward" else info.mode
    done(f"added {info.address} -> {target}{_then(info.fallbacks)}")
    for url, secret in info.secrets.items():  # shown this once
        done(f"signing secret for {url}: {secret} (verify the webhook-signature header with it)")


def _then(fallbacks: list[str]) -> str:
    return f" (fallback: {', then '.join(fallbacks)})" if fallbacks else ""


@app.command("fallback")
def fallback_(
    ctx: typer.Context,
    address: AddressArg,
    fallbacks: Annotated[
        list[str] | None,
        typer.Argument(help="The fallbacks, in the order they are tried.", show_default=False),
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Remove the alias's fallbacks.")] = False,
    org: OrgOption = None,
) -> None:
    """Set the ordered fallbacks of a forwarding alias (replacing any it had).

    A destination that fails for good goes to the first fallback not tried
    yet for that message, each fallback at most once per message; the sender
    gets a bounce only when the last one failed too.
    """
    from smtpy.admin.aliases import AliasUpdate, update_alias
    from smtpy.errors import InvalidInput

    if clear == bool(fallbacks):
        raise InvalidInput(
            "name the fallbacks in order, or --clear to remove them: "
            "smtpy alias fallback ADDRESS FALLBACK..."
        )
    settings = state(ctx).settings
    with state(ctx).database() as db:
        info = update_alias(
            db=db,
            org=acting_org(db, org),
            address=address,
            update=AliasUpdate(fallbacks=fallbacks or []),
            allow_private=settings.webhook_allow_private,
        )
    if info.fallbacks:
        done(f"{info.address} falls back to {', then '.join(info.fallbacks)}")
        for url, secret in info.secrets.items():  # shown this once
            done(f"signing secret for {url}: {secret} (verify the webhook-signature header)")
    else:
        done(f"{info.address} has no fallbacks")


@app.command("list")
def list_(
    ctx: typer.Context,
    domain: Annotated[str | None, typer.Option("--domain", "-d", help="Only this domain.")] = None,
    json: JsonOption = False,
    org: OrgOption = None,
) -> None:
    """List aliases."""
    from smtpy.admin.aliases import list_aliases

    with state(ctx).database() as db:
        aliases = list_aliases(db=db, org=acting_org(db, org), domain=domain)
    if json:
        print_json(aliases)
        return
    if not aliases:
        where = domain or "DOMAIN"
        nothing(
            f"no aliases{' for ' + domain if domain else ''}; "
            f"add one with `smtpy alias add ADDRESS@{where} DESTINATION`"
        )
        return
    print_table(
        None,
        ["alias", "kind", "destinations", "fallbacks", "mode", "enabled"],
        [
            (
                a.address,
                a.kind,
                "\n".join(
                    d + (" (pending confirmation)" if d in a.pending_destinations else "")
                    for d in a.destinations
                )
                or "-",
                "\n".join(a.fallbacks) or "-",
                a.mode + (f": {a.reject_message}" if a.reject_message else ""),
                yes_no(a.enabled),
            )
            for a in aliases
        ],
    )


@app.command("remove")
def remove(ctx: typer.Context, address: AddressArg, org: OrgOption = None) -> None:
    """Remove an alias."""
    from smtpy.admin.aliases import remove_alias

    with state(ctx).database() as db:
        info = remove_alias(db=db, org=acting_org(db, org), address=address)
    done(f"removed {info.address}")


@app.command("enable")
def enable(ctx: typer.Context, address: AddressArg, org: OrgOption = None) -> None:
    """Enable an alias again."""
    from smtpy.admin.aliases import AliasUpdate, update_alias

    with state(ctx).database() as db:
        info = update_alias(
            db=db, org=acting_org(db, org), address=address, update=AliasUpdate(enabled=True)
        )
    done(f"enabled {info.address}")


@app.command("disable")
def disable(ctx: typer.Context, address: AddressArg, org: OrgOption = None) -> None:
    """Disable an alias: its mail is refused with 550 until it is enabled."""
    from smtpy.admin.aliases import AliasUpdate, update_alias

    with state(ctx).database() as db:
        info = update_alias(
            db=db, org=acting_org(db, org), address=address, update=AliasUpdate(enabled=False)
        )
    done(f"disabled {info.address}")


@app.command("import")
def import_(
    ctx: typer.Context,
    file: Annotated[
        Path,
        typer.Argument(
            help="A Postfix virtual(5) map (the text file postmap reads); - for stdin.",
            show_default=False,
        ),
    ],
    domain: Annotated[
        str | None,
        typer.Option(
            "--domain",
            "-d",
            help="Import only this domain; keys without @domain are taken as KEY@DOMAIN.",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be imported; write nothing.")
    ] = False,
    json: JsonOption = False,
    org: OrgOption = None,
) -> None:
    """Import aliases from a Postfix virtual map, all or nothing.

    Reads user@domain DEST..., @domain DEST... (the catch-all) and, with
    --domain, bare user DEST... entries; comments and continuation lines as
    postmap does. Lines smtpy cannot express (regexp/pcre entries, local
    mailboxes, |command, /file, :include:) are reported with their line
    number. One bad line and nothing is written; aliases that already exist
    with the same destinations are left as they are.
    """
    import sys

    from smtpy.admin.alias_import import MapRejected, describe, import_virtual_map
    from smtpy.errors import InvalidInput

    name = "stdin" if str(file) == "-" else str(file)
    try:
        text = sys.stdin.read() if str(file) == "-" else file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read {name}: {exc}") from None
    with state(ctx).database() as db:
        try:
            result = import_virtual_map(
                db=db, org=acting_org(db, org), text=text, domain=domain, dry_run=dry_run
            )
        except MapRejected as exc:
            if json:
                print_json(exc.result)
            for error in exc.result.errors:
                sys.stderr.write(f"{name}:{error.line}: {error.message}\n")
            raise InvalidInput(
                f"{name}: {len(exc.result.errors)} bad line(s); nothing was imported"
            ) from None
    if json:
        print_json(result)
        return
    if result.created:
        print_table(
            None,
            ["line", "alias", "destinations"],
            [(a.line, a.address, "\n".join(a.destinations)) for a in result.created],
        )
    done(describe(result))
