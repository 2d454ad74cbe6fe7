"""DKIM key material: generate keys, derive their DNS records, name selectors.

Pure functions, no I/O. A key is stored as text (the `private_key` of
`GeneratedKey`: an unencrypted PKCS#8 PEM block, for both algorithms) and
published as a TXT record at `<selector>._domainkey.<domain>`:

    rsa       v=DKIM1; k=rsa; p=<base64 of the DER SubjectPublicKeyInfo>   (RFC 6376)
    ed25519   v=DKIM1; k=ed25519; p=<base64 of the raw 32-byte key>        (RFC 8463)

RSA keys are 1024, 2048 (the default), 3072 or 4096 bits; 1024 is there for
DNS hosting panels that cannot hold a longer TXT value, RFC 8301 asks for
2048. Ed25519 signatures are short and fast, but many receivers still verify
RSA only: a domain that wants Ed25519 should publish and sign with both keys
(`smtpy.dkim.sign.Signer` signs once with each key it is given).

Selectors: `default_selector()` names a key after the month it was made,
`smtpy202611` for November 2026, so a rotated key gets a new name and the old
record can stay published while mail signed with it is still in transit.

Every error is `smtpy.errors.InvalidInput` with a one-line reason; no message
ever contains key material.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from smtpy.errors import InvalidInput

__all__ = [
    "MIN_RSA_BITS",
    "RSA_KEY_SIZES",
    "Algorithm",
    "GeneratedKey",
    "PrivateKey",
    "check_algorithm",
    "default_selector",
    "generate_key",
    "load_private_key",
    "public_record",
    "validate_selector",
]

Algorithm = Literal["rsa", "ed25519"]
PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

#: RSA modulus sizes that `generate_key` accepts.
RSA_KEY_SIZES = (1024, 2048, 3072, 4096)
#: The smallest RSA key receivers accept (RFC 8301); smaller stored keys are refused.
MIN_RSA_BITS = 1024
#: Longest selector accepted: one DNS label's worth, leaving room for the domain.
SELECTOR_MAX_LENGTH = 63

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


@dataclass(frozen=True)
class GeneratedKey:
    """A new DKIM key pair: the text to store and the TXT value to publish.

    `private_key` is secret: store it, never log or print it (it is left out
    of `repr`).
    """

    algorithm: Algorithm
    bits: int | None  # RSA modulus size; None for ed25519
    private_key: str = field(repr=False)
    public_record: str


def check_algorithm(algorithm: str) -> Algorithm:
    """Return `algorithm` as an `Algorithm`, or raise `InvalidInput`."""
    if algorithm == "rsa":
        return "rsa"
    if algorithm == "ed25519":
        return "ed25519"
    raise InvalidInput(f"unknown DKIM key algorithm {algorithm[:40]!r}: use 'rsa' or 'ed25519'")


def generate_key(algorithm: Algorithm = "rsa", bits: int = 2048) -> GeneratedKey:
    """Generate a DKIM key pair.

    `bits` is the RSA modulus size, one of `RSA_KEY_SIZES`; it is ignored for
    ed25519, whose keys have one size.
    """
    algorithm = check_algorithm(algorithm)
    key: PrivateKey
    if algorithm == "rsa":
        if isinstance(bits, bool) or not isinstance(bits, int) or bits not in RSA_KEY_SIZES:
            raise InvalidInput(
                f"RSA key size must be 1024, 2048, 3072 or 4096 bits, not {str(bits)[:20]}"
            )
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        size: int | None = bits
    else:
        key = ed25519.Ed25519PrivateKey.generate()
        size = None
    pem = key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    ).decode("ascii")
    return GeneratedKey(
        algorithm=algorithm,
        bits=size,
        private_key=pem,
        public_record=_record_for(key),
    )


def load_private_key(algorithm: Algorithm, private_key: str) -> PrivateKey:
    """Parse a stored private key (PEM: PKCS#8, or PKCS#1 for RSA) of `algorithm`.

    Raises `InvalidInput` if the text is not such a key, is of the other
    algorithm, or is an RSA key shorter than `MIN_RSA_BITS`.
    """
    algorithm = check_algorithm(algorithm)
    try:
        key = serialization.load_pem_private_key(private_key.encode("ascii"), password=None)
    except (ValueError, TypeError, UnicodeError):
        # No chaining: the parser's error could quote the key.
        raise InvalidInput(
            f"the stored {algorithm} private key is not an unencrypted PEM key"
        ) from None
    if algorithm == "rsa":
        if not isinstance(key, rsa.RSAPrivateKey):
            raise InvalidInput("the stored private key is not an RSA key")
        if key.key_size < MIN_RSA_BITS:
            raise InvalidInput(
                f"the stored RSA key has {key.key_size} bits; receivers need {MIN_RSA_BITS}"
            )
        return key
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise InvalidInput("the stored private key is not an Ed25519 key")
    return key


def public_record(algorithm: Algorithm, private_key: str) -> str:
    """Return the DKIM TXT record value for a stored private key."""
    return _record_for(load_private_key(algorithm, private_key))


def _record_for(key: PrivateKey) -> str:
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        der = public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode("ascii")
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "v=DKIM1; k=ed25519; p=" + base64.b64encode(raw).decode("ascii")


def default_selector(now: datetime | None = None) -> str:
    """Return the selector for a key made at `now` (default: the current time).

    The form is `smtpy` followed by the UTC year and month: `smtpy202611`. Two
    keys made in the same month get the same name; the caller checks for a
    collision and picks another name (for example with `-2` appended).
    """
    if now is None:
        now = datetime.now(UTC)
    elif now.tzinfo is not None:
        now = now.astimezone(UTC)
    return f"smtpy{now.year:04d}{now.month:02d}"


def validate_selector(selector: str) -> str:
    """Return `selector` lower-cased, or raise `InvalidInput`.

    A selector is one or more dot-separated DNS labels (RFC 6376 §3.1): each
    label 1-63 letters, digits and hyphens, not starting or ending with a
    hyphen; at most `SELECTOR_MAX_LENGTH` characters in all.
    """
    shown = repr(selector[: SELECTOR_MAX_LENGTH + 1])
    if not selector:
        raise InvalidInput("the DKIM selector is empty")
    if len(selector) > SELECTOR_MAX_LENGTH:
        raise InvalidInput(
            f"DKIM selector {shown}... is longer than {SELECTOR_MAX_LENGTH} characters"
        )
    lowered = selector.lower()
    if not lowered.isascii():
        raise InvalidInput(f"DKIM selector {shown} must be ASCII letters, digits, '-' and '.'")
    for label in lowered.split("."):
        if not _LABEL.fullmatch(label):
            raise InvalidInput(
                f"DKIM selector {shown} is not a DNS name: use letters, digits and '-' "
                "in dot-separated labels that do not start or end with '-'"
            )
    return lowered
