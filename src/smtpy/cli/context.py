"""What every command shares: the settings (loaded once, on first use) and the store.

Which commands may create a store is decided here, once: those that make sense
on an empty store (`CREATING_COMMANDS`). Every other command needs an existing
one and exits 2 naming the missing store, creating nothing; `smtpy alias add`
or `smtpy key generate` would only fail on a new store anyway, since their
domain cannot be in it.
"""

from __future__ import annotations

import os
import sys
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import click
import typer

from smtpy.accounts.actor import Actor

if TYPE_CHECKING:
    from smtpy.config import LoadedSettings, Settings
    from smtpy.store.db import Database

CREATING_COMMANDS = frozenset({"serve", "db upgrade", "domain add"})


def command_name(ctx: click.Context) -> str:
    """The command as typed after `smtpy`: "domain add", "serve"."""
    names: list[str] = []
    while ctx.parent is not None:
        names.append(ctx.info_name or "")
        ctx = ctx.parent
    return " ".join(reversed(names))


class State:
    def __init__(self, config_file: Path | None) -> None:
        self.config_file = config_file
        self.print_warnings = True  # commands that report them their own way turn it off

    @cached_property
    def loaded(self) -> LoadedSettings:
        from smtpy.config import load

        loaded = load(self.config_file)
        if self.print_warnings:
            for warning in loaded.warnings:  # once per command: the settings load once
                print(f"smtpy: warning: {warning}", file=sys.stderr)
        return loaded

    @property
    def settings(self) -> Settings:
        return self.loaded.settings

    def database(self) -> Database:
        """The store; created only for the commands in `CREATING_COMMANDS`."""
        from smtpy.store.db import Database

        current = click.get_current_context(silent=True)
        create = current is not None and command_name(current) in CREATING_COMMANDS
        return Database(self.settings.database_url, create=create)


def cli_actor() -> Actor:
    """Who acts at the shell, for the audit log: the Unix user running the command."""
    import getpass

    try:
        name = getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (a bare container)
        name = f"uid {os.getuid()}"
    return Actor(via="cli", name=name)


def state(ctx: typer.Context) -> State:
    obj = ctx.find_root().obj
    assert isinstance(obj, State)
    return obj
