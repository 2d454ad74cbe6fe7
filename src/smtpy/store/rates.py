"""Message-rate buckets shared by the nodes through the store (table `rate_limits`).

A node adds what it spent since its last sync, for many keys in one
transaction, and learns each key's level across all nodes; `smtpy.checks.limits`
does the rest in memory. A row's level drains at the key's rate, so a row
untouched for longer than a bucket takes to drain is worth nothing and is
pruned.
"""

from __future__ import annotations

from collections.abc import Sequence

from smtpy.store.db import Database

# The level after draining since updated_at (never below 0), plus what was spent now.
_ADD = """
INSERT INTO rate_limits (key, used, updated_at) VALUES (:key, :spent, :now)
ON CONFLICT (key) DO UPDATE SET
    used = CASE
        WHEN rate_limits.used - :per_second * (:now - rate_limits.updated_at) > 0
        THEN rate_limits.used - :per_second * (:now - rate_limits.updated_at)
        ELSE 0
    END + :spent,
    updated_at = :now
RETURNING used
"""


def add_usage(
    db: Database,
    usage: Sequence[tuple[str, float, float]],
    *,
    now: float,
    prune_before: float | None = None,
) -> dict[str, float]:
    """Add (key, tokens spent, drain rate per second) for each key; the keys' shared levels.

    With `prune_before`, rows not updated since then are deleted in the same transaction.
    """
    levels: dict[str, float] = {}
    with db.transaction():
        for key, spent, per_second in usage:
            params = {"key": key, "spent": spent, "per_second": per_second, "now": now}
            levels[key] = float(db.scalar(_ADD, params))
        if prune_before is not None:
            db.execute("DELETE FROM rate_limits WHERE updated_at < :t", {"t": prune_before})
    return levels
