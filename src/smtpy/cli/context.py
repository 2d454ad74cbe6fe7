"""What every command shares: the settings (loaded once, on first use) and the store."""

from __future__ import annotations

import sys
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from smtpy.config import LoadedSettings, Settings
    from smtpy.store.db import Database


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
        from smtpy.store.db import Database

        return Database(self.settings.database_url)


def state(ctx: typer.Context) -> State:
    obj = ctx.find_root().obj
    assert isinstance(obj, State)
    return obj
