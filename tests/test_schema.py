"""The migrations build exactly the SQLModel tables; an old or empty schema is handled."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import drop_database, postgres_admin
from smtpy.errors import SchemaOutdated
from smtpy.store.db import SCHEMA_REVISION, Database
from smtpy.store.migrate import head_revision, sqlalchemy_url

POSTGRES_URL = os.environ.get("SMTPY_TEST_POSTGRES_URL", "")


def test_schema_revision_is_the_newest_migration() -> None:
    assert head_revision() == SCHEMA_REVISION


def test_migrated_schema_matches_the_models(store_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import create_engine, pool
    from sqlmodel import SQLModel

    import smtpy.store.schema  # noqa: F401 - registers the tables

    Database(store_url).close()  # migrate (SQLite) or check (PostgreSQL) as the CLI does
    engine = create_engine(sqlalchemy_url(store_url), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, SQLModel.metadata) == []
            tables = set(SQLModel.metadata.tables)
            assert {"domains", "aliases", "dkim_keys", "messages", "deliveries"} <= tables
    finally:
        engine.dispose()


def test_store_records_the_current_revision(store_url: str) -> None:
    with Database(store_url) as db:
        assert db.schema_revision() == SCHEMA_REVISION


def test_fresh_sqlite_store_is_created_and_migrated(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "smtpy.db"
    with Database(f"sqlite:///{path}") as db:
        assert db.schema_revision() == SCHEMA_REVISION
        assert db.scalar("SELECT count(*) FROM domains") == 0
        assert db.scalar("PRAGMA journal_mode") == "wal"
    assert path.is_file()


# -- PostgreSQL: never migrated behind the operator's back ----------------------------------


@pytest.fixture
def empty_postgres() -> Iterator[str]:
    """A PostgreSQL database with no tables at all."""
    if not POSTGRES_URL:
        pytest.skip("SMTPY_TEST_POSTGRES_URL is not set")
    name = f"smtpy_empty_{uuid.uuid4().hex[:12]}"
    postgres_admin(POSTGRES_URL, f"CREATE DATABASE {name}")
    yield f"{POSTGRES_URL.rpartition('/')[0]}/{name}"
    drop_database(POSTGRES_URL, name)


def smtpy(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMTPY_")}
    env.update({"SMTPY_DATABASE_URL": url, "SMTPY_HOSTNAME": "mx.forwarder.test"})
    return subprocess.run(
        [sys.executable, "-m", "smtpy", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_empty_postgres_is_refused_until_db_upgrade(empty_postgres: str) -> None:
    with pytest.raises(SchemaOutdated, match="run `smtpy db upgrade`"):
        Database(empty_postgres)

    refused = smtpy(empty_postgres, "alias", "list", "--json")
    assert refused.returncode == 2
    assert refused.stdout == ""
    assert refused.stderr.strip().splitlines() == [
        "smtpy: error: the PostgreSQL database has no smtpy schema yet: "
        "run `smtpy db upgrade` first"
    ]
    with Database(empty_postgres, check_schema=False) as db:
        assert db.schema_revision() is None  # refusing wrote nothing

    upgraded = smtpy(empty_postgres, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert "is up to date" in upgraded.stdout
    assert ":smtpy@" not in upgraded.stdout  # the password is masked
    with Database(empty_postgres) as db:
        assert db.schema_revision() == SCHEMA_REVISION

    listed = smtpy(empty_postgres, "alias", "list", "--json")
    assert (listed.returncode, listed.stdout.strip()) == (0, "[]")
    again = smtpy(empty_postgres, "db", "upgrade")  # idempotent
    assert again.returncode == 0, again.stderr


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
def test_outdated_postgres_schema_is_refused(store_url: str) -> None:
    with Database(store_url) as db:
        db.execute("UPDATE alembic_version SET version_num = '0000'")
    with pytest.raises(SchemaOutdated) as info:
        Database(store_url)
    assert str(info.value) == (
        f"the PostgreSQL schema is at revision 0000, this smtpy needs {SCHEMA_REVISION}: "
        "run `smtpy db upgrade`"
    )
    refused = smtpy(store_url, "domain", "list")
    assert refused.returncode == 2
    assert "Traceback" not in refused.stderr
    assert "run `smtpy db upgrade`" in refused.stderr


def test_unreachable_postgres_is_a_one_line_store_error() -> None:
    result = smtpy("postgresql://smtpy:secret-pw@127.0.0.1:1/smtpy", "domain", "list")
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("smtpy: error: cannot connect to PostgreSQL")
    assert "secret-pw" not in result.stderr
