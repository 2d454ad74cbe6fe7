"""The nodes table: each running `smtpy serve` writes a heartbeat, `smtpy status` reads it.

A node is up while its heartbeat is recent (`STALE_AFTER`) and it did not
stop cleanly. Several nodes sharing one PostgreSQL each keep their own row,
keyed by SMTPY_NODE_NAME.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from smtpy import __version__
from smtpy.store.db import Database, Row

HEARTBEAT_SECONDS = 10.0
STALE_AFTER = 3 * HEARTBEAT_SECONDS  # a node unseen for longer is taken for down


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """What a node says about itself."""

    name: str
    started_at: float
    hostname: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    version: str = __version__


def heartbeat(db: Database, node: NodeInfo, *, now: float) -> None:
    """Record that `node` is alive at `now` (creates its row on the first beat)."""
    db.execute(
        "INSERT INTO nodes (name, hostname, pid, version, started_at, seen_at, stopped_at)"
        " VALUES (:name, :hostname, :pid, :version, :started_at, :now, NULL)"
        " ON CONFLICT (name) DO UPDATE SET hostname = excluded.hostname, pid = excluded.pid,"
        " version = excluded.version, started_at = excluded.started_at,"
        " seen_at = excluded.seen_at, stopped_at = NULL",
        {
            "name": node.name,
            "hostname": node.hostname[:255],
            "pid": node.pid,
            "version": node.version[:32],
            "started_at": node.started_at,
            "now": now,
        },
    )


def stopped(db: Database, node: NodeInfo, *, now: float) -> None:
    """Record a clean stop, so `smtpy status` need not wait for the heartbeat to go stale."""
    db.execute(
        "UPDATE nodes SET stopped_at = :now, seen_at = :now WHERE name = :name AND pid = :pid",
        {"name": node.name, "pid": node.pid, "now": now},
    )


def list_nodes(db: Database) -> list[Row]:
    return db.all(
        "SELECT name, hostname, pid, version, started_at, seen_at, stopped_at"
        " FROM nodes ORDER BY name"
    )


def is_up(node: Row, *, now: float) -> bool:
    return node["stopped_at"] is None and now - float(node["seen_at"]) <= STALE_AFTER
