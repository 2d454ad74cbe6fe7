"""Printing results: a Rich table on a terminal, JSON with --json, one line for actions."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from smtpy.store.db import Database

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
OrgOption = Annotated[
    str | None,
    typer.Option(
        "--org",
        help="Act in the organization of this name instead of the default one.",
        show_default=False,
    ),
]
YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]


def _plain(data: Any) -> Any:
    """A service's result (pydantic models, lists of them) as JSON-ready data."""
    if hasattr(data, "model_dump"):
        return data.model_dump(mode="json")
    if isinstance(data, list | tuple):
        return [_plain(item) for item in data]
    return data


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(_plain(data), ensure_ascii=False, indent=2) + "\n")


def acting_org(db: Database, name: str | None) -> int:
    """The id of the organization a command acts in: `--org NAME`, else the default one."""
    from smtpy.admin.organizations import resolve_organization

    return resolve_organization(db=db, name=name).id


def print_table(
    title: str | None,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    whole: Sequence[str] = (),
) -> None:
    """A Rich table; the `whole` columns (ids people copy) never wrap: the others give way."""
    from rich.console import Console
    from rich.table import Table

    cells = [["" if cell is None else str(cell) for cell in row] for row in rows]
    table = Table(title=title, show_lines=False, header_style="bold")
    for index, column in enumerate(columns):
        if column in whole:
            width = max((len(line) for row in cells for line in row[index].splitlines()), default=0)
            table.add_column(column, no_wrap=True, overflow="ignore", min_width=width)
        else:
            table.add_column(column, overflow="fold")
    for row in cells:
        table.add_row(*row)
    Console().print(table)


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """`1 key`, `2 keys`, `0 aliases`."""
    if count == 1:
        return f"{count} {noun}"
    return f"{count} {plural_form or noun + 's'}"


def nothing(message: str) -> None:
    """What an empty listing prints on a terminal: one line saying so, and what to do."""
    sys.stdout.write(message + "\n")


def rfc3339(timestamp: float | None) -> str:
    """`2026-12-03T08:21:06Z`, or `-` for no time."""
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def yes_no(value: bool) -> str:
    return "yes" if value else "no"


def done(message: str) -> None:
    """A one-line confirmation of an action, on stdout."""
    sys.stdout.write(message + "\n")


def when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def confirm(question: str, yes: bool) -> None:
    """Ask before a destructive action; abort with exit 1 on no, exit 2 without a terminal."""
    if yes:
        return
    if not sys.stdin.isatty():
        from smtpy.errors import InvalidInput

        raise InvalidInput(f"{question.rstrip('?')}: confirmation needed; add --yes")
    if not typer.confirm(question, default=False):
        raise typer.Exit(1)
