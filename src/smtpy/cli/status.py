"""`smtpy status`: is the daemon up, the queue, the last delivery, the recent error rate.

Exit status: 0 when at least one node sent a heartbeat recently, 1 when none
did (no `smtpy serve` is running against this store) — usable as is by a
monitoring script: `smtpy status --json > /dev/null || alert`.
"""

from __future__ import annotations

import sys

import typer

from smtpy.cli.context import state
from smtpy.cli.output import JsonOption, print_json, print_table, when
from smtpy.cli.queue import age as _age


def status(ctx: typer.Context, json: JsonOption = False) -> None:
    """Show which nodes are up, since when, what each holds, the queue depth, the oldest
    message, the last delivery and the recent delivery error rate.

    Every `smtpy serve` node writes a heartbeat to the store every `heartbeat_seconds` (10 by
    default); nodes sharing a PostgreSQL store are listed each, with the deliveries each holds
    leased (in flight). A node is down once three heartbeats are missing. Exits 0 when at
    least one node is up, 1 when none is (for monitoring: `smtpy status --json > /dev/null ||
    alert`).
    """
    from smtpy.admin.status import status as read_status
    from smtpy.config import mask_url

    st = state(ctx)
    with st.database() as db:
        result = read_status(db)
    store = mask_url(st.settings.database_url)  # which store this answer is about
    data = {"store": store, **result.public()}
    if json:
        print_json(data)
    else:
        now = result.now
        if result.nodes:
            print_table(
                "nodes",
                ["node", "state", "leased", "host", "pid", "version", "started", "last seen"],
                [
                    (
                        n["name"],
                        "up" if n["up"] else ("stopped" if n["stopped_at"] else "not responding"),
                        n["leased"],
                        n["hostname"],
                        n["pid"],
                        n["version"],
                        when(n["started_at"]),
                        f"{_age(now - n['seen_at'])} ago",
                    )
                    for n in result.nodes
                ],
            )
        queue = result.queue
        oldest = result.oldest
        last = result.last_delivery
        recent = result.recent
        rate = recent["error_rate"]
        up = sum(1 for n in result.nodes if n["up"])
        lines = [
            ("store", store),
            (
                "daemon",
                f"up ({up} node{'s' if up > 1 else ''})" if up else "DOWN: no node seen recently",
            ),
            (
                "queue",
                f"{result.messages} messages; deliveries: {queue['active']} active, "
                f"{queue['deferred']} deferred, {queue['held']} held",
            ),
            (
                "oldest message",
                "-" if oldest is None else f"{oldest['queue_id']}, {_age(oldest['age'])} old",
            ),
            (
                "last delivery",
                "-"
                if last is None
                else f"{when(last['at'])} to {last['recipient']} via {last['remote_host']}",
            ),
            (
                f"last {_age(recent['window'])}",
                f"{recent['delivered']} delivered, {recent['deferred']} deferred, "
                f"{recent['bounced']} bounced, {recent['rejected']} rejected; "
                f"delivery error rate {'-' if rate is None else f'{rate:.1%}'}",
            ),
        ]
        for name, value in lines:
            sys.stdout.write(f"{name + ':':<16} {value}\n")
    if not result.up:
        raise typer.Exit(1)
