"""The nodes table: which `smtpy serve` holds each node name, and whether it is alive.

A node name (SMTPY_NODE_NAME) is the owner of leases in the shared queue, so
two running daemons must never share one. A starting daemon takes its name
with `claim` before it touches the queue: the name's row records the start
that holds it (`instance`, a random id), its process and its heartbeat
interval. The name is refused while its holder is alive:

- a holder on this machine is alive while its process runs (its pid with the
  same start time, in the same pid namespace of the same boot): a node that
  was killed frees its name at once, and one still running keeps it even when
  its heartbeat is late;
- a holder elsewhere is alive while its heartbeat is recent: seen within
  `STALE_BEATS` of its own heartbeat intervals and not stopped.

Taking a name over is a conditional UPDATE on the instance that was read, so
of two starts racing for one free name exactly one wins, on SQLite and
PostgreSQL alike. Every heartbeat is conditional on the instance too: a
daemon whose name was taken over learns it at its next beat.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass, field

from smtpy import __version__
from smtpy.errors import ConfigError
from smtpy.store.db import Database, Row

HEARTBEAT_SECONDS = 10.0  # the default of the `heartbeat_seconds` setting
STALE_BEATS = 3  # a node unseen for this many of its heartbeat intervals is taken for down
STALE_AFTER = STALE_BEATS * HEARTBEAT_SECONDS
CLAIM_ATTEMPTS = 5  # rounds of "read the row, take it if free" before giving up


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as file:
            return file.read()
    except OSError:
        return None


def _machine() -> str | None:
    """Where pids mean the same processes: this boot and this pid namespace (Linux)."""
    boot = _read("/proc/sys/kernel/random/boot_id")
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    if not boot:
        return None
    return f"{boot.strip()}/{namespace.strip('pid:[]')}"


def _start_ticks(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) of process `pid`, if it can be read."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat or ")" not in stat:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


def process_fingerprint(pid: int | None = None) -> str | None:
    """`MACHINE/PID/START` of a process (default: this one), or None where it cannot be known."""
    pid = os.getpid() if pid is None else pid
    machine = _machine()
    started = _start_ticks(pid)
    if machine is None or started is None:
        return None
    return f"{machine}/{pid}/{started[1]}"


def holder_running(row: Row) -> bool | None:
    """Whether the process that holds a name still runs; None when this machine cannot tell."""
    fingerprint = row.get("process")
    if not fingerprint:
        return None
    machine, _, rest = str(fingerprint).rpartition("/")
    machine, _, pid_text = machine.rpartition("/")
    if machine != _machine():
        return None  # another machine, container or boot: only the heartbeat tells
    try:
        pid, ticks = int(pid_text), int(rest)
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    except (ValueError, OSError):
        return None
    now = _start_ticks(pid)
    if now is None:
        return None  # hidden from us (ProtectProc=invisible): the heartbeat decides
    state, started = now
    return started == ticks and state not in ("Z", "X")


def stale_after(row: Row) -> float:
    """Seconds without a heartbeat after which the node of `row` is taken for down."""
    beat = row.get("heartbeat_seconds")
    return STALE_BEATS * (float(beat) if beat else HEARTBEAT_SECONDS)


def fresh(row: Row, *, now: float) -> bool:
    """Whether the node of `row` is not stopped and sent a heartbeat recently."""
    return row["stopped_at"] is None and now - float(row["seen_at"]) <= stale_after(row)


def holds_name(row: Row, *, now: float) -> bool:
    """Whether the start recorded in `row` still holds its name (see the module's rules)."""
    running = holder_running(row)
    if running is not None:
        return running
    return fresh(row, now=now)


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One start of a node: its name, and what says which start and process holds it."""

    name: str
    started_at: float
    hostname: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    version: str = __version__
    instance: str = field(default_factory=lambda: secrets.token_hex(16))
    process: str | None = field(default_factory=process_fingerprint)
    heartbeat_seconds: float = HEARTBEAT_SECONDS


def _params(node: NodeInfo, now: float) -> dict[str, object]:
    return {
        "name": node.name,
        "hostname": node.hostname[:255],
        "pid": node.pid,
        "version": node.version[:32],
        "started_at": node.started_at,
        "now": now,
        "instance": node.instance,
        "process": node.process,
        "heartbeat_seconds": node.heartbeat_seconds,
    }


def claim(db: Database, node: NodeInfo, *, now: float) -> Row | None:
    """Take `node.name` for this start; the row of the start it replaced (None: a new name).

    Raises `ConfigError` while a live node holds the name. Rows that daemons
    before node identity wrote for their serving processes (`NAME.1` …) go.
    """
    params = _params(node, now)
    for _ in range(CLAIM_ATTEMPTS):
        row = db.one(
            "SELECT name, hostname, pid, version, started_at, seen_at, stopped_at, instance,"
            " process, heartbeat_seconds FROM nodes WHERE name = :name",
            {"name": node.name},
        )
        if row is None:
            if db.execute(
                "INSERT INTO nodes (name, hostname, pid, version, started_at, seen_at,"
                " stopped_at, instance, process, heartbeat_seconds) VALUES (:name, :hostname,"
                " :pid, :version, :started_at, :now, NULL, :instance, :process, :heartbeat_seconds)"
                " ON CONFLICT (name) DO NOTHING",
                params,
            ):
                _forget_process_rows(db, node.name)
                return None
            continue  # another start inserted it meanwhile: look at it
        if holds_name(row, now=now):
            raise ConfigError(in_use(row, now=now))
        if db.execute(
            "UPDATE nodes SET hostname = :hostname, pid = :pid, version = :version,"
            " started_at = :started_at, seen_at = :now, stopped_at = NULL,"
            " instance = :instance, process = :process, heartbeat_seconds = :heartbeat_seconds"
            " WHERE name = :name AND COALESCE(instance, '') = :seen",
            {**params, "seen": row["instance"] or ""},
        ):
            _forget_process_rows(db, node.name)
            return row
        # another start took it between our read and our update: look again
    raise ConfigError(
        f"node name {node.name!r} changed hands {CLAIM_ATTEMPTS} times while this node started: "
        "another smtpy serve is starting with the same SMTPY_NODE_NAME; give each node its own"
    )


def _forget_process_rows(db: Database, name: str) -> None:
    """Remove the per-process rows (`NAME.1` …) that daemons before node identity wrote."""
    prefix = f"{name}."
    for row in db.all(
        "SELECT name FROM nodes WHERE instance IS NULL AND substr(name, 1, :length) = :prefix",
        {"length": len(prefix), "prefix": prefix},
    ):
        index = str(row["name"])[len(prefix) :]
        if index.isascii() and index.isdigit():
            db.execute(
                "DELETE FROM nodes WHERE name = :name AND instance IS NULL", {"name": row["name"]}
            )


def in_use(row: Row, *, now: float) -> str:
    """The one-line refusal for a name a live node holds."""
    seen = max(0.0, now - float(row["seen_at"]))
    where = f"pid {row['pid']} on {row['hostname']}"
    if holder_running(row):
        why = "still runs on this machine"
    else:
        why = (
            f"was seen {seen:.0f} s ago (it counts as down after {stale_after(row):.0f} s "
            "without a heartbeat)"
        )
    return (
        f"node name {row['name']!r} is in use by a running smtpy serve ({where}), which {why}; "
        "set SMTPY_NODE_NAME to a name of its own for this node, or stop the other one first"
    )


def heartbeat(db: Database, node: NodeInfo, *, now: float) -> bool:
    """Record that `node` is alive at `now`; False when its name was taken over meanwhile."""
    return bool(
        db.execute(
            "UPDATE nodes SET seen_at = :now WHERE name = :name AND instance = :instance",
            {"name": node.name, "instance": node.instance, "now": now},
        )
    )


def stopped(db: Database, node: NodeInfo, *, now: float) -> None:
    """Record a clean stop, so `smtpy status` need not wait for the heartbeat to go stale."""
    db.execute(
        "UPDATE nodes SET stopped_at = :now, seen_at = :now"
        " WHERE name = :name AND instance = :instance",
        {"name": node.name, "instance": node.instance, "now": now},
    )


def list_nodes(db: Database) -> list[Row]:
    return db.all(
        "SELECT name, hostname, pid, version, started_at, seen_at, stopped_at, process,"
        " heartbeat_seconds FROM nodes ORDER BY name"
    )


def is_up(node: Row, *, now: float) -> bool:
    """Up: not stopped, a recent heartbeat, and not known dead on this machine."""
    return fresh(node, now=now) and holder_running(node) is not False
