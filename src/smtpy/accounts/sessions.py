"""Dashboard sessions, kept server-side.

The browser holds a random token in the `smtpy_session` cookie; the store keeps
only its SHA-256, the user, the acting organization, and whether the second
factor was given. A session ends when idle for SMTPY_SESSION_IDLE_TIMEOUT, at
SMTPY_SESSION_LIFETIME in any case, when revoked, and (the others) when the
password changes. Sign-in and the second factor each make a new token, so a
token seen before sign-in is worth nothing after (no session fixation).

The CSRF token is derived from the cookie's token (HMAC), so it needs no
storage and changes whenever the session's token does.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

from pydantic import BaseModel, ConfigDict

from smtpy.accounts.tokens import digest, new_token
from smtpy.errors import NotFound, Unauthorized
from smtpy.store.db import Database

COOKIE = "smtpy_session"
SECURE_COOKIE = "__Host-smtpy_session"  # when SMTPY_PUBLIC_URL is https
# last_seen_at is written at most this often: reading pages must not write on every request.
TOUCH_RESOLUTION = 60.0


class SessionInfo(BaseModel):
    model_config = ConfigDict(frozen=True, defer_build=True)

    id: int
    user_id: int
    email: str
    organization_id: int | None
    mfa_passed: bool
    created_at: float
    last_seen_at: float
    expires_at: float
    client_ip: str | None
    user_agent: str | None


class NewSession(BaseModel):
    """A session just made: `token` goes in the cookie and nowhere else."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    token: str
    session: SessionInfo


_SELECT = (
    "SELECT s.id, s.user_id, u.email, s.organization_id, s.mfa_passed, s.created_at,"
    " s.last_seen_at, s.expires_at, s.client_ip, s.user_agent"
    " FROM sessions s JOIN users u ON u.id = s.user_id"
)


def _info(row: dict[str, Any]) -> SessionInfo:
    return SessionInfo.model_validate({**row, "mfa_passed": bool(row["mfa_passed"])})


def csrf_token(token: str) -> str:
    """The CSRF token that goes with a session's cookie token."""
    return hmac.new(token.encode(), b"smtpy csrf", hashlib.sha256).hexdigest()


def create(
    *,
    db: Database,
    user_id: int,
    organization_id: int | None,
    mfa_passed: bool,
    lifetime: float,
    client_ip: str | None = None,
    user_agent: str | None = None,
) -> NewSession:
    """A new session for a user who just proved who they are."""
    token = new_token(32)
    now = time.time()
    session_id = db.insert(
        "INSERT INTO sessions (token_hash, user_id, organization_id, mfa_passed, created_at,"
        " last_seen_at, expires_at, client_ip, user_agent)"
        " VALUES (:h, :user, :org, :mfa, :now, :now, :exp, :ip, :ua) RETURNING id",
        {
            "h": digest(token),
            "user": user_id,
            "org": organization_id,
            "mfa": mfa_passed,
            "now": now,
            "exp": now + lifetime,
            "ip": client_ip,
            "ua": (user_agent or "")[:300] or None,
        },
    )
    return NewSession(token=token, session=_get(db, session_id))


def _get(db: Database, session_id: int) -> SessionInfo:
    row = db.one(_SELECT + " WHERE s.id = :id", {"id": session_id})
    if row is None:
        raise NotFound("the session has ended")
    return _info(row)


def authenticate(
    *, db: Database, token: str, idle_timeout: float, now: float | None = None
) -> SessionInfo:
    """The live session whose cookie holds `token`; `Unauthorized` when it is unknown,
    revoked, idle too long or past its lifetime (an ended session's row is deleted)."""
    now = time.time() if now is None else now
    row = db.one(_SELECT + " WHERE s.token_hash = :h", {"h": digest(token)})
    if row is None:
        raise Unauthorized("your session has ended: sign in again")
    if row["expires_at"] <= now or row["last_seen_at"] + idle_timeout <= now:
        db.execute("DELETE FROM sessions WHERE id = :id", {"id": row["id"]})
        raise Unauthorized("your session has expired: sign in again")
    if now - row["last_seen_at"] >= TOUCH_RESOLUTION:
        db.execute(
            "UPDATE sessions SET last_seen_at = :now WHERE id = :id", {"now": now, "id": row["id"]}
        )
        row["last_seen_at"] = now
    return _info(row)


def rotate(
    *,
    db: Database,
    session_id: int,
    mfa_passed: bool | None = None,
    organization_id: int | None = None,
) -> NewSession:
    """Give a session a new token (after the second factor, or on switching organization);
    the old token stops working at once."""
    token = new_token(32)
    sets = ["token_hash = :h", "last_seen_at = :now"]
    params: dict[str, Any] = {"h": digest(token), "now": time.time(), "id": session_id}
    if mfa_passed is not None:
        sets.append("mfa_passed = :mfa")
        params["mfa"] = mfa_passed
    if organization_id is not None:
        sets.append("organization_id = :org")
        params["org"] = organization_id
    if not db.execute(f"UPDATE sessions SET {', '.join(sets)} WHERE id = :id", params):  # noqa: S608  # fixed column names
        raise Unauthorized("your session has ended: sign in again")
    return NewSession(token=token, session=_get(db, session_id))


def list_sessions(*, db: Database, user_id: int) -> list[SessionInfo]:
    """A user's live sessions, most recently used first."""
    now = time.time()
    rows = db.all(
        _SELECT + " WHERE s.user_id = :user AND s.expires_at > :now"
        " ORDER BY s.last_seen_at DESC, s.id DESC",
        {"user": user_id, "now": now},
    )
    return [_info(r) for r in rows]


def revoke(*, db: Database, user_id: int, session_id: int) -> None:
    """End one of a user's sessions; `NotFound` if it is not theirs (or already ended)."""
    if not db.execute(
        "DELETE FROM sessions WHERE id = :id AND user_id = :user",
        {"id": session_id, "user": user_id},
    ):
        raise NotFound(f"there is no session {session_id}")


def end_all(*, db: Database, user_id: int, keep: int | None = None) -> int:
    """End every session of a user but `keep`; the number ended."""
    return db.execute(
        "DELETE FROM sessions WHERE user_id = :user AND id <> :keep",
        {"user": user_id, "keep": -1 if keep is None else keep},
    )


def prune(*, db: Database, idle_timeout: float, now: float | None = None) -> int:
    """Delete ended sessions; the number deleted."""
    now = time.time() if now is None else now
    return db.execute(
        "DELETE FROM sessions WHERE expires_at <= :now OR last_seen_at <= :idle",
        {"now": now, "idle": now - idle_timeout},
    )


def set_organization(*, db: Database, session_id: int, organization_id: int) -> None:
    """Make `organization_id` the session's acting organization (the user's membership is
    the caller's to check)."""
    db.execute(
        "UPDATE sessions SET organization_id = :org WHERE id = :id",
        {"org": organization_id, "id": session_id},
    )
