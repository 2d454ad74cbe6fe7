"""Nothing creates a store by accident (issue 19, point 2).

Only `smtpy serve`, `smtpy db upgrade` and `smtpy domain add` create a store.
Every other command, pointed at a SQLite store that does not exist, exits 2
with one line that names the path and what to run, and creates nothing: no
directory, no file. Runs the real program.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import Cli
from dnsserver import DNSServer

pytestmark = pytest.mark.timeout(300)

READING = [
    ("domain", "list"),
    ("domain", "show", "example.org"),
    ("domain", "records", "example.org"),
    ("domain", "verify", "example.org"),
    ("domain", "policy", "example.org", "--dmarc-reject", "off"),
    ("domain", "remove", "example.org", "--yes"),
    ("alias", "list"),
    ("alias", "add", "a@example.org", "b@example.net"),
    ("alias", "remove", "a@example.org"),
    ("alias", "disable", "a@example.org"),
    ("alias", "import", "-", "--domain", "example.org"),
    ("key", "list"),
    ("key", "generate", "example.org"),
    ("queue", "list"),
    ("queue", "show", "0123456789ABCDEF"),
    ("queue", "retry", "--all", "--yes"),
    ("queue", "bounce", "--all", "--yes"),
    ("log",),
    ("stats",),
    ("status",),
    ("route", "explain", "a@example.org"),
    ("test", "a@example.org"),
]


@pytest.fixture
def missing(tmp_path: Path, dns_server: DNSServer) -> tuple[Cli, Path]:
    """The real program pointed at a store under a directory that does not exist."""
    path = tmp_path / "nonexistent" / "dir" / "smtpy.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMTPY_")}
    env.update(
        {
            "SMTPY_DATABASE_URL": f"sqlite:///{path}",
            "SMTPY_HOSTNAME": "mx.forwarder.test",
            "SMTPY_DNS_NAMESERVERS": dns_server.nameserver,
            "SMTPY_DNS_TIMEOUT": "1",
            "HOME": str(tmp_path / "home"),
        }
    )
    return Cli(env), path


@pytest.mark.parametrize("args", READING, ids=" ".join)
def test_a_command_on_a_missing_store_exits_2_and_creates_nothing(
    missing: tuple[Cli, Path], args: tuple[str, ...]
) -> None:
    cli, path = missing
    result = cli(*args, input="a@example.org b@example.net\n")
    assert result.code == 2, result.stdout + result.stderr
    assert result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert line == (
        f"smtpy: error: no smtpy store at {path}: check SMTPY_DATABASE_URL "
        "(`smtpy config show`), or create it with `smtpy db upgrade` or "
        "`smtpy domain add DOMAIN`"
    )
    assert not path.parent.parent.exists()


def test_an_empty_file_is_no_store_and_stays_empty(missing: tuple[Cli, Path]) -> None:
    cli, path = missing
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")
    result = cli("alias", "list")
    assert result.code == 2
    assert f"{path} holds no smtpy store" in result.stderr
    assert path.stat().st_size == 0


@pytest.mark.parametrize(
    "args", [("domain", "add", "example.org"), ("db", "upgrade")], ids=" ".join
)
def test_the_creating_commands_create_the_store(
    missing: tuple[Cli, Path], args: tuple[str, ...]
) -> None:
    cli, path = missing
    result = cli(*args)
    assert result.code == 0, result.stderr
    assert path.is_file()
    listed = cli("domain", "list", "--json")
    assert listed.code == 0, listed.stderr
    assert listed.stdout.count('"ascii_name"') == (1 if args[0] == "domain" else 0)
