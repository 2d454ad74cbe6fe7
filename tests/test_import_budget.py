"""What the fast paths import: `smtpy alias list`, `smtpy --help`, and `smtpy serve`.

Each library below was kept out of a path on purpose, for a measured reason
(bench/bench_cli.py for start-up time, bench/bench_forward.py for the memory of
every serving process). A change that pulls one back in fails here, instead of
silently costing every command or every process.

Python itself says what it imports: `-X importtime` (PYTHONPROFILEIMPORTTIME=1
for the daemon, whose forked processes inherit it) prints one line per module
actually imported, in every process, however deep or late the import.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Cli
from dnsserver import DNSServer
from mailpeers import DOMAIN, SENDER, Forwarder, forwarding_world, make_message, send

# Not needed to read or edit the store from the shell: SQLAlchemy and Alembic
# (~0.75 s) only for migrations, the mail libraries only in the daemon.
KEPT_OUT_OF_THE_CLI = {
    "sqlalchemy",
    "sqlmodel",
    "alembic",
    "aiosmtpd",
    "aiosmtplib",
    "dkim",
    "nacl",
    "cryptography",
    "structlog",
    "dns",
    "psycopg",
    "prometheus_client",
    "spf",
    "publicsuffixlist",
}
# Not needed by a serving process on SQLite without a metrics listener: each is
# megabytes of private memory in every process (dkimpy and nacl are only the
# fallback verifier; migrations run in a child process).
KEPT_OUT_OF_THE_DAEMON = {
    "sqlalchemy",
    "sqlmodel",
    "alembic",
    "rich",
    "pygments",
    "dkim",
    "nacl",
    "prometheus_client",
    "psycopg",
    "spf",
    "authheaders",
}


def imported(text: str) -> set[str]:
    """Top-level names loaded, from `-X importtime` lines ("import time: self | cumulative | name").

    A failed or blocked import prints its line too (smtpy.log keeps rich out of
    structlog's way by blocking it), so a package counts as loaded only when one
    of its modules was: a real import of any of these packages loads some.
    """
    modules = set()
    for line in text.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            name = line.rsplit("|", 1)[1].strip()
            if name and name != "imported package":
                modules.add(name)
    loaded = set()
    for name in modules:
        top = name.split(".")[0]
        if name != top or not _is_package(top):
            loaded.add(top)
    return loaded


def _is_package(name: str) -> bool:
    spec = importlib.util.find_spec(name) if name.isidentifier() else None
    return spec is not None and spec.submodule_search_locations is not None


def importtime(
    env: dict[str, str], *args: str
) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "smtpy", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc, imported(proc.stderr)


def test_alias_list_loads_no_heavy_library(cli: Cli, cli_env: dict[str, str]) -> None:
    assert cli("domain", "add", "example.org").code == 0
    assert cli("alias", "add", "alice@example.org", "alice@dest.example").code == 0
    proc, names = importtime(cli_env, "alias", "list", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [a["address"] for a in json.loads(proc.stdout)] == ["alice@example.org"]
    assert {"smtpy", "typer"} <= names  # the measurement itself works
    store_driver = {"psycopg"} if cli_env["SMTPY_DATABASE_URL"].startswith("postgresql") else set()
    heavy = KEPT_OUT_OF_THE_CLI - store_driver
    assert not names & heavy, sorted(names & heavy)


def test_help_loads_no_heavy_library(cli_env: dict[str, str]) -> None:
    proc, names = importtime(cli_env, "--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "alias" in proc.stdout
    assert "typer" in names
    assert not names & KEPT_OUT_OF_THE_CLI, sorted(names & KEPT_OUT_OF_THE_CLI)


@pytest.fixture
def forwarder(
    cli: Cli, cli_env: dict[str, str], dns_server: DNSServer, tmp_path: Path
) -> Iterator[Forwarder]:
    with forwarding_world(cli, cli_env, dns_server, tmp_path) as world:
        world.alias(f"budget@{DOMAIN}", "sink@dest1.test")
        yield world


@pytest.mark.slow
def test_serving_processes_load_no_library_they_do_not_need(
    forwarder: Forwarder, store_url: str
) -> None:
    if not store_url.startswith("sqlite"):
        pytest.skip("the budget is for the embedded default: PostgreSQL needs psycopg")
    daemon = forwarder.serve(processes="2")
    daemon.fresh = True  # its own imports, not those of a warm interpreter
    daemon.env["PYTHONPROFILEIMPORTTIME"] = "1"
    daemon.start()
    address = f"budget@{DOMAIN}"
    data = make_message(message_id="<budget@sender.test>", to=address)
    assert send(daemon.port, SENDER, [address], data) == {}
    forwarder.peers.wait_for(lambda got: got, timeout=30)  # received, signed, sealed, sent
    assert daemon.stop() == 0
    names = imported(daemon.log_path.read_text(errors="replace"))
    assert {"aiosmtpd", "aiosmtplib", "cryptography"} <= names  # it did serve and sign
    assert not names & KEPT_OUT_OF_THE_DAEMON, sorted(names & KEPT_OUT_OF_THE_DAEMON)
