"""DKIM keys: generate, list, rotate, remove. Private keys never leave the store.

The admin functions act inside one organization (`org`); `signing_keys` is the
daemon's, for any served domain.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict

from smtpy.accounts.audit import record
from smtpy.admin.domains import domain_id
from smtpy.errors import Conflict, InvalidInput, NotFound
from smtpy.mail.addresses import display_domain
from smtpy.store.db import Database

ALGORITHMS = ("rsa", "ed25519")


class KeyCreate(BaseModel):
    model_config = ConfigDict(defer_build=True)

    selector: str | None = None  # None: smtpyYYYYMM, or the next free variant of it
    algorithm: str = "rsa"  # rsa | ed25519
    bits: int = 2048  # RSA only


class KeyRotate(BaseModel):
    model_config = ConfigDict(defer_build=True)

    selector: str | None = None
    algorithm: str | None = None  # None: the algorithm of the active key
    bits: int = 2048


class KeyPublic(BaseModel):
    """A key as listings show it: no private part (`key list --json` prints these keys)."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    domain: str  # U-label
    selector: str
    algorithm: str
    bits: int | None
    active: bool
    dns_name: str  # where the TXT record goes (A-label)
    public_record: str
    created_at: float


class KeyRotation(BaseModel):
    model_config = ConfigDict(frozen=True, defer_build=True)

    new: KeyPublic  # signs from now on
    retired: list[KeyPublic]  # stopped signing; still published until removed


_SELECT = (
    "SELECT k.id, d.name AS domain, k.selector, k.algorithm, k.bits, k.active, k.public_record,"
    " k.created_at FROM dkim_keys k JOIN domains d ON d.id = k.domain_id"
)


def _public(row: dict[str, Any]) -> KeyPublic:
    return KeyPublic(
        domain=display_domain(row["domain"]),
        selector=row["selector"],
        algorithm=row["algorithm"],
        bits=row["bits"],
        active=bool(row["active"]),
        dns_name=f"{row['selector']}._domainkey.{row['domain']}",
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


def create_key(*, db: Database, did: int, domain: str, key: KeyCreate) -> KeyPublic:
    """Generate and store an active key for a domain (`did`: its id; `domain`: its A-label),
    inside the caller's transaction if any."""
    from smtpy.dkim.keys import default_selector, validate_selector
    from smtpy.dkim.keys import generate_key as key_pair

    algorithm, selector = key.algorithm, key.selector
    if algorithm not in ALGORITHMS:
        raise InvalidInput(f"algorithm {algorithm!r} is not one of {', '.join(ALGORITHMS)}")
    taken = f"{display_domain(domain)} already has a key with selector {selector}"
    if selector is None:
        base = default_selector()
        selector = _free_selector(db, did, base if algorithm == "rsa" else f"{base}e")
    else:
        selector = validate_selector(selector)
        taken = f"{display_domain(domain)} already has a key with selector {selector}"
        if db.one(
            "SELECT id FROM dkim_keys WHERE domain_id = :d AND selector = :s",
            {"d": did, "s": selector},
        ):
            raise Conflict(taken)
    generated = key_pair(algorithm, key.bits)  # type: ignore[arg-type]
    try:
        new_id = db.insert(
            "INSERT INTO dkim_keys (domain_id, selector, algorithm, bits, private_key,"
            " public_record, active, created_at)"
            " VALUES (:d, :s, :a, :b, :priv, :pub, :active, :now) RETURNING id",
            {
                "d": did,
                "s": selector,
                "a": generated.algorithm,
                "b": generated.bits,
                "priv": generated.private_key,
                "pub": generated.public_record,
                "active": True,
                "now": time.time(),
            },
        )
    except Conflict:  # another node took the selector just now
        raise Conflict(taken) from None
    row = db.one(_SELECT + " WHERE k.id = :id", {"id": new_id})
    if row is None:
        raise NotFound(f"the key {selector} of {display_domain(domain)} is gone")
    return _public(row)


def generate_key(*, db: Database, org: int, domain: str, key: KeyCreate) -> KeyPublic:
    """Add an active key to a domain (other keys keep signing)."""
    did, alabel = domain_id(db=db, org=org, name=domain)
    with db.transaction():
        created = create_key(db=db, did=did, domain=alabel, key=key)
        record(
            db,
            org=org,
            action="dkim.create",
            target=f"{created.selector}._domainkey.{display_domain(alabel)}",
            detail={"algorithm": created.algorithm, "bits": created.bits},
        )
    return created


def list_keys(*, db: Database, org: int, domain: str | None = None) -> list[KeyPublic]:
    """The organization's keys (or one domain's), by domain and age."""
    order = " ORDER BY d.name, k.created_at, k.id"
    if domain is None:
        return [
            _public(row)
            for row in db.all(_SELECT + " WHERE d.organization_id = :org" + order, {"org": org})
        ]
    did, _ = domain_id(db=db, org=org, name=domain)
    return [_public(row) for row in db.all(_SELECT + " WHERE k.domain_id = :d" + order, {"d": did})]


def rotate_key(*, db: Database, org: int, domain: str, key: KeyRotate) -> KeyRotation:
    """A new key signs from now on; the active keys of that algorithm stop signing but stay
    published until removed."""
    did, alabel = domain_id(db=db, org=org, name=domain)
    current = [k for k in list_keys(db=db, org=org, domain=alabel) if k.active]
    algo = key.algorithm or (current[0].algorithm if current else "rsa")
    retired = [k for k in current if k.algorithm == algo]
    with db.transaction():
        new = create_key(
            db=db,
            did=did,
            domain=alabel,
            key=KeyCreate(selector=key.selector, algorithm=algo, bits=key.bits),
        )
        for old in retired:
            db.execute(
                "UPDATE dkim_keys SET active = :f WHERE domain_id = :d AND selector = :s",
                {"f": False, "d": did, "s": old.selector},
            )
        record(
            db,
            org=org,
            action="dkim.rotate",
            target=f"{new.selector}._domainkey.{display_domain(alabel)}",
            detail={"algorithm": new.algorithm, "retired": [k.selector for k in retired]},
        )
    return KeyRotation(new=new, retired=[k.model_copy(update={"active": False}) for k in retired])


def remove_key(*, db: Database, org: int, domain: str, selector: str) -> KeyPublic:
    """Delete a key; its TXT record may be unpublished afterwards."""
    did, alabel = domain_id(db=db, org=org, name=domain)
    row = db.one(
        _SELECT + " WHERE k.domain_id = :d AND k.selector = :s", {"d": did, "s": selector.lower()}
    )
    if row is None:
        raise NotFound(
            f"{display_domain(alabel)} has no key with selector {selector}; see `smtpy key list`"
        )
    with db.transaction():
        if db.execute("DELETE FROM dkim_keys WHERE id = :id", {"id": row["id"]}):
            record(
                db,
                org=org,
                action="dkim.remove",
                target=f"{row['selector']}._domainkey.{display_domain(alabel)}",
            )
    return _public(row)


def signing_keys(db: Database, domain: str) -> list[dict[str, Any]]:
    """Active keys with their private parts, for the daemon's signer only (any organization)."""
    from smtpy.outbound.signers import signing_keys as load

    return load(db, domain)
