"""Sender Rewriting Scheme (SRS), as postsrsd, libsrs2 and Mail::SRS compute it.

A forwarder that kept the original envelope sender would fail the sender's SPF
check, so smtpy rewrites the sender into an address at its own SRS domain. The
new address encodes the original one and is signed, so bounces find their way
back while nobody can use smtpy to send mail to an address of their choosing:

    alice@example.org  →  SRS0=HHHH=TT=example.org=alice@fwd.example.net
                               │    │  │           └ original local part, intact
                               │    │  └ original domain
                               │    └ day number, 2 base-32 chars (wraps every 1024 days)
                               └ HMAC-SHA1(secret, TT + domain + local), base64, 4 chars

A sender that is already SRS0 (smtpy is the second forwarder) becomes SRS1: it
names the first forwarder, so a bounce goes straight back there. The part after
the SRS0 tag, separator included, is kept as is, hence the ``==``:

    SRS0=HHHH=TT=example.org=alice@first.example
        →  SRS1=GGGG=first.example==HHHH=TT=example.org=alice@fwd.example.net

An SRS1 sender is re-signed with our secret and keeps its first forwarder.
Reversing SRS0 gives the original sender; reversing SRS1 gives the SRS0 address
at the first forwarder. SRS1 carries no timestamp: the first forwarder checks it.

Details that must match the reference implementations byte for byte, so that
addresses interoperate both ways given the same secret:

- The hash covers the fields concatenated, as bytes (UTF-8 for SMTPUTF8 local
  parts), with ASCII letters lower-cased and every other byte left alone.
- The hash is compared case-insensitively, since some MTAs smash the case of
  local parts; like Mail::SRS, a hash longer than ``hash_length`` is accepted
  if it is a longer prefix of the HMAC.
- Timestamp: ``unix_time // 86400``, its two low 5-bit groups in the alphabet
  ``A-Z2-7``. Reversing accepts ``=``, ``+`` or ``-`` after the SRS0/SRS1 tag;
  forwarding always writes ``=``.

Where the references do something unsafe or undefined, this module is stricter:
a timestamp is exactly two characters, no field may be empty, a sender domain
containing ``=`` is refused (the hash input would be ambiguous), and a sender
that merely looks like SRS1 (``srs1-team@example.com``) is wrapped in SRS0
instead of producing garbage. It also accepts a timestamp up to one day in the
future, as clock skew. The domain an address was sent to is not checked here:
the caller decides which domains it serves.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from dataclasses import dataclass, field

from smtpy.errors import ConfigError, InvalidInput

__all__ = [
    "SRS",
    "SRSBadHash",
    "SRSError",
    "SRSExpired",
    "SRSMalformed",
    "is_srs_address",
]


class SRSError(InvalidInput):
    """An address could not be SRS-rewritten or reversed; the message says why."""


class SRSMalformed(SRSError):
    """The address is not one SRS can rewrite or reverse."""


class SRSBadHash(SRSError):
    """The hash does not match: the address was forged, mangled or signed elsewhere."""


class SRSExpired(SRSError):
    """The hash is valid but the timestamp is too old (or too far in the future)."""


_SRS0 = "SRS0"
_SRS1 = "SRS1"
_SEP = "="  # between fields; the one after the tag may also be '+' or '-'
_TAG_SEPARATORS = frozenset("=+-")
_BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_BASE32_VALUE = {char: value for value, char in enumerate(_BASE32)}
_SECONDS_PER_DAY = 60 * 60 * 24
_TIME_SLOTS = len(_BASE32) ** 2  # two characters: the day number wraps every 1024 days
_CLOCK_SKEW_DAYS = 1
_MAX_HASH_LENGTH = 27  # unpadded base64 of a 20-byte SHA-1 digest
_MIN_HASH_LENGTH = 4
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST_NAME = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(?:\.{_LABEL})*\Z")


@dataclass(frozen=True)
class SRS:
    """SRS with our secrets and domain; `forward` rewrites, `reverse` undoes.

    The first secret signs; every secret verifies, so a new secret can be put
    first while addresses signed with the old one keep working for max_age_days.
    Invalid settings raise `ConfigError`.
    """

    secrets: tuple[bytes, ...] = field(repr=False)
    domain: str
    max_age_days: int = 21
    hash_length: int = 4

    def __post_init__(self) -> None:
        secrets = tuple(self.secrets)
        if not secrets:
            raise ConfigError("SRS needs at least one secret")
        if not all(isinstance(secret, bytes) and secret for secret in secrets):
            raise ConfigError("SRS secrets must be non-empty byte strings")
        object.__setattr__(self, "secrets", secrets)

        domain = self.domain.lower().removesuffix(".")
        if not _HOST_NAME.match(domain):
            raise ConfigError(
                f"SRS domain {self.domain!r} is not a host name (write an IDNA A-label)"
            )
        object.__setattr__(self, "domain", domain)

        if not _MIN_HASH_LENGTH <= self.hash_length <= _MAX_HASH_LENGTH:
            raise ConfigError(
                f"SRS hash length must be between {_MIN_HASH_LENGTH} and {_MAX_HASH_LENGTH},"
                f" not {self.hash_length}"
            )
        max_age_limit = _TIME_SLOTS - _CLOCK_SKEW_DAYS - 1
        if not 1 <= self.max_age_days <= max_age_limit:
            raise ConfigError(
                f"SRS maximum age must be between 1 and {max_age_limit} days,"
                f" not {self.max_age_days}"
            )

    def forward(self, sender: str, *, now: float | None = None) -> str:
        """Rewrite an envelope sender into an address at our SRS domain.

        The null sender "" stays "". `now` is a Unix time (default: the clock).
        Raises `SRSMalformed` if the sender cannot be rewritten.
        """
        if sender == "":
            return ""
        local, host = _split_address(sender, "sender")
        if _SEP in host:
            raise SRSMalformed(f"sender {sender!r}: the domain contains {_SEP!r}")
        tag = _tag(local)
        if tag == _SRS0:
            # Guarded SRS: keep everything after the tag, separator included.
            rest = local[len(_SRS0) :]
            return self._srs1(sender, host, rest)
        if tag == _SRS1:
            parts = local[len(_SRS1) + 1 :].split(_SEP, 2)
            if len(parts) == 3 and all(parts):
                _, first_forwarder, rest = parts
                return self._srs1(sender, first_forwarder, rest)
            # Looks like SRS1 but is not: rewrite it as an ordinary sender.
        timestamp = _timestamp(now)
        signature = self._sign(sender, timestamp, host, local)
        return f"{_SRS0}{_SEP}{_SEP.join((signature, timestamp, host, local))}@{self.domain}"

    def reverse(self, address: str, *, now: float | None = None) -> str:
        """Return the sender an SRS address stands for.

        SRS0 gives the original sender; SRS1 gives the SRS0 address at the first
        forwarder. Raises `SRSMalformed`, `SRSBadHash` or `SRSExpired`.
        """
        local, _ = _split_address(address, "SRS address")
        tag = _tag(local)
        if tag is None:
            raise SRSMalformed(f"{address!r} is not an SRS address")
        body = local[len(tag) + 1 :]
        if tag == _SRS1:
            parts = body.split(_SEP, 2)
            if len(parts) != 3 or not all(parts) or parts[2][0] not in _TAG_SEPARATORS:
                raise SRSMalformed(f"SRS1 address {address!r} is not SRS1=HASH=FORWARDER=SEP...")
            signature, first_forwarder, rest = parts
            self._verify(address, signature, first_forwarder, rest)
            return f"{_SRS0}{rest}@{first_forwarder}"

        parts = body.split(_SEP, 3)
        if len(parts) != 4 or not all(parts):
            raise SRSMalformed(f"SRS0 address {address!r} is not SRS0=HASH=TIMESTAMP=DOMAIN=LOCAL")
        signature, timestamp, host, orig_local = parts
        day = _decode_timestamp(timestamp, address)
        # The hash first: SRSExpired then means "genuine but stale".
        self._verify(address, signature, timestamp, host, orig_local)
        self._check_age(day, address, now)
        return f"{orig_local}@{host}"

    def _srs1(self, sender: str, first_forwarder: str, rest: str) -> str:
        signature = self._sign(sender, first_forwarder, rest)
        return f"{_SRS1}{_SEP}{_SEP.join((signature, first_forwarder, rest))}@{self.domain}"

    def _sign(self, address: str, *fields: str) -> str:
        return _digest(self.secrets[0], _hash_input(address, fields))[: self.hash_length]

    def _verify(self, address: str, signature: str, *fields: str) -> None:
        if not self.hash_length <= len(signature) <= _MAX_HASH_LENGTH:
            raise SRSBadHash(
                f"SRS address {address!r}: the hash {signature!r} has the wrong length"
            )
        given = _to_bytes(signature, address).lower()
        data = _hash_input(address, fields)
        valid = False
        for secret in self.secrets:
            expected = _digest(secret, data)[: len(signature)].encode("ascii").lower()
            valid |= hmac.compare_digest(given, expected)
        if not valid:
            raise SRSBadHash(f"SRS address {address!r}: the hash does not match")

    def _check_age(self, day: int, address: str, now: float | None) -> None:
        age = (_day(now) - day) % _TIME_SLOTS
        if age <= self.max_age_days or age >= _TIME_SLOTS - _CLOCK_SKEW_DAYS:
            return
        if age > _TIME_SLOTS // 2:
            raise SRSExpired(
                f"SRS address {address!r}: the timestamp is {_TIME_SLOTS - age} days in the future"
            )
        raise SRSExpired(
            f"SRS address {address!r} expired: it is {age} days old"
            f" (the limit is {self.max_age_days})"
        )


def is_srs_address(address: str) -> bool:
    """Whether the local part starts with SRS0 or SRS1 (any case) and a separator.

    True does not mean the address is valid: `SRS.reverse` checks that.
    """
    local, at, domain = address.rpartition("@")
    return bool(at) and bool(domain) and _tag(local) is not None


def _tag(local: str) -> str | None:
    """'SRS0' or 'SRS1' if the local part starts with it and a separator, else None."""
    prefix = local[:4]
    # ASCII only: str.upper() would turn 'ſ' (long s) into 'S'.
    if len(local) > 4 and local[4] in _TAG_SEPARATORS and prefix.isascii():
        tag = prefix.upper()
        if tag in (_SRS0, _SRS1):
            return tag
    return None


def _split_address(address: str, what: str) -> tuple[str, str]:
    local, at, domain = address.rpartition("@")
    if not at:
        raise SRSMalformed(f"{what} {address!r} has no '@'")
    if not local:
        raise SRSMalformed(f"{what} {address!r} has an empty local part")
    if not domain:
        raise SRSMalformed(f"{what} {address!r} has an empty domain")
    return local, domain


def _to_bytes(text: str, address: str) -> bytes:
    # surrogateescape gives back the original bytes of an undecodable address.
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise SRSMalformed(f"address {address!r} is not valid UTF-8") from None


def _hash_input(address: str, fields: tuple[str, ...]) -> bytes:
    # bytes.lower() folds ASCII letters only, as libsrs2 (tolower in the C
    # locale) and Mail::SRS (lc on byte strings) do.
    return b"".join(_to_bytes(text, address).lower() for text in fields)


def _digest(secret: bytes, data: bytes) -> str:
    """The HMAC-SHA1 in base64 without padding (27 characters)."""
    mac = hmac.new(secret, data, hashlib.sha1).digest()
    return base64.b64encode(mac).decode("ascii")[:_MAX_HASH_LENGTH]


def _day(now: float | None) -> int:
    return int((time.time() if now is None else now) // _SECONDS_PER_DAY)


def _timestamp(now: float | None) -> str:
    day = _day(now)
    return _BASE32[(day >> 5) & 31] + _BASE32[day & 31]


def _decode_timestamp(timestamp: str, address: str) -> int:
    upper = timestamp.upper() if timestamp.isascii() else ""
    high = _BASE32_VALUE.get(upper[:1])
    low = _BASE32_VALUE.get(upper[1:])
    if len(timestamp) != 2 or high is None or low is None:
        raise SRSMalformed(f"SRS address {address!r}: bad timestamp {timestamp!r}")
    return high * len(_BASE32) + low
