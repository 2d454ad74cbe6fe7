"""`smtpy log`: the message log, filtered, as lines or JSON lines, and followed live."""

from __future__ import annotations

import json as jsonlib
import signal
import sys
import time
from typing import Annotated, Any

import typer

from smtpy.cli.context import state
from smtpy.cli.output import OrgOption, acting_org, when

FOLLOW_POLL = 1.0  # seconds between two reads of new rows


def format_line(row: dict[str, Any]) -> str:
    """One event on one line, the way an admin greps it."""
    parts = [when(row["at"]), f"{row['event']:<9}", row["queue_id"] or "-"]
    if row["client_ip"]:
        parts.append(f"client={row['client_ip']}")
    if row["sender"] is not None:
        parts.append(f"from=<{row['sender']}>")
    if row["alias"]:
        parts.append(f"to=<{row['alias']}>")
    if row["recipient"] and row["recipient"] != row["alias"]:
        parts.append(f"via=<{row['recipient']}>")
    if row["size"] is not None:
        parts.append(f"size={row['size']}")
    if row["reason"]:
        parts.append(f"reason={row['reason']}")
    if row["remote_host"]:
        parts.append(f"relay={row['remote_host']}")
    if row["delay"] is not None:
        parts.append(f"delay={row['delay']:.1f}s")
    if row["reply"]:
        parts.append(f'reply="{" ".join(str(row["reply"]).split())}"')
    return " ".join(parts)


def _emit(rows: list[dict[str, Any]], json: bool) -> None:
    for row in rows:
        if json:
            sys.stdout.write(jsonlib.dumps(row, ensure_ascii=False) + "\n")
        else:
            sys.stdout.write(format_line(row) + "\n")
    sys.stdout.flush()


def log(
    ctx: typer.Context,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events until Ctrl-C.")
    ] = False,
    domain: Annotated[
        str | None, typer.Option("--domain", "-d", help="Only events of this served domain.")
    ] = None,
    alias: Annotated[
        str | None, typer.Option("--alias", "-a", help="Only events for this recipient address.")
    ] = None,
    queue_id: Annotated[
        str | None, typer.Option("--queue-id", "-q", help="Only events of this message.")
    ] = None,
    event: Annotated[
        str | None,
        typer.Option(
            "--event",
            "-e",
            help="Only this event: received, rejected, delivered, deferred, bounced, discarded.",
        ),
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Only events newer than this age, e.g. 2h, 7d.")
    ] = None,
    limit: Annotated[
        int,
        typer.Option(
            "--limit",
            "-n",
            min=0,
            help="Print at most this many past events (0 with --follow: new events only).",
        ),
    ] = 100,
    json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object per line (JSON lines).")
    ] = False,
    org: OrgOption = None,
) -> None:
    """Show the message log: every decision about every message (never its content).

    Each line: time, event, queue id, client, sender, recipient (alias) and where
    it went, size, reason of a rejection, remote host and reply, delay.
    """
    from smtpy.admin.messages import Follower, LogFilter, last_id, recent
    from smtpy.errors import InvalidInput

    if limit == 0 and not follow:
        raise InvalidInput("--limit 0 prints nothing: use it with --follow to see new events only")
    flt = LogFilter.make(since=since, domain=domain, alias=alias, queue_id=queue_id, event=event)
    with state(ctx).database() as db:
        org_id = acting_org(db, org)
        newest = last_id(db=db)
        rows = recent(db=db, org=org_id, flt=flt, limit=limit) if limit else []
        _emit(rows, json)
        if not follow:
            if not rows and not json:
                sys.stderr.write(
                    "no event in the message log matches; widen --since or the filters\n"
                )
            return
        # What is older was listed or did not match.
        follower = Follower(org=org_id, flt=flt, start_id=newest)
        follower.shown(rows)
        # Ctrl-C stops following even when started with SIGINT ignored (a background job).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            while True:
                _emit(follower.poll(db), json)
                time.sleep(FOLLOW_POLL)
        except KeyboardInterrupt:
            return
