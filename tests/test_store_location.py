"""The default store is chosen once and kept (issue 19, point 1).

The rule is pure (`smtpy.location.choose`); the rest runs the real `smtpy`
program with HOME and the system directory in a temporary directory, as root
would meet them before and after the Debian package creates /var/lib/smtpy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import smtpy.config
from smtpy.config import load
from smtpy.errors import ConfigError
from smtpy.location import Candidate, choose

SYSTEM = Path("/var/lib/smtpy")
USER = Path("/root/.local/share/smtpy")


def test_without_a_store_the_writable_system_directory_is_preferred() -> None:
    chosen = choose([Candidate(SYSTEM, False, True), Candidate(USER, False, True)])
    assert chosen.path == SYSTEM


def test_without_a_store_or_system_directory_the_user_directory_is_chosen() -> None:
    chosen = choose([Candidate(SYSTEM, False, False), Candidate(USER, False, False)])
    assert chosen.path == USER
    assert "/var/lib/smtpy is not a writable directory" in chosen.reason


def test_a_store_in_the_user_directory_is_kept_once_the_system_directory_exists() -> None:
    chosen = choose([Candidate(SYSTEM, False, True), Candidate(USER, True, True)])
    assert chosen.path == USER
    assert chosen.reason == f"the store found in {USER} (none in {SYSTEM})"


def test_a_store_in_the_system_directory_is_used_even_if_it_is_not_writable() -> None:
    chosen = choose([Candidate(SYSTEM, True, False), Candidate(USER, False, True)])
    assert chosen.path == SYSTEM


def test_two_stores_are_an_error_naming_both() -> None:
    with pytest.raises(ConfigError) as error:
        choose([Candidate(SYSTEM, True, True), Candidate(USER, True, True)])
    assert str(SYSTEM / "smtpy.db") in str(error.value)
    assert str(USER / "smtpy.db") in str(error.value)
    assert "SMTPY_STATE_DIR" in str(error.value)


def test_two_stores_do_not_matter_when_the_database_url_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    system, home = tmp_path / "var-lib-smtpy", tmp_path / "home"
    for directory in (system, home / ".local/share/smtpy"):
        directory.mkdir(parents=True)
        (directory / "smtpy.db").write_bytes(b"")
    monkeypatch.setattr(smtpy.config, "SYSTEM_STATE_DIR", system)
    url = f"sqlite:///{tmp_path / 'other.db'}"
    loaded = load(environ={"HOME": str(home), "SMTPY_DATABASE_URL": url})
    assert loaded.settings.database_url == url
    with pytest.raises(ConfigError, match="two smtpy stores exist"):
        load(environ={"HOME": str(home)})


@pytest.fixture
def world(cli: Any, tmp_path: Path) -> Any:
    """The real program with no store configured: HOME and the system directory in tmp_path."""
    for name in ("SMTPY_DATABASE_URL", "SMTPY_STATE_DIR"):
        cli.env.pop(name)
    system = tmp_path / "var-lib-smtpy"
    # The real /var/lib/smtpy is the Debian package's (packaging/test-deb.sh needs it
    # absent): the program's system directory points into tmp_path instead.
    site = tmp_path / "site"
    site.mkdir()
    cli.env["PYTHONPATH"] = str(site)
    cli.fresh = True  # sitecustomize runs when an interpreter starts
    (site / "sitecustomize.py").write_text(
        "import pathlib, smtpy.config\n"
        f"smtpy.config.SYSTEM_STATE_DIR = pathlib.Path({str(system)!r})\n"
    )
    cli.system = system
    cli.home_store = tmp_path / ".local/share/smtpy/smtpy.db"
    return cli


def test_installing_the_package_later_keeps_the_first_store(world: Any) -> None:
    added = world("domain", "add", "example.org")
    assert added.code == 0, added.stderr
    assert world.home_store.is_file()
    world.system.mkdir()  # what the Debian package does
    listed = world("domain", "list", "--json")
    assert listed.code == 0, listed.stderr
    assert [d["ascii_name"] for d in json.loads(listed.stdout)] == ["example.org"]
    assert not (world.system / "smtpy.db").exists()
    shown = world("config", "show")
    assert f"store: sqlite:///{world.home_store} (default: the store found in" in shown.stdout
    status = world("status", "--json")
    assert json.loads(status.stdout)["store"] == f"sqlite:///{world.home_store}"


def test_a_store_in_each_place_is_named_in_an_error(world: Any) -> None:
    assert world("domain", "add", "example.org").code == 0
    world.system.mkdir()
    (world.system / "smtpy.db").write_bytes(world.home_store.read_bytes())
    listed = world("domain", "list")
    assert listed.code == 2
    assert listed.stdout == ""
    [line] = listed.stderr.strip().splitlines()
    assert str(world.system / "smtpy.db") in line
    assert str(world.home_store) in line
