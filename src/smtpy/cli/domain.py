"""`smtpy domain …`: the domains this forwarder serves."""

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
    plural,
    print_json,
    print_table,
    rfc3339,
    when,
    yes_no,
)

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
    org: OrgOption = None,
) -> None:
    """Serve a domain: creates its ownership token and a first DKIM key. Mail is accepted at once."""
    from smtpy.admin.domains import DomainCreate, add_domain
    from smtpy.billing.plans import Catalog

    with state(ctx).database() as db:
        info = add_domain(
            db=db,
            org=acting_org(db, org),
            domain=DomainCreate(name=name, key_algorithm=key_algorithm),
            catalog=Catalog.of(state(ctx).settings),
        )
    done(f"added {info.name}; publish its records: smtpy domain records {info.name}")


@app.command("list")
def list_(ctx: typer.Context, json: JsonOption = False, org: OrgOption = None) -> None:
    """List served domains."""
    from smtpy.admin.domains import list_domains

    with state(ctx).database() as db:
        domains = list_domains(db=db, org=acting_org(db, org))
    if json:
        print_json(domains)
        return
    if not domains:
        nothing("no domains are served yet; add one with `smtpy domain add DOMAIN`")
        return
    print_table(
        None,
        ["domain", "verified", "aliases", "keys", "added"],
        [
            (
                d.name,
                yes_no(d.verified),
                d.aliases,
                d.keys,
                when(d.created_at),
            )
            for d in domains
        ],
    )


@app.command("show")
def show(
    ctx: typer.Context, name: DomainArg, json: JsonOption = False, org: OrgOption = None
) -> None:
    """Show one domain."""
    from smtpy.admin.domains import get_domain

    with state(ctx).database() as db:
        info = get_domain(db=db, org=acting_org(db, org), name=name)
    if json:
        print_json(info)
        return
    dmarc = {
        "on": "on (refuse mail failing a DMARC p=reject policy)",
        "off": "off (forward it, marked)",
        "default": "default (SMTPY_DMARC_REJECT)",
    }[info.dmarc_reject]
    print_table(
        None,
        ["field", "value"],
        [
            ("name", info.name),
            ("ascii name", info.ascii_name),
            ("organization", info.organization),
            ("verified", yes_no(info.verified)),
            ("verified at", rfc3339(info.verified_at)),
            ("added", rfc3339(info.created_at)),
            ("aliases", info.aliases),
            ("keys", info.keys),
            ("dmarc reject", dmarc),
        ],
    )


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
    org: OrgOption = None,
) -> None:
    """Set this domain's inbound policy (a running daemon applies it within seconds)."""
    from smtpy.admin.domains import DomainUpdate, update_domain

    with state(ctx).database() as db:
        info = update_domain(
            db=db,
            org=acting_org(db, org),
            name=name,
            update=DomainUpdate(dmarc_reject=dmarc_reject),
        )
    if json:
        print_json(info)
        return
    done(f"{info.name}: dmarc_reject {info.dmarc_reject}")


@app.command("remove")
def remove(
    ctx: typer.Context, name: DomainArg, yes: YesOption = False, org: OrgOption = None
) -> None:
    """Stop serving a domain and delete its aliases and DKIM keys (queued mail stays)."""
    from smtpy.admin.domains import get_domain, remove_domain

    with state(ctx).database() as db:
        org_id = acting_org(db, org)
        info = get_domain(db=db, org=org_id, name=name)
        confirm(
            f"Remove {info.name} with its {plural(info.aliases, 'alias', 'aliases')}"
            f" and {plural(info.keys, 'key')}?",
            yes,
        )
        remove_domain(db=db, org=org_id, name=name)
    done(f"removed {info.name}")


@app.command("records")
def records(
    ctx: typer.Context,
    name: DomainArg,
    json: JsonOption = False,
    zone: Annotated[
        bool,
        typer.Option(
            "--zone",
            help="Print zone-file lines, ready to paste into a zone or a DNS provider's form.",
        ),
    ] = False,
    org: OrgOption = None,
) -> None:
    """Print every DNS record to publish: MX, SPF, DKIM, DMARC and the ownership TXT."""
    from smtpy.admin.domains import domain_records
    from smtpy.admin.records import zone_lines
    from smtpy.errors import InvalidInput

    if json and zone:
        raise InvalidInput("choose one of --json and --zone")
    st = state(ctx)
    with st.database() as db:
        recs = domain_records(
            db=db, org=acting_org(db, org), name=name, hostname=st.settings.hostname
        )
    if json:
        print_json(recs)
        return
    if zone:
        done("\n".join(zone_lines(recs)))
        return
    print_table(
        None,
        ["type", "name", "value", "purpose"],
        [(r.type, r.name, r.value, r.purpose) for r in recs],
    )


@app.command("verify")
def verify(
    ctx: typer.Context, name: DomainArg, json: JsonOption = False, org: OrgOption = None
) -> None:
    """Look the records up in DNS (all at once). Exit 0 when ownership and MX are in place,
    1 otherwise, or when the DNS resolver does not answer."""
    from smtpy.admin.domains import verify_domain
    from smtpy.errors import CheckFailed

    st = state(ctx)
    settings = st.settings
    with st.database() as db:
        report = verify_domain(
            db=db,
            org=acting_org(db, org),
            name=name,
            hostname=settings.hostname,
            nameservers=settings.dns_nameservers,
            timeout=settings.dns_timeout,
        )
    if json:
        print_json(report)
    elif report.resolver_error is None:
        print_table(
            None,
            ["record", "expected", "found", "status", "fix"],
            [
                (
                    f"{f.type} {f.name}",
                    f.value,
                    "\n".join(f.found) or "-",
                    f.status + ("" if f.required else " (advice)") if f.status != "ok" else "ok",
                    f.fix,
                )
                for f in report.records
            ],
        )
        done(
            "verified"
            if report.verified
            else "not verified: publish the missing records and run this again"
        )
    if report.resolver_error is not None:
        raise CheckFailed(f"{report.domain} not verified: {report.resolver_error}")
    if not report.verified:
        raise typer.Exit(1)
