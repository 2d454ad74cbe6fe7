"""Random secrets handed to people (session cookies, API keys, mailed links, recovery codes),
and the digests the store keeps instead of them.

A secret of 32 random bytes needs no slow hash: SHA-256 of it is as unguessable
as the secret, and lets the store find the row by an indexed equality.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets


def new_token(nbytes: int = 32) -> str:
    """A URL-safe random secret of `nbytes` random bytes."""
    return secrets.token_urlsafe(nbytes)


def digest(token: str) -> str:
    """The SHA-256 of a secret, in hex: what the store keeps."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def same(a: str, b: str) -> bool:
    """Compare two secrets (or digests) in constant time."""
    return hmac.compare_digest(
        a.encode("utf-8", "surrogateescape"), b.encode("utf-8", "surrogateescape")
    )
