"""`smtpy status`: is the daemon up, how deep is the queue, is mail going out.

Read from the store only, so it works from any machine that reaches it and
sees every node sharing a PostgreSQL store: nodes, whether each is alive
(`smtpy.queue.nodes`), since when it runs and how many deliveries it holds
(leased: in flight, or waiting here for a slot), queue depth by state, the oldest queued message, the last
delivery, and the delivery error rate of the last `RECENT_SECONDS` from the
message log. `up` is false when no node has sent a heartbeat recently: the
CLI then exits 1, a check a monitoring script can use.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from smtpy.queue.nodes import is_up, list_nodes, stale_after
from smtpy.queue.queries import leases_by_owner, owner_node, queue_depth
from smtpy.store.db import Database

RECENT_SECONDS = 900.0  # the window of the recent error rate


@dataclass(slots=True)
class Status:
    now: float
    nodes: list[dict[str, Any]]
    queue: dict[str, int]  # deliveries by state: active, deferred, held
    messages: int  # messages in the queue
    oldest: dict[str, Any] | None  # queue_id, received_at, age
    last_delivery: dict[str, Any] | None  # at, queue_id, recipient, remote_host, reply
    recent: dict[str, Any]  # window, delivered, deferred, bounced, rejected, error_rate

    @property
    def up(self) -> bool:
        return any(node["up"] for node in self.nodes)

    def public(self) -> dict[str, Any]:
        return {
            "up": self.up,
            "now": self.now,
            "nodes": self.nodes,
            "queue": self.queue,
            "messages": self.messages,
            "oldest": self.oldest,
            "last_delivery": self.last_delivery,
            "recent": self.recent,
        }


def _recent(db: Database, now: float, window: float) -> dict[str, Any]:
    counts = {
        row["event"]: int(row["n"])
        for row in db.all(
            "SELECT event, count(*) AS n FROM message_log WHERE event IN"
            " ('delivered', 'deferred', 'bounced', 'rejected') AND at >= :since GROUP BY event",
            {"since": now - window},
        )
    }
    delivered, deferred, bounced = (counts.get(e, 0) for e in ("delivered", "deferred", "bounced"))
    attempts = delivered + deferred + bounced
    return {
        "window": window,
        "delivered": delivered,
        "deferred": deferred,
        "bounced": bounced,
        "rejected": counts.get("rejected", 0),
        "error_rate": None if not attempts else round((deferred + bounced) / attempts, 4),
    }


def status(db: Database, *, now: float | None = None, window: float = RECENT_SECONDS) -> Status:
    now = time.time() if now is None else now
    rows = list_nodes(db)
    names = {str(row["name"]) for row in rows}
    leased: dict[str, int] = dict.fromkeys(names, 0)
    for owner, count in leases_by_owner(db, now=now).items():
        name = owner_node(owner, names)
        if name is not None:
            leased[name] += count
    nodes = [
        {
            "name": row["name"],
            "up": is_up(row, now=now),
            "hostname": row["hostname"],
            "pid": row["pid"],
            "version": row["version"],
            "started_at": row["started_at"],
            "seen_at": row["seen_at"],
            "stopped_at": row["stopped_at"],
            "leased": leased[str(row["name"])],
            "stale_after": stale_after(row),
        }
        for row in rows
    ]
    oldest = db.one("SELECT queue_id, received_at FROM messages ORDER BY id LIMIT 1")
    last = db.one(
        "SELECT at, queue_id, recipient, remote_host, code, reply FROM message_log"
        " WHERE event = 'delivered' ORDER BY at DESC LIMIT 1"
    )
    return Status(
        now=now,
        nodes=nodes,
        queue=queue_depth(db, now=now)[0],
        messages=int(db.scalar("SELECT count(*) FROM messages") or 0),
        oldest=None
        if oldest is None
        else {**oldest, "age": max(0.0, now - float(oldest["received_at"]))},
        last_delivery=last,
        recent=_recent(db, now, window),
    )
