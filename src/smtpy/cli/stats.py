"""`smtpy stats`: what the forwarder did over a period, in total or per domain, alias or day."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from smtpy.cli.context import state
from smtpy.cli.output import JsonOption, OrgOption, acting_org, print_json, print_table, when

if TYPE_CHECKING:
    from smtpy.admin.stats import FiguresPublic


def _delay(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f}s"


def _figures_row(figures: FiguresPublic) -> list[Any]:
    return [
        figures.received,
        figures.forwarded,
        figures.deferred,
        figures.bounced,
        figures.discarded,
        figures.rejected,
        _delay(figures.median_delay),
    ]


_FIGURES = ["received", "forwarded", "deferred", "bounced", "discarded", "rejected", "median delay"]


def stats(
    ctx: typer.Context,
    since: Annotated[
        str, typer.Option("--since", help="The period up to now, e.g. 24h, 7d, 4w.")
    ] = "7d",
    by: Annotated[
        str | None, typer.Option("--by", help="One row per domain, alias or day (UTC).")
    ] = None,
    json: JsonOption = False,
    org: OrgOption = None,
) -> None:
    """Count received, forwarded, deferred, bounced, discarded and rejected mail (by reason),
    and the median delivery delay, from the message log."""
    import time

    from smtpy.admin.queue import parse_age
    from smtpy.admin.stats import compute

    now = time.time()
    with state(ctx).database() as db:
        result = compute(
            db=db, org=acting_org(db, org), since=now - parse_age(since), until=now + 1, by=by
        )
    if json:
        print_json(result)
        return
    title = f"since {when(result.since)}"
    if by is None:
        print_table(title, _FIGURES, [_figures_row(result.total)])
    else:
        rows = [[group.key, *_figures_row(group)] for group in result.groups]
        rows.append(["total", *_figures_row(result.total)])
        print_table(title, [by, *_FIGURES], rows)
    reasons = result.total.rejected_by_reason
    if reasons:
        print_table(
            "rejected by reason",
            ["reason", "count"],
            sorted(reasons.items(), key=lambda item: (-item[1], item[0])),
        )
