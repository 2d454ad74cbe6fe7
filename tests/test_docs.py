"""Documentation is a test: the man pages match the real CLI and settings."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from smtpy.cli import manpage
from smtpy.config import Settings

ROOT = Path(__file__).resolve().parent.parent
MAN = ROOT / "man"


@pytest.mark.parametrize("name", sorted(manpage.PAGES))
def test_committed_man_page_is_current(name: str) -> None:
    committed = (MAN / name).read_text(encoding="utf-8")
    assert committed == manpage.PAGES[name](), (
        f"man/{name} is stale: run `python -m smtpy.cli.manpage man` and commit the result"
    )


def test_every_command_is_in_the_manual() -> None:
    import click
    from typer.main import get_command

    from smtpy.cli import app

    page = (MAN / "smtpy.1").read_text(encoding="utf-8")
    root = get_command(app)
    assert isinstance(root, click.Group)
    commands = manpage._commands(root, click.Context(root), [])
    assert {" ".join(path) for path, _ in commands} >= {
        "serve",
        "domain add",
        "domain records",
        "domain verify",
        "alias add",
        "alias list",
        "key generate",
        "key rotate",
        "config show",
        "config check",
        "db upgrade",
    }
    for path, command in commands:
        assert f".SS {manpage._escape(' '.join(path))}\n" in page
        for param in command.params:
            if isinstance(param, click.Option) and param.name != "help":
                assert manpage._escape(param.opts[0]) in page


def test_every_setting_is_in_the_manual_and_readme() -> None:
    page = (MAN / "smtpy.toml.5").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in Settings.model_fields:
        assert f"SMTPY_{manpage._escape(name.upper())}" in page
    for fixed in (
        "DATABASE_URL",
        "HOSTNAME",
        "LISTEN",
        "DNS_NAMESERVERS",
        "SRS_SECRET",
        "RETRY_SCHEDULE",
        "MAX_MESSAGE_SIZE",
        "RELAY_HOST",
        "DELIVERY_PORT",
    ):
        assert f"SMTPY_{fixed}" in readme


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
@pytest.mark.parametrize("name", sorted(manpage.PAGES))
def test_man_page_renders_without_warnings(name: str) -> None:
    result = subprocess.run(
        ["groff", "-ww", "-man", "-Tutf8", str(MAN / name)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stderr == ""
    assert "smtpy" in result.stdout


def test_example_config_is_valid_and_complete() -> None:
    from smtpy.config import load

    example = ROOT / "examples" / "smtpy.toml"
    loaded = load(example, environ={"HOME": "/nonexistent"})
    assert loaded.settings.hostname == "mx.example.net"
    text = example.read_text(encoding="utf-8")
    for name in Settings.model_fields:
        if name != "state_dir":
            assert f"{name} =" in text, f"examples/smtpy.toml does not mention {name}"
