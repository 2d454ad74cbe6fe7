"""Sign-in throttling, counted in the store so that every `smtpy api` process agrees.

Each failed password or second-factor code is one row of `login_failures` under
two keys: the account (`account:<email>`) and the client address (`ip:<addr>`).
Before any password is checked, the failures of the last `WINDOW` seconds are
counted; past `ACCOUNT_LIMIT` for the account or `ADDRESS_LIMIT` for the
address, the attempt is refused with `TooManyRequests`, whose `retry_after` is
the time until the oldest counted failure leaves the window (then one more try
is allowed). There is no hard lock-out: an attacker can slow a user's sign-in
down, never shut them out for longer than the window.

A completed sign-in clears its account's failures (not its address's: one
success from a shared address must not reset the count of an attack from it).
Rows older than the window are deleted as new failures come in.
"""

from __future__ import annotations

import math
import random
import time

from smtpy.errors import TooManyRequests
from smtpy.store.db import Database

WINDOW = 15 * 60  # seconds a failure counts
ACCOUNT_LIMIT = 10  # failures per account within WINDOW before it is throttled
ADDRESS_LIMIT = 50  # failures per client address within WINDOW
RESET_MAIL_LIMIT = 5  # password-reset mails per account within WINDOW (more are not sent)
PRUNE_EVERY = 100  # about one failure in this many also prunes every key's old rows


def account_key(email: str) -> str:
    return f"account:{email.strip().lower()[:380]}"


def address_key(client_ip: str) -> str:
    return f"ip:{client_ip[:64]}"


def reset_key(email: str) -> str:
    return f"reset:{email.strip().lower()[:380]}"


def _keys(email: str | None, client_ip: str | None) -> list[tuple[str, int]]:
    keys = []
    if email is not None:
        keys.append((account_key(email), ACCOUNT_LIMIT))
    if client_ip:
        keys.append((address_key(client_ip), ADDRESS_LIMIT))
    return keys


def retry_after(db: Database, key: str, limit: int, *, now: float | None = None) -> int | None:
    """Seconds until `key` may try again, or None if it is under its `limit`."""
    now = time.time() if now is None else now
    since = now - WINDOW
    count = int(
        db.scalar(
            "SELECT count(*) FROM login_failures WHERE key = :k AND at > :since",
            {"k": key, "since": since},
        )
    )
    if count < limit:
        return None
    # The failure whose leaving brings the count under the limit.
    oldest = db.scalar(
        "SELECT at FROM login_failures WHERE key = :k AND at > :since"
        " ORDER BY at LIMIT 1 OFFSET :skip",
        {"k": key, "since": since, "skip": count - limit},
    )
    if oldest is None:  # deleted meanwhile
        return None
    return max(1, math.ceil(float(oldest) + WINDOW - now))


def check(
    *, db: Database, email: str | None, client_ip: str | None, now: float | None = None
) -> None:
    """Refuse (`TooManyRequests`) an attempt on an account or from an address that failed
    too often lately."""
    for key, limit in _keys(email, client_ip):
        wait = retry_after(db, key, limit, now=now)
        if wait is not None:
            raise TooManyRequests(
                f"too many failed sign-ins: try again in {wait} seconds",
                retry_after=wait,
            )


def failed(
    *, db: Database, email: str | None, client_ip: str | None, now: float | None = None
) -> None:
    """Count one failed attempt for the account and the address."""
    now = time.time() if now is None else now
    keys = [key for key, _ in _keys(email, client_ip)]
    record(db, keys, now=now)


def record(db: Database, keys: list[str], *, now: float | None = None) -> None:
    """One row per key at `now`, and the old rows of those keys deleted."""
    now = time.time() if now is None else now
    with db.transaction():
        for key in keys:
            db.execute(
                "DELETE FROM login_failures WHERE key = :k AND at <= :old",
                {"k": key, "old": now - WINDOW},
            )
            db.execute(
                "INSERT INTO login_failures (key, at) VALUES (:k, :at)", {"k": key, "at": now}
            )
    if random.randrange(PRUNE_EVERY) == 0:  # not a secret: spreads the pruning
        prune(db=db, now=now)


def succeeded(*, db: Database, email: str) -> None:
    """A completed sign-in: the account's failures are forgiven."""
    db.execute("DELETE FROM login_failures WHERE key = :k", {"k": account_key(email)})


def prune(*, db: Database, now: float | None = None) -> int:
    """Delete every failure older than the window; the number deleted."""
    now = time.time() if now is None else now
    return db.execute("DELETE FROM login_failures WHERE at <= :old", {"old": now - WINDOW})
