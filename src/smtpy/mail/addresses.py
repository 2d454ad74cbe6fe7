"""Mail addresses and domain names: parsing, validation and normalization.

Domains are stored as IDNA A-labels in lower case (`xn--bcher-kva.example`) and
shown as U-labels (`bücher.example`). Local parts keep the case they were given
but compare case-insensitively (`local_key`). Local parts may be UTF-8
(SMTPUTF8, RFC 6531).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import idna

from smtpy.errors import InvalidInput

MAX_LOCAL_PART = 64  # octets, RFC 5321 §4.5.3.1.1
MAX_DOMAIN = 253
MAX_ADDRESS = 254

# RFC 5322 atext, widened by RFC 6531 to every non-ASCII character.
_ATEXT = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\u0080-\U0010ffff]"
_DOT_ATOM = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*")
_QUOTED = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*"')
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def normalize_domain(text: str) -> str:
    """Return the lower-case A-label form of a domain name, or raise InvalidInput."""
    name = text.strip().rstrip(".")
    if not name:
        raise InvalidInput("the domain name is empty")
    if name.isascii():
        name = name.lower()
    else:
        try:
            name = idna.encode(name, uts46=True).decode("ascii")
        except idna.IDNAError as exc:
            raise InvalidInput(f"{text!r} is not a valid domain name: {exc}") from None
    labels = name.split(".")
    if len(name) > MAX_DOMAIN or len(labels) < 2:
        raise InvalidInput(
            f"{text!r} is not a valid domain name: expected a fully qualified name like example.org"
        )
    for label in labels:
        if not _LABEL.fullmatch(label):
            raise InvalidInput(f"{text!r} is not a valid domain name: bad label {label!r}")
        if label.startswith("xn--"):
            try:
                idna.decode(label)
            except idna.IDNAError:
                raise InvalidInput(
                    f"{text!r} is not a valid domain name: bad IDNA label {label!r}"
                ) from None
    if labels[-1].isdigit():
        raise InvalidInput(f"{text!r} is not a domain name (it looks like an IP address)")
    return name


def display_domain(alabel: str) -> str:
    """The U-label form of a stored A-label domain, for people to read."""
    if "xn--" not in alabel:
        return alabel
    try:
        return str(idna.decode(alabel))
    except idna.IDNAError:
        return alabel


def validate_local_part(local: str) -> str:
    """Check a local part (dot-atom or quoted string, UTF-8 allowed) and return it unchanged."""
    if not local:
        raise InvalidInput("the local part (before @) is empty")
    if len(local.encode("utf-8")) > MAX_LOCAL_PART:
        raise InvalidInput(f"the local part {local!r} is longer than {MAX_LOCAL_PART} bytes")
    if not (_DOT_ATOM.fullmatch(local) or _QUOTED.fullmatch(local)):
        raise InvalidInput(f"the local part {local!r} is not valid in a mail address")
    return local


def local_key(local: str) -> str:
    """The case-insensitive form of a local part, used for matching."""
    return local.casefold()


@dataclass(frozen=True, slots=True)
class Address:
    """A parsed mail address: local part as given, domain as A-label."""

    local: str
    domain: str

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"

    @property
    def display(self) -> str:
        return f"{self.local}@{display_domain(self.domain)}"

    @property
    def key(self) -> str:
        """Case-insensitive identity: `local_key@domain`."""
        return f"{local_key(self.local)}@{self.domain}"

    @property
    def needs_smtputf8(self) -> bool:
        return not self.local.isascii()


def parse_address(text: str) -> Address:
    """Parse `local@domain` (angle brackets allowed), or raise InvalidInput."""
    value = text.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1].strip()
    local, at, domain = value.rpartition("@")
    if not at:
        raise InvalidInput(f"{text!r} is not a mail address: expected local@domain")
    if len(value.encode("utf-8")) > MAX_ADDRESS * 2:
        raise InvalidInput(f"{text!r} is too long for a mail address")
    try:
        return Address(validate_local_part(local), normalize_domain(domain))
    except InvalidInput as exc:
        raise InvalidInput(f"{text!r} is not a valid mail address: {exc}") from None


def split_address(address: str) -> tuple[str, str]:
    """Split an already-valid address into (local, domain) without validating it."""
    local, _, domain = address.rpartition("@")
    return local, domain.lower()
