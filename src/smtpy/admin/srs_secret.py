"""The SRS secret: from SMTPY_SRS_SECRET, else generated once and shared through the store."""

from __future__ import annotations

import secrets
import time

from smtpy.store.db import Database

NAME = "srs"


def stored_srs_secret(db: Database) -> str:
    """The store's SRS secret, created on first use (every node then reads the same one)."""
    value = db.scalar("SELECT value FROM secrets WHERE name = :n", {"n": NAME})
    if value is None:
        db.execute(
            "INSERT INTO secrets (name, value, created_at) VALUES (:n, :v, :now) ON CONFLICT (name) DO NOTHING",
            {"n": NAME, "v": secrets.token_urlsafe(32), "now": time.time()},
        )
        value = db.scalar("SELECT value FROM secrets WHERE name = :n", {"n": NAME})
    return str(value)
