"""`smtpy key …`: DKIM keys. Private keys stay in the store and are never printed."""

from __future__ import annotations

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

app = typer.Typer(help="Generate, list, rotate and remove DKIM keys.", no_args_is_help=True)

DomainArg = Annotated[str, typer.Argument(help="Domain name.", show_default=False)]
SelectorOpt = Annotated[
    str | None,
    typer.Option("--selector", "-s", help="Selector (default: smtpyYYYYMM).", show_default=False),
]
AlgorithmOpt = Annotated[str, typer.Option("--algorithm", "-a", help="rsa or ed25519.")]
BitsOpt = Annotated[int, typer.Option("--bits", help="RSA key size (1024 to 4096).")]


@app.command("generate")
def generate(
    ctx: typer.Context,
    domain: DomainArg,
    selector: SelectorOpt = None,
    algorithm: AlgorithmOpt = "rsa",
    bits: BitsOpt = 2048,
    org: OrgOption = None,
) -> None:
    """Generate a new active key; it signs alongside the domain's other active keys."""
    from smtpy.admin.keys import KeyCreate, generate_key

    with state(ctx).database() as db:
        info = generate_key(
            db=db,
            org=acting_org(db, org),
            domain=domain,
            key=KeyCreate(selector=selector, algorithm=algorithm, bits=bits),
        )
    done(
        f'generated {info.algorithm} key {info.selector}; publish TXT {info.dns_name} "{info.public_record}"'
    )


@app.command("list")
def list_(
    ctx: typer.Context,
    domain: Annotated[
        str | None, typer.Argument(help="Only this domain.", show_default=False)
    ] = None,
    json: JsonOption = False,
    org: OrgOption = None,
) -> None:
    """List keys (public parts only)."""
    from smtpy.admin.keys import list_keys

    with state(ctx).database() as db:
        keys = list_keys(db=db, org=acting_org(db, org), domain=domain)
    if json:
        print_json(keys)
        return
    if not keys:
        nothing(
            f"no DKIM keys{' for ' + domain if domain else ''}; "
            f"generate one with `smtpy key generate {domain or 'DOMAIN'}`"
        )
        return
    print_table(
        None,
        ["domain", "selector", "algorithm", "active", "created"],
        [
            (
                k.domain,
                k.selector,
                f"{k.algorithm}{'-' + str(k.bits) if k.bits else ''}",
                "yes" if k.active else "no (still published)",
                when(k.created_at),
            )
            for k in keys
        ],
    )


@app.command("rotate")
def rotate(
    ctx: typer.Context,
    domain: DomainArg,
    selector: SelectorOpt = None,
    algorithm: Annotated[
        str | None,
        typer.Option("--algorithm", "-a", help="rsa or ed25519 (default: the active key's)."),
    ] = None,
    bits: BitsOpt = 2048,
    org: OrgOption = None,
) -> None:
    """Make a new key the active one; the old one stays published until you remove it."""
    from smtpy.admin.keys import KeyRotate, rotate_key

    with state(ctx).database() as db:
        rotation = rotate_key(
            db=db,
            org=acting_org(db, org),
            domain=domain,
            key=KeyRotate(selector=selector, algorithm=algorithm, bits=bits),
        )
    new = rotation.new
    old = ", ".join(k.selector for k in rotation.retired) or "none"
    done(
        f'{new.selector} now signs (retired: {old}); publish TXT {new.dns_name} "{new.public_record}"'
    )


@app.command("remove")
def remove(
    ctx: typer.Context,
    domain: DomainArg,
    selector: Annotated[str, typer.Argument(help="Selector of the key.", show_default=False)],
    org: OrgOption = None,
) -> None:
    """Delete a key; unpublish its TXT record afterwards."""
    from smtpy.admin.keys import remove_key

    with state(ctx).database() as db:
        info = remove_key(db=db, org=acting_org(db, org), domain=domain, selector=selector)
    done(f"removed key {info.selector}; you may now delete TXT {info.dns_name}")
