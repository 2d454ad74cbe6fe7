"""API keys `smtpy_<id>_<secret>`: one organization's, named, shown once, stored hashed.

The id is public (it names the key in lists and the audit log); only the
SHA-256 of the secret is kept. A revoked or expired key is refused at once:
every request reads the key's row.
"""

from __future__ import annotations

import re
import secrets
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from smtpy.accounts.audit import record
from smtpy.accounts.tokens import digest, new_token, same
from smtpy.errors import InvalidInput, NotFound, Unauthorized
from smtpy.store.db import Database
from smtpy.store.pages import Page, check_limit, keyset, page_of

PREFIX = "smtpy_"
_KEY = re.compile(r"smtpy_([0-9a-f]{16})_([A-Za-z0-9_-]{20,100})")
# last_used_at is written at most this often per key: a busy script must not
# turn every read into a write.
LAST_USED_RESOLUTION = 60.0


class ApiKeyPublic(BaseModel):
    model_config = ConfigDict(frozen=True, defer_build=True)

    id: str
    organization_id: int
    name: str
    created_at: float
    expires_at: float | None
    last_used_at: float | None
    revoked_at: float | None


def key_state(
    key: ApiKeyPublic, now: float | None = None
) -> Literal["active", "expired", "revoked"]:
    """Whether a key works: `revoked`, `expired`, else `active`."""
    now = time.time() if now is None else now
    if key.revoked_at is not None:
        return "revoked"
    if key.expires_at is not None and key.expires_at <= now:
        return "expired"
    return "active"


class ApiKeyCreated(ApiKeyPublic):
    key: str  # the whole key: shown this once, never stored


_SELECT = (
    "SELECT id, organization_id, name, created_at, expires_at, last_used_at, revoked_at,"
    " secret_hash FROM api_keys"
)


def _public(row: dict[str, Any]) -> ApiKeyPublic:
    return ApiKeyPublic.model_validate({k: v for k, v in row.items() if k != "secret_hash"})


def create_key(
    *,
    db: Database,
    org: int,
    name: str,
    expires_at: float | None = None,
    created_by: int | None = None,
) -> ApiKeyCreated:
    """A new key for `org`; its secret is in the answer's `key` and nowhere else."""
    name = name.strip()
    if not name or len(name) > 200:
        raise InvalidInput("an API key needs a name of 1 to 200 characters")
    now = time.time()
    if expires_at is not None and expires_at <= now:
        raise InvalidInput("the expiry must be in the future")
    key_id = secrets.token_hex(8)
    secret = new_token(32)
    with db.transaction():
        _insert(db, key_id, org, name, secret, created_by, now, expires_at)
        row = db.one(_SELECT + " WHERE id = :id", {"id": key_id})
        assert row is not None
        record(
            db,
            org=org,
            action="apikey.create",
            target=f"key {name} ({key_id})",
            detail={"expires_at": expires_at},
        )
    return ApiKeyCreated(**_public(row).model_dump(), key=f"{PREFIX}{key_id}_{secret}")


def _insert(
    db: Database,
    key_id: str,
    org: int,
    name: str,
    secret: str,
    created_by: int | None,
    now: float,
    expires_at: float | None,
) -> None:
    db.execute(
        "INSERT INTO api_keys (id, organization_id, name, secret_hash, created_by, created_at,"
        " expires_at) VALUES (:id, :org, :name, :hash, :by, :now, :exp)",
        {
            "id": key_id,
            "org": org,
            "name": name,
            "hash": digest(secret),
            "by": created_by,
            "now": now,
            "exp": expires_at,
        },
    )


def list_keys(*, db: Database, org: int) -> list[ApiKeyPublic]:
    """The organization's keys, newest first, revoked ones included."""
    rows = db.all(
        _SELECT + " WHERE organization_id = :org ORDER BY created_at DESC, id DESC",
        {"org": org},
    )
    return [_public(r) for r in rows]


def revoke_key(*, db: Database, org: int, key_id: str) -> ApiKeyPublic:
    """Revoke a key at once; `NotFound` if `org` has no such key."""
    with db.transaction():
        touched = db.execute(
            "UPDATE api_keys SET revoked_at = :now"
            " WHERE id = :id AND organization_id = :org AND revoked_at IS NULL",
            {"now": time.time(), "id": key_id, "org": org},
        )
        row = db.one(
            _SELECT + " WHERE id = :id AND organization_id = :org",
            {"id": key_id, "org": org},
        )
        if row is None:
            raise NotFound(f"there is no API key {key_id!r} in this organization")
        if touched:  # revoking a revoked key changes nothing and is no error
            record(db, org=org, action="apikey.revoke", target=f"key {row['name']} ({key_id})")
    return _public(row)


def authenticate(*, db: Database, key: str) -> ApiKeyPublic:
    """The key named by a bearer token; `Unauthorized` if unknown, wrong, revoked or expired."""
    match = _KEY.fullmatch(key.strip())
    if match is None:
        raise Unauthorized("the API key is malformed: expected smtpy_<id>_<secret>")
    key_id, secret = match.groups()
    row = db.one(_SELECT + " WHERE id = :id", {"id": key_id})
    if row is None or not same(str(row.pop("secret_hash")), digest(secret)):
        raise Unauthorized("the API key is not valid")
    now = time.time()
    if row["revoked_at"] is not None:
        raise Unauthorized("the API key was revoked")
    if row["expires_at"] is not None and float(row["expires_at"]) <= now:
        raise Unauthorized("the API key has expired")
    last = row["last_used_at"]
    if last is None or now - float(last) >= LAST_USED_RESOLUTION:
        db.execute(
            "UPDATE api_keys SET last_used_at = :now WHERE id = :id", {"now": now, "id": key_id}
        )
        row["last_used_at"] = now
    return _public(row)


def page_keys(
    *, db: Database, org: int, limit: int | None = None, cursor: str | None = None
) -> Page[ApiKeyPublic]:
    """The organization's keys, newest first, revoked ones included, one page at a time."""
    limit = check_limit(limit)
    after, params = keyset("created_at", "id", cursor)
    rows = db.all(
        _SELECT
        + " WHERE organization_id = :org"
        + (f" AND {after}" if after else "")
        + " ORDER BY created_at DESC, id DESC LIMIT :lim",
        {**params, "org": org, "lim": limit + 1},
    )
    return page_of([_public(r) for r in rows], limit, key=lambda k: (k.created_at, k.id))


def all_keys(*, db: Database) -> list[ApiKeyPublic]:
    """Every organization's keys, newest first (the operator's view at the shell)."""
    return [_public(r) for r in db.all(_SELECT + " ORDER BY created_at DESC, id DESC")]


def organization_of_key(*, db: Database, key_id: str) -> int:
    """The organization a key belongs to; `NotFound` for an unknown id."""
    org = db.scalar("SELECT organization_id FROM api_keys WHERE id = :id", {"id": key_id.strip()})
    if org is None:
        raise NotFound(f"there is no API key {key_id.strip()!r}; see `smtpy apikey list`")
    return int(org)
