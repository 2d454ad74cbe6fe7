"""Shared fixtures: a store on SQLite and on PostgreSQL, a DNS server, the real CLI.

PostgreSQL tests run when SMTPY_TEST_POSTGRES_URL names a database whose role
may create databases (`scripts/test.sh` starts the server and sets it). The
schema is migrated once into a template database per test worker; each test
gets a fresh copy made with `CREATE DATABASE … TEMPLATE` in milliseconds. SQLite
does the same with a file: migrated once per worker, copied for each test (running
the eleven migrations took about a second of CPU per test).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from dnsserver import DNSServer
from forkserver import fork_server

POSTGRES_URL = os.environ.get("SMTPY_TEST_POSTGRES_URL", "")
BACKENDS = ["sqlite", "postgresql"]


def postgres_admin(url: str, sql: str) -> None:
    """Run one statement outside a transaction (CREATE/DROP DATABASE)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


def drop_database(url: str, name: str) -> None:
    """DROP DATABASE, also when an autovacuum worker is in it for a moment.

    FORCE ends the test's own sessions, but only a superuser may end
    autovacuum's: that refusal is retried for a few seconds.
    """
    import psycopg

    for _attempt in range(25):
        try:
            postgres_admin(url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            return
        except (psycopg.errors.InsufficientPrivilege, psycopg.errors.ObjectInUse):
            time.sleep(0.2)
    postgres_admin(url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _with_db(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture(scope="session")
def postgres_template(worker_id: str) -> Iterator[str]:
    if not POSTGRES_URL:
        pytest.skip("SMTPY_TEST_POSTGRES_URL is not set (scripts/test.sh sets it)")
    from smtpy.store.migrate import upgrade

    name = f"smtpy_tpl_{worker_id}_{os.getpid()}"
    postgres_admin(POSTGRES_URL, f"DROP DATABASE IF EXISTS {name}")
    postgres_admin(POSTGRES_URL, f"CREATE DATABASE {name}")
    upgrade(_with_db(POSTGRES_URL, name))
    yield name
    drop_database(POSTGRES_URL, name)


@pytest.fixture(scope="session")
def worker_id(request: pytest.FixtureRequest) -> str:
    return str(getattr(request.config, "workerinput", {}).get("workerid", "main"))


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty SQLite store, migrated once for this worker."""
    from smtpy.store.db import Database

    path = tmp_path_factory.mktemp("template") / "smtpy.db"
    Database(f"sqlite:///{path}").close()
    return path


def copy_sqlite(source: Path, target: Path) -> None:
    """A consistent copy of a SQLite store (the backup API: WAL content included)."""
    import sqlite3

    with (
        contextlib.closing(sqlite3.connect(source)) as src,
        contextlib.closing(sqlite3.connect(target)) as dst,
    ):
        src.backup(dst)


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of an empty store, migrated, on each backend."""
    if request.param == "sqlite":
        copy_sqlite(request.getfixturevalue("sqlite_template"), tmp_path / "smtpy.db")
        yield f"sqlite:///{tmp_path / 'smtpy.db'}"
        return
    template = request.getfixturevalue("postgres_template")
    name = f"smtpy_t_{uuid.uuid4().hex[:12]}"
    postgres_admin(POSTGRES_URL, f"CREATE DATABASE {name} TEMPLATE {template}")
    yield _with_db(POSTGRES_URL, name)
    drop_database(POSTGRES_URL, name)


@pytest.fixture
def db(store_url: str) -> Iterator[object]:
    from smtpy.store.db import Database

    database = Database(store_url)
    yield database
    database.close()


@pytest.fixture(scope="session")
def dns_session() -> Iterator[DNSServer]:
    with DNSServer() as server:
        yield server


@pytest.fixture
def dns_server(dns_session: DNSServer) -> Iterator[DNSServer]:
    """The loopback DNS server, emptied for each test."""
    dns_session.clear()
    yield dns_session
    dns_session.clear()


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


class Cli:
    """Runs `python -m smtpy ARGS` in a process of its own, as a user would.

    The process is forked from a warm interpreter (`forkserver`) that imported
    smtpy once, instead of starting Python anew for each command.
    """

    def __init__(self, env: dict[str, str], *, fresh: bool = False) -> None:
        self.env = env
        # A new interpreter for each command instead: for what runs at its start-up
        # (sitecustomize, PYTHON* variables), which a fork of the warm one skips.
        self.fresh = fresh

    def __call__(self, *args: str, input: str | None = None) -> Result:
        if self.fresh:
            proc = subprocess.run(
                [sys.executable, "-m", "smtpy", *args],
                env=self.env,
                input=input,
                capture_output=True,
                text=True,
                timeout=60,
            )
            return Result(proc.returncode, proc.stdout, proc.stderr)
        with (
            tempfile.TemporaryFile() as stdin,
            tempfile.TemporaryFile() as stdout,
            tempfile.TemporaryFile() as stderr,
        ):
            if input is not None:
                stdin.write(input.encode())
                stdin.seek(0)
            code = fork_server().run(
                list(args), env=self.env, stdin=stdin, stdout=stdout, stderr=stderr, timeout=60
            )
            return Result(code, _text(stdout), _text(stderr))


def _text(file: IO[bytes]) -> str:
    """What the command wrote, decoded as `subprocess.run(text=True)` does."""
    file.seek(0)
    return file.read().decode().replace("\r\n", "\n").replace("\r", "\n")


@pytest.fixture
def cli_env(store_url: str, tmp_path: Path, dns_server: DNSServer) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMTPY_")}
    env.update(
        {
            "SMTPY_DATABASE_URL": store_url,
            "SMTPY_HOSTNAME": "mx.forwarder.test",
            "SMTPY_STATE_DIR": str(tmp_path / "state"),
            "SMTPY_DNS_NAMESERVERS": dns_server.nameserver,
            "SMTPY_DNS_TIMEOUT": "2",
            # One serving process unless a test asks for more (the default is one per core).
            "SMTPY_PROCESSES": "1",
            "HOME": str(tmp_path),
            "COLUMNS": "200",
        }
    )
    return env


@pytest.fixture
def cli(cli_env: dict[str, str]) -> Cli:
    return Cli(cli_env)
