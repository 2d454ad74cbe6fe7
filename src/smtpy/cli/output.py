"""Printing results: a Rich table on a terminal, JSON with --json, one line for actions."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2) + "\n")


def print_table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False, header_style="bold")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*("" if cell is None else str(cell) for cell in row))
    Console().print(table)


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
