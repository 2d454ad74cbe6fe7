"""Two-factor authentication: TOTP (RFC 6238, pyotp) and single-use recovery codes.

Enrolment: `start_enrolment` keeps a new secret (not active yet) and answers it
with its otpauth URI and a QR code as SVG (segno); `confirm_enrolment` turns
2FA on once a first valid code proves the authenticator app has the secret,
and answers ten recovery codes, shown this once and stored hashed.

A code is accepted for the current 30-second step or the one before or after
(valid_window=1, for clocks a little off), and only once: the step it matched
is kept in `users.totp_last_step` and a code of that step or an earlier one is
refused afterwards (a replay guard that holds across processes, since the
store's conditional UPDATE decides). A recovery code works once.
"""

from __future__ import annotations

import io
import secrets
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from smtpy.accounts import audit, passwords, throttle
from smtpy.accounts.tokens import digest
from smtpy.errors import Conflict, InvalidInput, NotFound, Unauthorized
from smtpy.store.db import Database

ISSUER = "smtpy"
RECOVERY_CODES = 10
_RECOVERY_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i: read off paper
_RECOVERY_LENGTH = 10  # about 49 bits each

Factor = Literal["totp", "recovery"]


class Enrolment(BaseModel):
    """What the user's authenticator app needs: shown while enrolling, never again."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    secret: str  # base32
    otpauth_uri: str
    qr_svg: str  # an SVG document of the QR code of `otpauth_uri`


def _user(db: Database, user_id: int) -> dict[str, Any]:
    row = db.one(
        "SELECT id, email, password_hash, totp_secret, totp_enabled_at, totp_last_step"
        " FROM users WHERE id = :id",
        {"id": user_id},
    )
    if row is None:
        raise NotFound(f"there is no user with id {user_id}")
    return row


def _qr_svg(uri: str) -> str:
    import segno

    buffer = io.BytesIO()
    segno.make(uri, error="m").save(
        buffer,
        kind="svg",
        scale=4,
        border=4,
        dark="#000",
        light="#fff",  # a dark page around it must not make it unreadable
        xmldecl=False,
        title="QR code: scan it with your authenticator app",
    )
    return buffer.getvalue().decode("utf-8")


def start_enrolment(*, db: Database, user_id: int, issuer: str = ISSUER) -> Enrolment:
    """A new TOTP secret for the user, waiting for its first code (`confirm_enrolment`);
    `Conflict` while 2FA is on (turn it off first)."""
    import pyotp

    user = _user(db, user_id)
    if user["totp_enabled_at"] is not None:
        raise Conflict("two-factor authentication is already on: turn it off first to re-enrol")
    secret = pyotp.random_base32()
    db.execute(
        "UPDATE users SET totp_secret = :s, totp_enabled_at = NULL, totp_last_step = NULL"
        " WHERE id = :id",
        {"s": secret, "id": user_id},
    )
    uri = pyotp.TOTP(secret).provisioning_uri(name=str(user["email"]), issuer_name=issuer)
    audit.record(db, org=None, action="user.2fa_start", target=str(user["email"]))
    return Enrolment(secret=secret, otpauth_uri=uri, qr_svg=_qr_svg(uri))


def _matching_step(secret: str, code: str, now: float) -> int | None:
    """The time step (now's, the one before or after) whose code `code` is, or None."""
    import pyotp

    code = code.strip().replace(" ", "")
    if not (code.isascii() and code.isdigit() and len(code) == 6):
        return None
    totp = pyotp.TOTP(secret)
    for offset in (0, -1, 1):  # valid_window=1, each step on its own to learn which matched
        at = now + offset * totp.interval
        if totp.verify(code, for_time=at):
            return int(at // totp.interval)
    return None


def _use_step(db: Database, user_id: int, step: int) -> bool:
    """Mark `step` used; False if it (or a later one) was used already: a replay."""
    return bool(
        db.execute(
            "UPDATE users SET totp_last_step = :step WHERE id = :id"
            " AND (totp_last_step IS NULL OR totp_last_step < :step)",
            {"step": step, "id": user_id},
        )
    )


def _new_recovery_code() -> str:
    raw = "".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(_RECOVERY_LENGTH))
    return f"{raw[:5]}-{raw[5:]}"


def _normalize_recovery(code: str) -> str:
    return code.strip().lower().replace("-", "").replace(" ", "")


def confirm_enrolment(
    *, db: Database, user_id: int, code: str, now: float | None = None
) -> list[str]:
    """Turn 2FA on with a first valid code; the ten recovery codes, shown this once."""
    now = time.time() if now is None else now
    user = _user(db, user_id)
    if user["totp_enabled_at"] is not None:
        raise Conflict("two-factor authentication is already on")
    if not user["totp_secret"]:
        raise InvalidInput("start the enrolment first: POST /api/v1/me/2fa")
    step = _matching_step(str(user["totp_secret"]), code, now)
    if step is None:
        raise InvalidInput("the code is wrong: enter the 6 digits your authenticator app shows now")
    codes = [_new_recovery_code() for _ in range(RECOVERY_CODES)]
    with db.transaction():
        if not _use_step(db, user_id, step):
            raise InvalidInput("this code was used already: wait for the next one")
        db.execute(
            "UPDATE users SET totp_enabled_at = :now WHERE id = :id", {"now": now, "id": user_id}
        )
        db.execute("DELETE FROM recovery_codes WHERE user_id = :id", {"id": user_id})
        db.executemany(
            "INSERT INTO recovery_codes (user_id, code_hash) VALUES (:id, :h)",
            [{"id": user_id, "h": digest(_normalize_recovery(c))} for c in codes],
        )
        audit.record(db, org=None, action="user.2fa_enable", target=str(user["email"]))
    return codes


def verify(*, db: Database, user_id: int, code: str, now: float | None = None) -> Factor:
    """Accept a current TOTP code (once) or an unused recovery code (using it up);
    `Unauthorized` otherwise. Throttling is the caller's part."""
    now = time.time() if now is None else now
    user = _user(db, user_id)
    if user["totp_enabled_at"] is None or not user["totp_secret"]:
        raise Unauthorized("two-factor authentication is not on for this account")
    step = _matching_step(str(user["totp_secret"]), code, now)
    if step is not None:
        if _use_step(db, user_id, step):
            return "totp"
        raise Unauthorized("this code was used already: wait for the next one")
    normalized = _normalize_recovery(code)
    if len(normalized) == _RECOVERY_LENGTH and db.execute(
        "UPDATE recovery_codes SET used_at = :now"
        " WHERE user_id = :id AND code_hash = :h AND used_at IS NULL",
        {"now": now, "id": user_id, "h": digest(normalized)},
    ):
        return "recovery"
    raise Unauthorized("the code is wrong: enter the 6 digits your app shows, or a recovery code")


def recovery_codes_left(*, db: Database, user_id: int) -> int:
    return int(
        db.scalar(
            "SELECT count(*) FROM recovery_codes WHERE user_id = :id AND used_at IS NULL",
            {"id": user_id},
        )
    )


def _turn_off(db: Database, user_id: int) -> None:
    db.execute(
        "UPDATE users SET totp_secret = NULL, totp_enabled_at = NULL, totp_last_step = NULL"
        " WHERE id = :id",
        {"id": user_id},
    )
    db.execute("DELETE FROM recovery_codes WHERE user_id = :id", {"id": user_id})


def disable(
    *,
    db: Database,
    user_id: int,
    code_or_password: str,
    client_ip: str | None = None,
) -> None:
    """Turn 2FA off, proven by a current code, a recovery code or the password.

    A wrong proof counts as a failed sign-in (`smtpy.accounts.throttle`) and is
    `InvalidInput`."""
    user = _user(db, user_id)
    email = str(user["email"])
    if user["totp_enabled_at"] is None and not user["totp_secret"]:
        raise InvalidInput("two-factor authentication is not on")
    throttle.check(db=db, email=email, client_ip=client_ip)
    proven = False
    if user["totp_enabled_at"] is not None:
        try:
            verify(db=db, user_id=user_id, code=code_or_password)
            proven = True
        except Unauthorized:
            pass
    if not proven:
        stored = str(user["password_hash"]) if user["password_hash"] else None
        proven = passwords.verify(stored, code_or_password)
    if not proven:
        throttle.failed(db=db, email=email, client_ip=client_ip)
        raise InvalidInput("the code or the password is wrong: two-factor authentication stays on")
    with db.transaction():
        _turn_off(db, user_id)
        audit.record(db, org=None, action="user.2fa_disable", target=email)
