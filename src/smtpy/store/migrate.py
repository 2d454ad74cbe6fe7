"""Run the migrations shipped in the package (Alembic, imported only when needed).

A long-running process runs them in a child (`upgrade_in_child`): Alembic and
SQLAlchemy, once imported, stay for good, and `smtpy serve` started on a new
store would otherwise carry about 30 MB of them in every serving process.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from smtpy.errors import StoreError

MIGRATIONS = Path(__file__).with_name("migrations")


def sqlalchemy_url(url: str) -> str:
    """The SQLAlchemy form of a store URL (PostgreSQL through psycopg 3)."""
    return re.sub(r"^postgres(?:ql)?(?:\+psycopg)?://", "postgresql+psycopg://", url)


def alembic_config(url: str) -> object:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", sqlalchemy_url(url).replace("%", "%%"))
    return config


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(MIGRATIONS))
    head = script.get_current_head()
    if head is None:
        raise StoreError("no migrations found in the package")
    return head


def upgrade(url: str) -> None:
    """Bring the schema at `url` to the newest revision."""
    from alembic import command

    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        command.upgrade(alembic_config(url), "head")  # type: ignore[arg-type]
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StoreError(f"migrating the store failed: {reason}") from None


def upgrade_in_child(url: str) -> None:
    """`upgrade(url)` in a short-lived Python process of its own; the same errors.

    A child that cannot be started (this Python gone after an upgrade, no
    memory or processes left) is a `StoreError` too: one line, no traceback.
    """
    try:
        result = subprocess.run(  # noqa: S603 - this Python, this module
            [sys.executable, "-P", "-m", "smtpy.store.migrate", url],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError as exc:
        raise StoreError(
            f"cannot start the migration process ({sys.executable}): "
            f"{exc.strerror or exc}; check that this Python still exists, or run "
            "`smtpy db upgrade`"
        ) from None
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        raise StoreError(
            lines[-1] if lines else f"migrating the store failed (exit code {result.returncode})"
        )


def main(argv: list[str]) -> int:
    """`python -m smtpy.store.migrate URL`: what `upgrade_in_child` runs."""
    try:
        upgrade(argv[0])
    except StoreError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
