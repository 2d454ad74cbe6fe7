"""`smtpy doctor`: check the setup and say what to fix."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import typer

from smtpy.cli.context import state
from smtpy.cli.output import JsonOption, print_json

if TYPE_CHECKING:
    from smtpy.admin.doctor import Finding


def doctor(ctx: typer.Context, json: JsonOption = False) -> None:
    """Check settings, store, DNS resolvers, listen ports, the TLS certificate and the
    hostname's forward and reverse DNS; say what to do about each problem. Exits 1 on a failure."""
    from smtpy.admin.doctor import Finding, run_checks
    from smtpy.errors import ConfigError

    try:
        findings = run_checks(state(ctx).settings)
    except ConfigError as exc:
        findings = [Finding("config", "fail", str(exc), "fix the setting; see `smtpy config show`")]
    failed = any(f.status == "fail" for f in findings)
    if json:
        print_json({"ok": not failed, "findings": [f.public() for f in findings]})
    else:
        _print(findings)
    if failed:
        raise typer.Exit(1)


def _print(findings: Sequence[Finding]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    marks = {"ok": "[green]ok[/green]", "warn": "[yellow]warn[/yellow]", "fail": "[red]FAIL[/red]"}
    table = Table(header_style="bold")
    for column in ("", "check", "finding", "what to do"):
        table.add_column(column, overflow="fold")
    for finding in findings:
        table.add_row(
            marks[finding.status], finding.check, escape(finding.message), escape(finding.fix or "")
        )
    Console().print(table)
