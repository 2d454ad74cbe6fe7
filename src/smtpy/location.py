"""Where the default store lives: chosen once, then kept.

Without SMTPY_STATE_DIR or SMTPY_DATABASE_URL, the store is `smtpy.db` in one
of two directories, in this order of preference:

1. the system directory `/var/lib/smtpy` (the Debian package and the container
   create it for the `smtpy` user);
2. the user's data directory, `$XDG_DATA_HOME/smtpy` (`~/.local/share/smtpy`).

A store that exists is never left behind: when one of the two directories
holds a store, that is the store, whichever directory is preferred now (so
installing the package after a first trial in the home directory does not
switch to a new, empty store). When both hold one, nothing is guessed: the
error names both. When neither does, the first usable directory is chosen:
the system one when it is a directory this user may write to, else the
user's.

`choose` is the rule, pure: it takes the candidates and what exists there.
`probe` looks at the file system for it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from smtpy.errors import ConfigError

SYSTEM_STATE_DIR = Path("/var/lib/smtpy")
STORE_FILE = "smtpy.db"


@dataclass(frozen=True, slots=True)
class Candidate:
    """One place the default store may live, and what the file system says of it."""

    path: Path
    has_store: bool  # `smtpy.db` exists there
    writable: bool  # a directory this user may create files in


@dataclass(frozen=True, slots=True)
class Choice:
    """The state directory chosen, and why (`smtpy config show` prints the reason)."""

    path: Path
    reason: str


def choose(candidates: Sequence[Candidate], *, strict: bool = True) -> Choice:
    """The state directory among `candidates` (most preferred first).

    `strict`: refuse when several hold a store (the default store is used);
    otherwise the preferred one of them is taken (SMTPY_DATABASE_URL names
    the store, and the state directory matters little).
    """
    if not candidates:
        raise ValueError("no candidate directory")
    found = [c for c in candidates if c.has_store]
    if len(found) > 1 and strict:
        stores = " and ".join(str(c.path / STORE_FILE) for c in found)
        raise ConfigError(
            f"two smtpy stores exist, {stores}, and neither is configured: set "
            "SMTPY_STATE_DIR (or SMTPY_DATABASE_URL) to the one to use, or move the other away"
        )
    if found:
        chosen = found[0]
        others = [str(c.path) for c in candidates if c is not chosen]
        if chosen is candidates[0]:
            return Choice(chosen.path, f"the store found in {chosen.path}")
        return Choice(
            chosen.path,
            f"the store found in {chosen.path} (none in {', '.join(others)})",
        )
    for candidate in candidates[:-1]:
        if candidate.writable:
            return Choice(candidate.path, f"no store yet; {candidate.path} is writable")
    last = candidates[-1]
    skipped = ", ".join(str(c.path) for c in candidates[:-1])
    return Choice(last.path, f"no store yet; {skipped} is not a writable directory")


def user_data_dir(environ: Mapping[str, str]) -> Path:
    """`$XDG_DATA_HOME/smtpy`, or `~/.local/share/smtpy`."""
    xdg = environ.get("XDG_DATA_HOME") or str(
        Path(environ.get("HOME", "~")).expanduser() / ".local/share"
    )
    return Path(xdg) / "smtpy"


def probe(path: Path) -> Candidate:
    """What the file system says about one candidate directory (creates nothing); a
    directory this user may not look into (another user's HOME) holds no store for it."""
    try:
        has_store = (path / STORE_FILE).is_file()
        writable = path.is_dir() and os.access(path, os.W_OK)
    except OSError:  # PermissionError: is_file() raises it rather than answer False
        has_store = writable = False
    return Candidate(path=path, has_store=has_store, writable=writable)


def default_state_dir(
    environ: Mapping[str, str], *, system: Path = SYSTEM_STATE_DIR, strict: bool = True
) -> Choice:
    """The default state directory for this user and file system."""
    return choose([probe(system), probe(user_data_dir(environ))], strict=strict)
