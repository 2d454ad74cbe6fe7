"""`smtpy route explain`: why mail to an address goes where it goes (nothing is sent)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from smtpy.cli.context import state
from smtpy.cli.output import JsonOption, print_json

if TYPE_CHECKING:
    from smtpy.admin.explain import Explanation

app = typer.Typer(help="Explain how smtpy routes mail, without sending any.", no_args_is_help=True)


@app.command("explain")
def explain(
    ctx: typer.Context,
    address: Annotated[
        str,
        typer.Argument(help="Recipient address, as a sender would write it.", show_default=False),
    ],
    sender: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="Envelope sender, to show its SRS rewrite and the From domain's DMARC policy.",
            show_default=False,
        ),
    ] = None,
    json: JsonOption = False,
) -> None:
    """Show the RCPT reply, the matching rule, destinations, SRS sender, From rewrite, MX hosts and TLS policy."""
    from smtpy import log
    from smtpy.admin.explain import explain_route

    log.configure("error")  # what the daemon would log goes into the explanation instead
    result = explain_route(state(ctx).settings, address, sender=sender)
    if json:
        print_json(result.public())
        return
    _print(result)


def _print(result: Explanation) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    verdict = "green" if result.accepted else "red"
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column()
    summary.add_row("recipient", escape(result.address))
    summary.add_row("reply", f"[{verdict}]{escape(result.reply)}[/{verdict}]")
    if result.rule is not None:
        rule = result.rule
        how = {"plus": f"plus-tag +{rule.tag}", "catchall": "catch-all"}.get(rule.how, rule.how)
        state_text = "" if rule.enabled else ", disabled"
        summary.add_row("rule", escape(f"{rule.alias} ({how}, {rule.mode}{state_text})"))
    elif result.srs_reversed:
        summary.add_row("rule", "SRS address of this forwarder: a bounce on its way back")
    if result.accepted:
        destinations = ", ".join(result.destinations) or "none: the message is discarded"
        summary.add_row("destinations", escape(destinations))
        if result.fallbacks:  # tried in order when a destination fails for good
            summary.add_row("fallbacks", escape(", then ".join(result.fallbacks)))
    if result.awaiting_confirmation:
        summary.add_row(
            "pending confirmation",
            escape(
                ", ".join(result.awaiting_confirmation)
                + (
                    ": mail for them waits in the queue"
                    if result.accepted
                    else ": no destination is confirmed yet"
                )
            ),
        )
    if result.envelope_sender is not None:
        summary.add_row("envelope sender", escape(result.envelope_sender or "<> (null sender)"))
    if result.from_rewrite is not None:
        rewrite = result.from_rewrite
        policy = rewrite.dmarc or (
            f"unknown ({rewrite.dmarc_error})" if rewrite.dmarc_error else "none published"
        )
        summary.add_row("DMARC of From", escape(f"{rewrite.from_domain}: {policy}"))
        summary.add_row("From, aligned DKIM", escape(rewrite.with_aligned_dkim))
        summary.add_row("From, otherwise", escape(rewrite.without_aligned_dkim))
    for webhook in result.webhooks:
        summary.add_row("delivery", escape(webhook))
    console.print(summary)
    if not result.routes:
        return
    table = Table(title="delivery", header_style="bold")
    for column in ("domain", "MX host", "addresses", "TLS policy"):
        table.add_column(column, overflow="fold")
    for route in result.routes:
        tls = f"{route.tls.mode}: {route.tls.reason}"
        if route.error is not None:
            table.add_row(route.domain, "-", escape(route.error), escape(tls))
            continue
        for index, host in enumerate(route.hosts):
            name = f"{host.host}:{host.port}" + (" (relay)" if route.via_relay else "")
            if not host.allowed:
                name += " (not in the MTA-STS policy: skipped)"
            addresses = ", ".join(host.addresses) or (host.error or "-")
            table.add_row(
                route.domain if index == 0 else "",
                escape(name),
                escape(addresses),
                escape(tls) if index == 0 else "",
            )
    console.print(table)
