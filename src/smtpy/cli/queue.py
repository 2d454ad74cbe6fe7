"""`smtpy queue …`: what is waiting to be delivered, and what to do with it."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

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
    when,
)

Progress = Callable[[int], None]

app = typer.Typer(
    help="List and act on queued mail (works while the daemon runs).", no_args_is_help=True
)

IdsArg = Annotated[
    list[str] | None, typer.Argument(help="Queue ids (see `smtpy queue list`).", show_default=False)
]
AllOpt = Annotated[
    bool, typer.Option("--all", help="Every queued message (asks first unless --yes).")
]
StateOpt = Annotated[
    str | None,
    typer.Option("--status", help="Only messages in this state: active, deferred or held."),
]


def age(seconds: float) -> str:
    """`90` → `1m`: the largest whole unit."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


@app.command("list")
def list_(
    ctx: typer.Context,
    status: StateOpt = None,
    domain: Annotated[
        str | None, typer.Option("--domain", "-d", help="Only mail to this destination domain.")
    ] = None,
    older_than: Annotated[
        str | None, typer.Option("--older-than", help="Only mail older than this, e.g. 1h.")
    ] = None,
    json: JsonOption = False,
    org: OrgOption = None,
) -> None:
    """List queued messages, oldest first."""
    import time

    from smtpy.admin.queue import list_messages, parse_age

    min_age = parse_age(older_than) if older_than else None
    with state(ctx).database() as db:
        messages = list_messages(
            db=db, org=acting_org(db, org), state=status, domain=domain, older_than=min_age
        )
    if json:
        print_json(messages)
        return
    if not messages:
        filtered = status is not None or domain is not None or older_than is not None
        nothing(
            "no queued message matches these filters; see `smtpy queue list` without them"
            if filtered
            else "the queue is empty: every accepted message has been delivered or bounced"
        )
        return
    now = time.time()
    print_table(
        None,
        [
            "id",
            "state",
            "age",
            "sender",
            "recipients",
            "size",
            "attempts",
            "next attempt",
            "last error",
        ],
        [
            (
                m.queue_id,
                m.state,
                age(now - m.received_at),
                m.sender or "<>",
                "\n".join(d.recipient for d in m.recipients),
                m.size,
                m.attempts,
                "-" if m.state == "held" or m.next_attempt_at is None else when(m.next_attempt_at),
                (m.last_error or "")[:80],
            )
            for m in messages
        ],
        whole=["id"],
    )


@app.command("show")
def show(
    ctx: typer.Context,
    queue_id: Annotated[str, typer.Argument(help="Queue id.", show_default=False)],
    raw: Annotated[bool, typer.Option("--raw", help="Print the whole message as stored.")] = False,
    json: JsonOption = False,
    org: OrgOption = None,
) -> None:
    """Show a message: envelope, every attempt with the remote's exact reply, and its headers."""
    from smtpy.admin.queue import show_message

    with state(ctx).database() as db:
        message = show_message(db=db, org=acting_org(db, org), queue_id=queue_id)
    if raw:
        sys.stdout.buffer.write(message.data)
        return
    if json:
        print_json(message)
        return
    print_table(
        f"message {message.queue_id}",
        ["field", "value"],
        [
            ("sender", message.sender or "<>"),
            ("received", when(message.received_at)),
            ("client", message.client_ip or "-"),
            ("size", message.size),
            ("state", message.state),
        ],
    )
    print_table(
        "deliveries",
        ["recipient", "for alias", "state", "attempts", "next attempt", "last error"],
        [
            (
                d.recipient,
                d.original_recipient,
                d.state,
                d.attempts,
                when(d.next_attempt_at),
                d.last_error or "",
            )
            for d in message.recipients
        ],
    )
    if message.attempts:
        print_table(
            "attempts",
            ["when", "recipient", "remote", "reply", "result"],
            [
                (
                    when(a.at),
                    a.recipient,
                    a.remote_host or "-",
                    f"{a.code or ''} {a.reply}".strip(),
                    a.result,
                )
                for a in message.attempts
            ],
        )
    sys.stdout.write(message.headers)


def _select(
    ctx: typer.Context,
    org: str | None,
    ids: list[str] | None,
    all_: bool,
    status: str | None,
    yes: bool,
    verb: str,
) -> list[str]:
    from smtpy.admin.queue import all_ids
    from smtpy.errors import InvalidInput

    if all_ == bool(ids):
        raise InvalidInput(f"give queue ids to {verb}, or --all (not both)")
    if ids:
        return ids
    with state(ctx).database() as db:
        selected = all_ids(db=db, org=acting_org(db, org), state=status)
    if selected:
        confirm(f"{verb.capitalize()} {plural(len(selected), 'message')}?", yes)
    return selected


@contextmanager
def _progress(total: int, label: str) -> Iterator[Progress | None]:
    """A progress bar on stderr when it is a terminal and there is more than one message."""
    if total < 2 or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn
    from rich.progress import Progress as Bar

    with Bar(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=total)
        yield lambda count: bar.advance(task, count)


def _bulk(
    ctx: typer.Context,
    operation: Callable[..., int],
    org: str | None,
    ids: list[str] | None,
    all_: bool,
    status: str | None,
    yes: bool,
    verb: str,
    **options: Any,
) -> int:
    """Select the messages, confirm a bulk change, apply it with a progress bar."""
    selected = _select(ctx, org, ids, all_, status, yes, verb)
    if not selected:
        return 0
    with state(ctx).database() as db, _progress(len(selected), f"{verb}…") as progress:
        # With --all, a message delivered since it was listed is simply skipped.
        return operation(
            db=db,
            org=acting_org(db, org),
            queue_ids=selected,
            missing_ok=all_,
            progress=progress,
            **options,
        )


@app.command("retry")
def retry(
    ctx: typer.Context,
    ids: IdsArg = None,
    all_: AllOpt = False,
    status: StateOpt = None,
    yes: YesOption = False,
    org: OrgOption = None,
) -> None:
    """Try these messages again now (a running daemon picks them up within a second)."""
    from smtpy.admin.queue import retry as retry_now

    count = _bulk(ctx, retry_now, org, ids, all_, status, yes, "retry")
    done(f"{plural(count, 'delivery', 'deliveries')} due now")


@app.command("hold")
def hold(
    ctx: typer.Context,
    ids: IdsArg = None,
    all_: AllOpt = False,
    status: StateOpt = None,
    yes: YesOption = False,
    org: OrgOption = None,
) -> None:
    """Keep messages in the queue without delivering them until released."""
    from smtpy.admin.queue import hold as hold_messages

    count = _bulk(ctx, hold_messages, org, ids, all_, status, yes, "hold")
    done(f"{plural(count, 'delivery', 'deliveries')} held")


@app.command("release")
def release(
    ctx: typer.Context,
    ids: IdsArg = None,
    all_: AllOpt = False,
    yes: YesOption = False,
    org: OrgOption = None,
) -> None:
    """Release held messages; they are delivered at once."""
    from smtpy.admin.queue import release as release_messages

    count = _bulk(ctx, release_messages, org, ids, all_, "held" if all_ else None, yes, "release")
    done(f"{plural(count, 'delivery', 'deliveries')} released")


@app.command("delete")
def delete(
    ctx: typer.Context,
    ids: IdsArg = None,
    all_: AllOpt = False,
    status: StateOpt = None,
    yes: YesOption = False,
    org: OrgOption = None,
) -> None:
    """Delete messages from the queue without telling the sender."""
    from smtpy.admin.queue import delete as delete_messages

    count = _bulk(ctx, delete_messages, org, ids, all_, status, yes, "delete")
    done(f"{plural(count, 'message')} deleted")


@app.command("bounce")
def bounce(
    ctx: typer.Context,
    ids: IdsArg = None,
    all_: AllOpt = False,
    status: StateOpt = None,
    yes: YesOption = False,
    org: OrgOption = None,
) -> None:
    """Give up on messages now and send their senders a delivery status notification."""
    from smtpy.admin.queue import bounce as bounce_messages

    hostname = state(ctx).settings.hostname
    count = _bulk(ctx, bounce_messages, org, ids, all_, status, yes, "bounce", hostname=hostname)
    done(f"{plural(count, 'message')} bounced")
