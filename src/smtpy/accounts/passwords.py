"""Passwords: argon2id with argon2-cffi's defaults, rehashed when those change.

An unknown account costs the same time as a wrong password (`verify` checks
against a fixed dummy hash), so the answer and its timing say nothing about
which e-mail addresses have accounts.
"""

from __future__ import annotations

from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from smtpy.errors import InvalidInput

MIN_LENGTH = 10
MAX_LENGTH = 1024  # argon2 takes any length; this bounds the work one request can cause


@cache
def _hasher() -> PasswordHasher:
    return PasswordHasher()  # argon2id, RFC 9106 low-memory profile (argon2-cffi's default)


@cache
def _dummy_hash() -> str:
    return _hasher().hash("smtpy: no such account")


def check_strength(password: str) -> None:
    """Refuse a password that is too short or too long (`InvalidInput`)."""
    if len(password) < MIN_LENGTH:
        raise InvalidInput(f"the password is too short: use at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise InvalidInput(f"the password is too long: use at most {MAX_LENGTH} characters")
    if not password.strip():
        raise InvalidInput("the password is only spaces: choose another")


def hash_password(password: str) -> str:
    """The argon2id hash to store for a new password (checked with `check_strength` first)."""
    check_strength(password)
    return _hasher().hash(password)


def verify(stored: str | None, password: str) -> bool:
    """Whether `password` matches `stored`; `stored` None (unknown account, or no password
    set) takes the same time and is False."""
    if len(password) > MAX_LENGTH:
        password = password[:MAX_LENGTH]  # same work as any other wrong password
    try:
        return _hasher().verify(stored or _dummy_hash(), password) and stored is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(stored: str) -> bool:
    """Whether a hash that just verified was made with other parameters than today's."""
    try:
        return _hasher().check_needs_rehash(stored)
    except InvalidHashError:
        return True
