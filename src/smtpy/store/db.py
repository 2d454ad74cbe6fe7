"""One database connection, the same on SQLite and PostgreSQL.

Queries are plain SQL with `:name` parameters; this module adapts them to the
driver (sqlite3 takes them as they are, psycopg wants `%(name)s`). Rows come
back as dicts. SQLite runs in WAL mode with `synchronous=FULL`, so a commit
that returned is on disk: the queue answers 250 only after one.

A `Database` is not shared between threads: the daemon gives its writer thread
and each worker thread their own.

Only what may start from nothing creates a store (`create=True`: the daemon,
`smtpy db upgrade`, `smtpy domain add`). Opened with `create=False`, a SQLite
file that does not exist raises `StoreMissing` and nothing is made: no
directory, no file (a mistyped path must not become a new, empty store).
"""

from __future__ import annotations

import contextlib
import errno
import re
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from smtpy.errors import (
    Conflict,
    NotFound,
    SchemaOutdated,
    StorageFull,
    StoreError,
    StoreMissing,
)

# The newest migration. A test checks it against the migration scripts, so the
# start-up check needs no Alembic import.
SCHEMA_REVISION = "0014"

Row = dict[str, Any]
Params = Mapping[str, Any]


def in_list(prefix: str, values: Iterable[object]) -> tuple[str, dict[str, Any]]:
    """The placeholders of an `IN (…)` list of `values` (`:p0, :p1, …`) and their
    parameters: values are always bound, never written into the SQL."""
    params = {f"{prefix}{n}": value for n, value in enumerate(values)}
    return ", ".join(f":{name}" for name in params), params


_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


class _Cursor(Protocol):
    rowcount: int

    def execute(self, sql: Any, params: Any = ...) -> Any: ...
    def executemany(self, sql: Any, params: Any) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def fetchone(self) -> Any: ...


def _sqlite_row(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> Row:
    return {column[0]: value for column, value in zip(cursor.description, row, strict=True)}


def _is_violation(exc: BaseException, sqlite_text: str, sqlstate: str) -> bool:
    """A constraint violation of one kind: SQLite names it in its message, PostgreSQL by SQLSTATE."""
    if isinstance(exc, sqlite3.IntegrityError):
        return str(exc).startswith(f"{sqlite_text} constraint failed")
    return getattr(exc, "sqlstate", None) == sqlstate


def sqlite_path(url: str) -> Path:
    """The file of a `sqlite:///PATH` URL."""
    return Path(url.removeprefix("sqlite:///"))


def missing_store_message(path: Path, *, empty: bool = False) -> str:
    what = f"{path} holds no smtpy store" if empty else f"no smtpy store at {path}"
    return (
        f"{what}: check SMTPY_DATABASE_URL (`smtpy config show`), or create it with "
        "`smtpy db upgrade` or `smtpy domain add DOMAIN`"
    )


def is_storage_full(exc: BaseException) -> bool:
    """SQLite's SQLITE_FULL, PostgreSQL's disk_full (53100), or a write that found no space."""
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    if isinstance(exc, OSError):
        return exc.errno == errno.ENOSPC
    return getattr(exc, "sqlstate", None) == "53100"


def dialect(url: str) -> str:
    """The store a database URL names: "sqlite" or "postgresql"."""
    return "sqlite" if url.startswith("sqlite:") else "postgresql"


class Database:
    """A connection to the store with small helpers for plain SQL."""

    def __init__(self, url: str, *, check_schema: bool = True, create: bool = True) -> None:
        self.url = url
        self.dialect = dialect(url)
        self.create = create
        self._sql_cache: dict[str, str] = {}
        self._depth = (
            0  # nesting of transaction(): 0 outside, 1 in the transaction, >1 in savepoints
        )
        self._conn: Any = self._open()
        if check_schema:
            try:
                self.ensure_schema()
            except BaseException:
                self.close()  # the caller never gets this object to close
                raise

    # -- connection -------------------------------------------------------

    def _open(self) -> Any:
        if self.dialect == "sqlite":
            path = sqlite_path(self.url)
            if not self.create and not path.is_file():
                raise StoreMissing(missing_store_message(path))
            if not self.create and path.stat().st_size == 0:
                raise StoreMissing(missing_store_message(path, empty=True))
            try:
                if self.create:
                    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                conn = sqlite3.connect(
                    # mode=rw: opening never creates the file, even if it vanished meanwhile
                    path if self.create else f"{path.resolve().as_uri()}?mode=rw",
                    isolation_level=None,
                    check_same_thread=False,
                    timeout=30,
                    uri=not self.create,
                )
                conn.row_factory = _sqlite_row
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("PRAGMA foreign_keys=ON")
                conn.execute("PRAGMA busy_timeout=30000")
            except (OSError, sqlite3.Error) as exc:
                raise StoreError(f"cannot open the SQLite store {path}: {exc}") from None
            return conn
        try:
            import psycopg
            from psycopg.rows import dict_row
        except ImportError:
            raise StoreError(
                "PostgreSQL support is not installed: pip install 'smtpy[postgres]'"
            ) from None
        dsn = re.sub(r"^postgres(?:ql)?(?:\+psycopg)?://", "postgresql://", self.url)
        try:
            return psycopg.connect(dsn, autocommit=True, row_factory=dict_row, connect_timeout=10)
        except psycopg.Error as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StoreError(f"cannot connect to PostgreSQL: {reason}") from None

    def close(self) -> None:
        # Closing a broken connection must not mask the first error.
        with contextlib.suppress(Exception):
            self._conn.close()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- SQL --------------------------------------------------------------

    def _sql(self, sql: str) -> str:
        if self.dialect == "sqlite":
            return sql
        cached = self._sql_cache.get(sql)
        if cached is None:
            cached = _NAMED.sub(r"%(\1)s", sql.replace("%", "%%"))
            self._sql_cache[sql] = cached
        return cached

    def _run(self, sql: str, params: Params | None) -> _Cursor:
        try:
            cursor: _Cursor = self._conn.cursor()
            cursor.execute(self._sql(sql), dict(params or {}))
        except Exception as exc:
            raise self._translate(exc) from None
        return cursor

    def _translate(self, exc: Exception) -> Exception:
        """The driver's error as an `smtpy.errors` type, decided here once for every caller.

        A unique violation becomes `Conflict` and a foreign-key violation
        `NotFound` (a row refers to one that is gone); services catch those
        types to say which object, never the driver's text. Anything else from
        the driver is a `StoreError`.
        """
        if isinstance(exc, sqlite3.Error) or type(exc).__module__.startswith("psycopg"):
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            if _is_violation(exc, "UNIQUE", "23505"):
                return Conflict(f"the store already holds this object ({detail})")
            if _is_violation(exc, "FOREIGN KEY", "23503"):
                return NotFound(f"the object it refers to is gone ({detail})")
            if is_storage_full(exc):
                return StorageFull(f"store full: {detail}")
            return StoreError(f"store error: {detail}")
        return exc

    def all(self, sql: str, params: Params | None = None) -> list[Row]:
        rows: list[Row] = self._run(sql, params).fetchall()
        return rows

    def one(self, sql: str, params: Params | None = None) -> Row | None:
        row: Row | None = self._run(sql, params).fetchone()
        return row

    def scalar(self, sql: str, params: Params | None = None) -> Any:
        row = self.one(sql, params)
        return None if row is None else next(iter(row.values()))

    def execute(self, sql: str, params: Params | None = None) -> int:
        """Run a statement; return the number of rows it touched."""
        return self._run(sql, params).rowcount

    def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        if not rows:
            return
        try:
            self._conn.cursor().executemany(self._sql(sql), [dict(row) for row in rows])
        except Exception as exc:
            raise self._translate(exc) from None

    def insert(self, sql: str, params: Params | None = None) -> int:
        """Run an INSERT … RETURNING id and return the id."""
        row = self.one(sql, params)
        if row is None:
            raise StoreError("insert returned no id")
        return int(row["id"])

    @contextmanager
    def transaction(self) -> Iterator[Database]:
        """Commit on success, roll back on error; SQLite takes the write lock at once.

        Inside another transaction this is a savepoint: an error undoes only
        the inner block, and the outer transaction goes on (group commit runs
        each caller's work this way, so one failure does not fail the others).
        """
        if self._depth:
            yield from self._savepoint()
            return
        try:
            self._conn.execute("BEGIN IMMEDIATE" if self.dialect == "sqlite" else "BEGIN")
        except Exception as exc:
            raise self._translate(exc) from None
        self._depth = 1
        try:
            yield self
        except BaseException:
            with contextlib.suppress(Exception):  # the original error matters more
                self._conn.execute("ROLLBACK")
            raise
        finally:
            self._depth = 0
        try:
            self._conn.execute("COMMIT")
        except Exception as exc:
            with contextlib.suppress(Exception):  # PostgreSQL leaves a failed COMMIT open
                self._conn.execute("ROLLBACK")
            raise self._translate(exc) from None

    def _savepoint(self) -> Iterator[Database]:
        name = f"smtpy_{self._depth}"
        try:
            self._conn.execute(f"SAVEPOINT {name}")
        except Exception as exc:
            raise self._translate(exc) from None
        self._depth += 1
        try:
            yield self
        except BaseException:
            with contextlib.suppress(Exception):
                self._conn.execute(f"ROLLBACK TO SAVEPOINT {name}")
                self._conn.execute(f"RELEASE SAVEPOINT {name}")
            raise
        finally:
            self._depth -= 1
        try:
            self._conn.execute(f"RELEASE SAVEPOINT {name}")
        except Exception as exc:
            raise self._translate(exc) from None

    # -- schema -----------------------------------------------------------

    @classmethod
    def prepare(cls, url: str) -> None:
        """What a daemon does before it opens the store: `ensure_schema` with
        the migrations, if any are due, in a child process."""
        with cls(url, check_schema=False) as db:
            db.ensure_schema(in_child=True)

    def schema_revision(self) -> str | None:
        try:
            if self.dialect == "sqlite":
                exists = self.scalar(
                    "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"
                )
            else:
                exists = self.scalar("SELECT to_regclass('alembic_version') IS NOT NULL")
            if not exists:
                return None
            value = self.scalar("SELECT version_num FROM alembic_version")
        except StoreError:
            return None
        return None if value is None else str(value)

    def ensure_schema(self, *, in_child: bool = False) -> None:
        """Create or upgrade a SQLite store; refuse an outdated PostgreSQL schema.

        `in_child`: run the migrations in a child process, for a process that
        lives long (see `smtpy.store.migrate`).
        """
        revision = self.schema_revision()
        if revision == SCHEMA_REVISION:
            return
        if self.dialect == "sqlite" and revision is None and not self.create:
            raise StoreMissing(missing_store_message(sqlite_path(self.url), empty=True))
        if self.dialect == "sqlite":
            from smtpy.store.migrate import upgrade, upgrade_in_child

            (upgrade_in_child if in_child else upgrade)(self.url)
            return
        if revision is None:
            raise SchemaOutdated(
                "the PostgreSQL database has no smtpy schema yet: run `smtpy db upgrade` first"
            )
        raise SchemaOutdated(
            f"the PostgreSQL schema is at revision {revision}, this smtpy needs "
            f"{SCHEMA_REVISION}: run `smtpy db upgrade`"
        )
