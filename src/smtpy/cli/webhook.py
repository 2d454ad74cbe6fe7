"""`smtpy webhook …`: an organization's webhook endpoints and their deliveries."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

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

if TYPE_CHECKING:
    from smtpy.store.db import Database

app = typer.Typer(
    help="Webhook endpoints: signed HTTPS posts of what happens to an organization's mail.",
    no_args_is_help=True,
)

IdArgument = Annotated[
    str, typer.Argument(metavar="ID", help="The webhook's id (see `smtpy webhook list`).")
]


def _owner(db: Database, webhook_id: str, org: str | None) -> int:
    """The organization to act in: --org's, else the webhook's own."""
    from smtpy.admin.webhooks import organization_of_webhook

    return (
        organization_of_webhook(db=db, webhook_id=webhook_id)
        if org is None
        else acting_org(db, org)
    )


EventsOption = Annotated[
    list[str] | None,
    typer.Option(
        "--event",
        "-e",
        help="An event type to send (repeat the option; * for every type).",
        show_default=False,
    ),
]


@app.command("add")
def add(
    ctx: typer.Context,
    url: Annotated[str, typer.Argument(help="Where events are posted: an https:// URL.")],
    events: EventsOption = None,
    org: OrgOption = None,
    json: JsonOption = False,
) -> None:
    """Add a webhook endpoint (for every event type unless --event says which) and print
    its signing secret: this once."""
    from smtpy.admin.webhooks import create_webhook
    from smtpy.billing.plans import Catalog

    settings = state(ctx).settings
    with state(ctx).database() as db:
        hook = create_webhook(
            db=db,
            org=acting_org(db, org),
            url=url,
            events=events,
            allow_private=settings.webhook_allow_private,
            catalog=Catalog.of(settings),
        )
    if json:
        print_json(hook)
        return
    done(hook.secret)
    typer.echo(
        f"added webhook {hook.id} for {', '.join(hook.events)}; its secret is shown only"
        " this once: keep it now (`smtpy webhook rotate-secret` makes a new one)",
        err=True,
    )


@app.command("list")
def list_(ctx: typer.Context, org: OrgOption = None, json: JsonOption = False) -> None:
    """List webhook endpoints (every organization's, or --org's); never a secret."""
    from smtpy.admin.organizations import list_organizations
    from smtpy.admin.webhooks import all_webhooks, list_webhooks
    from smtpy.events.types import EVENT_TYPES

    with state(ctx).database() as db:
        hooks = (
            all_webhooks(db=db) if org is None else list_webhooks(db=db, org=acting_org(db, org))
        )
        names = {o.id: o.name for o in list_organizations(db=db)} if hooks and not json else {}
    if json:
        print_json(hooks)
        return
    if not hooks:
        nothing("there are no webhooks; add one with `smtpy webhook add URL`")
        return
    print_table(
        None,
        ["id", "url", "organization", "events", "state", "created"],
        [
            (
                h.id,
                h.url,
                names.get(h.organization_id, h.organization_id),
                "all" if len(h.events) == len(EVENT_TYPES) else ", ".join(h.events),
                "enabled" if h.enabled else f"disabled: {h.disabled_reason}",
                when(h.created_at),
            )
            for h in hooks
        ],
        whole=["id", "url"],
    )


@app.command("remove")
def remove(
    ctx: typer.Context, webhook_id: IdArgument, org: OrgOption = None, yes: YesOption = False
) -> None:
    """Remove a webhook endpoint and its deliveries."""
    from smtpy.admin.webhooks import remove_webhook

    confirm(f"Remove webhook {webhook_id} and its deliveries?", yes)
    with state(ctx).database() as db:
        hook = remove_webhook(db=db, org=_owner(db, webhook_id, org), webhook_id=webhook_id)
    done(f"removed webhook {hook.id} ({hook.url})")


@app.command("update")
def update(
    ctx: typer.Context,
    webhook_id: IdArgument,
    url: Annotated[
        str | None,
        typer.Option("--url", help="A new https:// URL to post to.", show_default=False),
    ] = None,
    events: EventsOption = None,
    org: OrgOption = None,
    json: JsonOption = False,
) -> None:
    """Change where a webhook endpoint posts, or the event types it gets (--event replaces
    the list); its secret and deliveries stay."""
    from smtpy.admin.webhooks import update_webhook
    from smtpy.errors import InvalidInput

    if url is None and events is None:
        raise InvalidInput("say what to change: --url URL, or --event TYPE (repeat the option)")
    settings = state(ctx).settings
    with state(ctx).database() as db:
        hook = update_webhook(
            db=db,
            org=_owner(db, webhook_id, org),
            webhook_id=webhook_id,
            url=url,
            events=events,
            allow_private=settings.webhook_allow_private,
        )
    if json:
        print_json(hook)
        return
    done(f"webhook {hook.id} posts {', '.join(hook.events)} to {hook.url}")


def _enabled(ctx: typer.Context, webhook_id: str, org: str | None, enabled: bool) -> None:
    from smtpy.admin.webhooks import update_webhook

    with state(ctx).database() as db:
        hook = update_webhook(
            db=db, org=_owner(db, webhook_id, org), webhook_id=webhook_id, enabled=enabled
        )
    done(f"{'enabled' if hook.enabled else 'disabled'} webhook {hook.id} ({hook.url})")


@app.command("enable")
def enable(ctx: typer.Context, webhook_id: IdArgument, org: OrgOption = None) -> None:
    """Enable a webhook endpoint again; its waiting deliveries go out."""
    _enabled(ctx, webhook_id, org, True)


@app.command("disable")
def disable(ctx: typer.Context, webhook_id: IdArgument, org: OrgOption = None) -> None:
    """Disable a webhook endpoint: events are kept, not sent."""
    _enabled(ctx, webhook_id, org, False)


@app.command("rotate-secret")
def rotate_secret(
    ctx: typer.Context, webhook_id: IdArgument, org: OrgOption = None, json: JsonOption = False
) -> None:
    """Make a new signing secret and print it; the old one goes on signing for 24 hours."""
    from smtpy.admin.webhooks import rotate_secret as rotate

    with state(ctx).database() as db:
        hook = rotate(db=db, org=_owner(db, webhook_id, org), webhook_id=webhook_id)
    if json:
        print_json(hook)
        return
    done(hook.secret)
    typer.echo(
        f"new secret for webhook {hook.id}; the previous one also signs until"
        f" {when(hook.previous_secret_until)}",
        err=True,
    )


@app.command("test")
def test(
    ctx: typer.Context, webhook_id: IdArgument, org: OrgOption = None, json: JsonOption = False
) -> None:
    """Post a signed webhook.test event now and show the answer (exit 1 if it failed)."""
    from smtpy.admin.webhooks import send_test

    settings = state(ctx).settings
    with state(ctx).database() as db:
        delivery = send_test(
            db=db,
            org=_owner(db, webhook_id, org),
            webhook_id=webhook_id,
            allow_private=settings.webhook_allow_private,
            timeout=settings.webhook_timeout,
            ca_file=settings.tls_ca_file,
        )
    if json:
        print_json(delivery)
    else:
        attempt = delivery.tries[-1]
        answer = (
            attempt.error or f"HTTP {attempt.status_code}: {(attempt.response_body or '')[:200]}"
        )
        done(f"delivery {delivery.id}: {delivery.status} in {attempt.duration_ms} ms ({answer})")
    if delivery.status != "delivered":
        raise typer.Exit(1)


@app.command("deliveries")
def deliveries(
    ctx: typer.Context,
    webhook_id: IdArgument,
    org: OrgOption = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=200, help="How many, newest first.")
    ] = 50,
    json: JsonOption = False,
) -> None:
    """List a webhook's deliveries, newest first, with every attempt."""
    from smtpy.admin.webhooks import page_deliveries

    with state(ctx).database() as db:
        page = page_deliveries(
            db=db, org=_owner(db, webhook_id, org), webhook_id=webhook_id, limit=limit
        )
    if json:
        print_json(page.data)
        return
    if not page.data:
        nothing(f"webhook {webhook_id} has no deliveries yet")
        return
    print_table(
        None,
        ["id", "event", "type", "status", "attempts", "last answer", "created"],
        [
            (
                d.id,
                d.event_id,
                d.type,
                d.status if d.status != "pending" else f"pending until {when(d.next_attempt_at)}",
                d.attempts,
                (d.last_error or (f"HTTP {d.last_status_code}" if d.last_status_code else "-")),
                when(d.created_at),
            )
            for d in page.data
        ],
        whole=["id", "event"],
    )


@app.command("retry")
def retry(
    ctx: typer.Context,
    webhook_id: IdArgument,
    delivery_id: Annotated[
        int, typer.Argument(metavar="DELIVERY", help="The delivery's id (see `deliveries`).")
    ],
    org: OrgOption = None,
) -> None:
    """Send a delivery again now (smtpy serve sends it)."""
    from smtpy.admin.webhooks import retry_delivery

    with state(ctx).database() as db:
        delivery = retry_delivery(
            db=db, org=_owner(db, webhook_id, org), webhook_id=webhook_id, delivery_id=delivery_id
        )
    done(f"delivery {delivery.id} of webhook {webhook_id} is due again")
