"""`smtpy domain …`: the domains this forwarder serves."""

from __future__ import annotations

from typing import Annotated

import typer

from smtpy.cli.context import state
from smtpy.cli.output import JsonOption, YesOption, confirm, done, print_json, print_table, when

app = typer.Typer(
    help="Add, inspect and verify the domains smtpy receives mail for.", no_args_is_help=True
)

DomainArg = Annotated[
    str, typer.Argument(help="Domain name (Unicode or IDNA form).", show_default=False)
]


@app.command("add")
def add(
    ctx: typer.Context,
    name: DomainArg,
    key_algorithm: Annotated[
        str,
        typer.Option("--key-algorithm", help="Algorithm of the first DKIM key: rsa or ed25519."),
    ] = "rsa",
) -> None:
    """Serve a domain: creates its ownership token and a first DKIM key. Mail is accepted at once."""
    from smtpy.admin.domains import add_domain

    with state(ctx).database() as db:
        info = add_domain(db, name, key_algorithm=key_algorithm)
    done(
        f"added {info.display_name}; publish its records: smtpy domain records {info.display_name}"
    )


@app.command("list")
def list_(ctx: typer.Context, json: JsonOption = False) -> None:
    """List served domains."""
    from smtpy.admin.domains import list_domains

    with state(ctx).database() as db:
        domains = list_domains(db)
    if json:
        print_json([d.public() for d in domains])
        return
    print_table(
        None,
        ["domain", "verified", "aliases", "keys", "added"],
        [
            (
                d.display_name,
                "yes" if d.verified_at else "no",
                d.aliases,
                d.keys,
                when(d.created_at),
            )
            for d in domains
        ],
    )


@app.command("show")
def show(ctx: typer.Context, name: DomainArg, json: JsonOption = False) -> None:
    """Show one domain."""
    from smtpy.admin.domains import get_domain

    with state(ctx).database() as db:
        info = get_domain(db, name)
    if json:
        print_json(info.public())
        return
    data = info.public()
    print_table(None, ["field", "value"], [(k, data[k]) for k in data])


@app.command("policy")
def policy(
    ctx: typer.Context,
    name: DomainArg,
    dmarc_reject: Annotated[
        str,
        typer.Option(
            "--dmarc-reject",
            help="on: refuse mail failing a DMARC p=reject policy (550 at end of DATA); "
            "off: forward it, marked; default: follow SMTPY_DMARC_REJECT.",
            show_default=False,
        ),
    ],
    json: JsonOption = False,
) -> None:
    """Set this domain's inbound policy (a running daemon applies it within seconds)."""
    from smtpy.admin.domains import set_dmarc_reject

    with state(ctx).database() as db:
        info = set_dmarc_reject(db, name, dmarc_reject.lower())
    if json:
        print_json(info.public())
        return
    done(f"{info.display_name}: dmarc_reject {info.public()['dmarc_reject']}")


@app.command("remove")
def remove(ctx: typer.Context, name: DomainArg, yes: YesOption = False) -> None:
    """Stop serving a domain and delete its aliases and DKIM keys (queued mail stays)."""
    from smtpy.admin.domains import get_domain, remove_domain

    with state(ctx).database() as db:
        info = get_domain(db, name)
        confirm(
            f"Remove {info.display_name} with its {info.aliases} aliases and {info.keys} keys?", yes
        )
        remove_domain(db, name)
    done(f"removed {info.display_name}")


@app.command("records")
def records(ctx: typer.Context, name: DomainArg, json: JsonOption = False) -> None:
    """Print every DNS record to publish: MX, SPF, DKIM, DMARC and the ownership TXT."""
    from smtpy.admin.domains import domain_records

    st = state(ctx)
    with st.database() as db:
        recs = domain_records(db, name, hostname=st.settings.hostname)
    if json:
        print_json([r.public() for r in recs])
        return
    print_table(
        None,
        ["type", "name", "value", "purpose"],
        [(r.type, r.name, r.value, r.purpose) for r in recs],
    )


@app.command("verify")
def verify(ctx: typer.Context, name: DomainArg, json: JsonOption = False) -> None:
    """Look the records up in DNS. Exit 0 when ownership and MX are in place, 1 otherwise."""
    from smtpy.admin.domains import verify_domain
    from smtpy.mail.addresses import display_domain

    st = state(ctx)
    settings = st.settings
    with st.database() as db:
        report = verify_domain(
            db,
            name,
            hostname=settings.hostname,
            nameservers=settings.dns_nameservers,
            timeout=settings.dns_timeout,
        )
    if json:
        print_json(
            {
                "domain": display_domain(report.domain),
                "verified": report.verified,
                "records": [f.public() for f in report.findings],
            }
        )
    else:
        print_table(
            None,
            ["record", "expected", "found", "status", "fix"],
            [
                (
                    f"{f.record.type} {f.record.name}",
                    f.record.value,
                    "\n".join(f.found) or "-",
                    f.status + ("" if f.required else " (advice)") if f.status != "ok" else "ok",
                    f.fix,
                )
                for f in report.findings
            ],
        )
        done(
            "verified"
            if report.verified
            else "not verified: publish the missing records and run this again"
        )
    if not report.verified:
        raise typer.Exit(1)
