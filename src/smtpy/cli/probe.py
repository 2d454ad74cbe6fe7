"""`smtpy test ADDRESS`: send a probe through the running daemon and follow it to the MX."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from smtpy.cli.context import state
from smtpy.cli.output import JsonOption, print_json

if TYPE_CHECKING:
    from smtpy.admin.probe import Step


def test(
    ctx: typer.Context,
    address: Annotated[
        str,
        typer.Argument(help="An address smtpy serves (an alias).", show_default=False),
    ],
    sender: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="Envelope sender and From of the probe (default: smtpy-test@ the alias's "
            "domain; signed with the DKIM keys smtpy holds for its domain).",
            show_default=False,
        ),
    ] = None,
    timeout: Annotated[
        float,
        typer.Option(help="Seconds to wait for the destinations' MX hosts to answer."),
    ] = 60.0,
    json: JsonOption = False,
) -> None:
    """Prove that forwarding works: send a probe message to ADDRESS through the running
    daemon and follow it until the destination's MX answers.

    Prints each step: accepted (with its queue id), the route and destinations, the SRS
    envelope sender, the DKIM signature, the ARC seal, and each destination's MX with its
    reply; or where the probe is stuck and what to do (daemon not running, recipient
    refused, deferred with the reason, bounced). The probe goes to the first SMTPY_LISTEN
    address (a wildcard one on loopback; a daemon still starting gets five seconds) and is
    followed in the message log of this store.
    Exit 0 only when every destination's MX took it, 1 otherwise, 2 on bad input.
    """
    from smtpy.admin.probe import run_probe

    st = state(ctx)
    result = run_probe(
        st.settings,
        address,
        open_store=st.database,
        sender=sender,
        timeout=timeout,
        progress=(lambda _step: None) if json else _print_step,
    )
    if json:
        print_json(result.public())
    else:
        for advice in result.advice:
            sys.stdout.write(f"\nwhat to do: {advice}\n")
        if result.delivered:
            sys.stdout.write("\nforwarding works: the destination's MX took the probe\n")
    if not result.delivered:
        raise typer.Exit(1)


def _print_step(step: Step) -> None:
    mark = "ok " if step.ok else "FAIL"
    sys.stdout.write(f"{mark:<4} {step.name + ':':<10} {step.detail}\n")
    sys.stdout.flush()
