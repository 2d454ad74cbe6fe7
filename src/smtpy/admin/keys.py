"""DKIM keys: generate, list, rotate, remove. Private keys never leave the store."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from smtpy.admin.domains import domain_id
from smtpy.errors import Conflict, InvalidInput, NotFound
from smtpy.mail.addresses import display_domain
from smtpy.store.db import Database

ALGORITHMS = ("rsa", "ed25519")


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """A key as listings show it: no private part."""

    id: int
    domain: str
    selector: str
    algorithm: str
    bits: int | None
    active: bool
    public_record: str
    created_at: float

    @property
    def dns_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    def public(self) -> dict[str, Any]:
        return {
            "domain": display_domain(self.domain),
            "selector": self.selector,
            "algorithm": self.algorithm,
            "bits": self.bits,
            "active": self.active,
            "dns_name": self.dns_name,
            "public_record": self.public_record,
            "created_at": self.created_at,
        }


_SELECT = (
    "SELECT k.id, d.name AS domain, k.selector, k.algorithm, k.bits, k.active, k.public_record,"
    " k.created_at FROM dkim_keys k JOIN domains d ON d.id = k.domain_id"
)


def _info(row: dict[str, Any]) -> KeyInfo:
    return KeyInfo(
        id=int(row["id"]),
        domain=row["domain"],
        selector=row["selector"],
        algorithm=row["algorithm"],
        bits=row["bits"],
        active=bool(row["active"]),
        public_record=row["public_record"],
        created_at=float(row["created_at"]),
    )


def _free_selector(db: Database, did: int, base: str) -> str:
    taken = {
        row["selector"]
        for row in db.all("SELECT selector FROM dkim_keys WHERE domain_id = :d", {"d": did})
    }
    if base not in taken:
        return base
    n = 2
    while f"{base}-{n}" in taken:
        n += 1
    return f"{base}-{n}"


def create_key(
    db: Database,
    did: int,
    domain: str,
    *,
    selector: str | None = None,
    algorithm: str = "rsa",
    bits: int = 2048,
) -> KeyInfo:
    """Generate and store an active key (inside the caller's transaction, if any)."""
    from smtpy.dkim.keys import default_selector, generate_key, validate_selector

    if algorithm not in ALGORITHMS:
        raise InvalidInput(f"algorithm {algorithm!r} is not one of {', '.join(ALGORITHMS)}")
    if selector is None:
        base = default_selector()
        selector = _free_selector(db, did, base if algorithm == "rsa" else f"{base}e")
    else:
        selector = validate_selector(selector)
        if db.one(
            "SELECT id FROM dkim_keys WHERE domain_id = :d AND selector = :s",
            {"d": did, "s": selector},
        ):
            raise Conflict(f"{display_domain(domain)} already has a key with selector {selector}")
    key = generate_key(algorithm, bits)  # type: ignore[arg-type]
    try:
        new_id = db.insert(
            "INSERT INTO dkim_keys (domain_id, selector, algorithm, bits, private_key,"
            " public_record, active, created_at)"
            " VALUES (:d, :s, :a, :b, :priv, :pub, :active, :now) RETURNING id",
            {
                "d": did,
                "s": selector,
                "a": key.algorithm,
                "b": key.bits,
                "priv": key.private_key,
                "pub": key.public_record,
                "active": True,
                "now": time.time(),
            },
        )
    except Exception as exc:
        if Database.is_unique_violation(exc):  # another node took the selector just now
            raise Conflict(
                f"{display_domain(domain)} already has a key with selector {selector}"
            ) from None
        raise
    row = db.one(_SELECT + " WHERE k.id = :id", {"id": new_id})
    assert row is not None
    return _info(row)


def generate(
    db: Database,
    domain: str,
    *,
    selector: str | None = None,
    algorithm: str = "rsa",
    bits: int = 2048,
) -> KeyInfo:
    """Add an active key to a domain (other keys keep signing)."""
    did, alabel = domain_id(db, domain)
    with db.transaction():
        return create_key(db, did, alabel, selector=selector, algorithm=algorithm, bits=bits)


def list_keys(db: Database, *, domain: str | None = None) -> list[KeyInfo]:
    order = " ORDER BY d.name, k.created_at, k.id"
    if domain is None:
        return [_info(row) for row in db.all(_SELECT + order)]
    did, _ = domain_id(db, domain)
    return [_info(row) for row in db.all(_SELECT + " WHERE k.domain_id = :d" + order, {"d": did})]


def rotate(
    db: Database,
    domain: str,
    *,
    selector: str | None = None,
    algorithm: str | None = None,
    bits: int = 2048,
) -> tuple[KeyInfo, list[KeyInfo]]:
    """A new key signs from now on; the active keys of that algorithm stop signing but stay
    published until removed. Returns (new key, retired keys)."""
    did, alabel = domain_id(db, domain)
    current = [k for k in list_keys(db, domain=alabel) if k.active]
    algo = algorithm or (current[0].algorithm if current else "rsa")
    retired = [k for k in current if k.algorithm == algo]
    with db.transaction():
        new = create_key(db, did, alabel, selector=selector, algorithm=algo, bits=bits)
        for key in retired:
            db.execute(
                "UPDATE dkim_keys SET active = :f WHERE id = :id", {"f": False, "id": key.id}
            )
    return new, retired


def remove(db: Database, domain: str, selector: str) -> KeyInfo:
    did, alabel = domain_id(db, domain)
    row = db.one(
        _SELECT + " WHERE k.domain_id = :d AND k.selector = :s", {"d": did, "s": selector.lower()}
    )
    if row is None:
        raise NotFound(
            f"{display_domain(alabel)} has no key with selector {selector}; see `smtpy key list`"
        )
    db.execute("DELETE FROM dkim_keys WHERE id = :id", {"id": row["id"]})
    return _info(row)


def signing_keys(db: Database, domain: str) -> list[dict[str, Any]]:
    """Active keys with their private parts, for the daemon's signer only."""
    return db.all(
        "SELECT k.selector, k.algorithm, k.private_key FROM dkim_keys k JOIN domains d"
        " ON d.id = k.domain_id WHERE d.name = :name AND k.active = :t ORDER BY k.id",
        {"name": domain, "t": True},
    )
