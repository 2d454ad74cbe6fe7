"""`smtpy plan …`: the configured plans, the plan an organization is on, its limits."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import typer

from smtpy.cli.context import state
from smtpy.cli.output import JsonOption, done, nothing, print_json, print_table

app = typer.Typer(
    help="List the plans of the configuration file; put an organization on a plan or "
    "override its limits (billing).",
    no_args_is_help=True,
)

OrgArg = Annotated[str, typer.Argument(help="The organization's name.", show_default=False)]


def limit_text(value: int | None) -> str:
    return "unlimited" if value is None else str(value)


@app.command("list")
def list_(ctx: typer.Context, json: JsonOption = False) -> None:
    """List the plans ([plans.NAME] in the configuration file) with their limits."""
    from smtpy.billing.plans import Catalog, list_plans

    found = list_plans(Catalog.of(state(ctx).settings))
    if json:
        print_json(found)
        return
    if not found:
        nothing("no plans are configured ([plans.NAME] in smtpy.toml): nothing is limited")
        return
    print_table(
        None,
        ["plan", "name", "default", "price", "stripe price", "limits"],
        [
            (
                p.id,
                p.name,
                "yes" if p.default else "",
                p.price or "",
                p.stripe_price or "",
                ", ".join(f"{k} {v}" for k, v in p.limits.items() if v is not None) or "none",
            )
            for p in found
        ],
        whole=["plan"],
    )


@app.command("set")
def set_(
    ctx: typer.Context,
    org: OrgArg,
    plan: Annotated[
        str,
        typer.Argument(
            help="A plan of `smtpy plan list`, or `default` for the default plan.",
            show_default=False,
        ),
    ],
) -> None:
    """Put an organization on a plan without Stripe (a paid subscription still wins while
    it lasts)."""
    from smtpy.admin.organizations import resolve_organization
    from smtpy.billing.plans import Catalog, set_plan

    with state(ctx).database() as db:
        found = resolve_organization(db=db, name=org)
        effective = set_plan(
            db=db,
            org=found.id,
            plan=None if plan == "default" else plan,
            catalog=Catalog.of(state(ctx).settings),
        )
    done(f"{found.name} is on the {effective.plan.name} plan ({effective.source})")


def _limit_option(name: str, what: str) -> Any:
    return typer.Option(
        f"--{name.replace('_', '-')}",
        help=f"{what}: a number, `unlimited`, or `plan` for the plan's own limit.",
        show_default=False,
    )


@app.command("limits")
def limits(
    ctx: typer.Context,
    org: OrgArg,
    domains: Annotated[str | None, _limit_option("domains", "Domains")] = None,
    aliases: Annotated[str | None, _limit_option("aliases", "Aliases")] = None,
    destinations: Annotated[
        str | None, _limit_option("destinations", "Distinct destination addresses")
    ] = None,
    webhooks: Annotated[str | None, _limit_option("webhooks", "Webhooks")] = None,
    messages_per_month: Annotated[
        str | None, _limit_option("messages_per_month", "Messages received a month")
    ] = None,
    max_message_size: Annotated[
        str | None, _limit_option("max_message_size", "Bytes a message may have")
    ] = None,
    reset: Annotated[
        bool, typer.Option("--reset", help="Drop every override first: the plan's limits.")
    ] = False,
    json: JsonOption = False,
) -> None:
    """Override an organization's limits on top of its plan (or show them, without options)."""
    from smtpy.admin.organizations import resolve_organization
    from smtpy.billing.plans import Catalog, effective_plan, set_overrides
    from smtpy.errors import InvalidInput

    given = {
        "domains": domains,
        "aliases": aliases,
        "destinations": destinations,
        "webhooks": webhooks,
        "messages_per_month": messages_per_month,
        "max_message_size": max_message_size,
    }
    changes: dict[str, int | Literal["plan"] | None] = {}
    for key, text in given.items():
        if text is None:
            continue
        value = text.strip().lower()
        if value in {"unlimited", "none"}:
            changes[key] = None
        elif value == "plan":
            changes[key] = "plan"
        elif value.isdigit():
            changes[key] = int(value)
        else:
            raise InvalidInput(
                f"--{key.replace('_', '-')} {text!r}: expected a number, `unlimited` or `plan`"
            )
    catalog = Catalog.of(state(ctx).settings)
    with state(ctx).database() as db:
        found = resolve_organization(db=db, name=org)
        if changes or reset:
            effective = set_overrides(
                db=db,
                org=found.id,
                changes=changes,
                catalog=catalog,
                reset=reset,
            )
        else:
            effective = effective_plan(db=db, org=found.id, catalog=catalog)
    if json:
        print_json(effective)
        return
    print_table(
        f"{found.name}: {effective.plan.name} plan ({effective.source})",
        ["limit", "value", "overridden"],
        [
            (k, limit_text(v), "yes" if k in effective.overrides else "")
            for k, v in effective.limits.items()
        ],
    )
