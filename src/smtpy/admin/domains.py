"""Domains: add, list, show, remove, the records to publish, and verification."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

from smtpy.admin.records import DnsRecord, Finding, KeyRecord, judge, required_records
from smtpy.errors import Conflict, InvalidInput, NotFound
from smtpy.mail.addresses import display_domain, normalize_domain
from smtpy.store.db import Database

DEFAULT_ORGANIZATION = "default"


@dataclass(frozen=True, slots=True)
class DomainInfo:
    id: int
    name: str  # A-label
    organization: str
    verified_at: float | None
    created_at: float
    aliases: int
    keys: int
    dmarc_reject: bool | None = None  # None: the global SMTPY_DMARC_REJECT applies

    @property
    def display_name(self) -> str:
        return display_domain(self.name)

    def public(self) -> dict[str, Any]:
        return {
            "name": self.display_name,
            "ascii_name": self.name,
            "organization": self.organization,
            "verified": self.verified_at is not None,
            "verified_at": self.verified_at,
            "created_at": self.created_at,
            "aliases": self.aliases,
            "keys": self.keys,
            "dmarc_reject": policy_name(self.dmarc_reject),
        }


_SELECT = """
SELECT d.id, d.name, d.verification_token, d.verified_at, d.created_at, d.dmarc_reject,
       o.name AS organization,
       (SELECT count(*) FROM aliases a WHERE a.domain_id = d.id) AS aliases,
       (SELECT count(*) FROM dkim_keys k WHERE k.domain_id = d.id) AS keys
FROM domains d JOIN organizations o ON o.id = d.organization_id
"""


def _info(row: dict[str, Any]) -> DomainInfo:
    return DomainInfo(
        id=int(row["id"]),
        name=row["name"],
        organization=row["organization"],
        verified_at=row["verified_at"],
        created_at=row["created_at"],
        aliases=int(row["aliases"]),
        keys=int(row["keys"]),
        dmarc_reject=None if row["dmarc_reject"] is None else bool(row["dmarc_reject"]),
    )


def organization_id(db: Database, name: str = DEFAULT_ORGANIZATION) -> int:
    """The id of an organization, created on first use."""
    row = db.one("SELECT id FROM organizations WHERE name = :name", {"name": name})
    if row is not None:
        return int(row["id"])
    db.execute(
        "INSERT INTO organizations (name, created_at) VALUES (:name, :now) ON CONFLICT (name) DO NOTHING",
        {"name": name, "now": time.time()},
    )
    return int(db.scalar("SELECT id FROM organizations WHERE name = :name", {"name": name}))


def domain_id(db: Database, name: str) -> tuple[int, str]:
    """(id, A-label) of a served domain, or NotFound that says how to add it."""
    alabel = normalize_domain(name)
    row = db.one("SELECT id FROM domains WHERE name = :name", {"name": alabel})
    if row is None:
        raise NotFound(
            f"domain {display_domain(alabel)} is not served here; add it with `smtpy domain add {name}`"
        )
    return int(row["id"]), alabel


def add_domain(
    db: Database, name: str, *, organization: str = DEFAULT_ORGANIZATION, key_algorithm: str = "rsa"
) -> DomainInfo:
    """Serve a new domain: an ownership token and a first active DKIM key."""
    from smtpy.admin.keys import create_key

    alabel = normalize_domain(name)
    served = Conflict(f"domain {display_domain(alabel)} is already served")
    try:
        with db.transaction():
            if db.one("SELECT id FROM domains WHERE name = :name", {"name": alabel}):
                raise served
            org = organization_id(db, organization)
            new_id = db.insert(
                "INSERT INTO domains (organization_id, name, verification_token, created_at) "
                "VALUES (:org, :name, :token, :now) RETURNING id",
                {"org": org, "name": alabel, "token": secrets.token_hex(16), "now": time.time()},
            )
            create_key(db, new_id, alabel, algorithm=key_algorithm)
    except Exception as exc:
        if Database.is_unique_violation(exc):  # another node added it at the same moment
            raise served from None
        raise
    return get_domain(db, alabel)


def list_domains(db: Database) -> list[DomainInfo]:
    return [_info(row) for row in db.all(_SELECT + " ORDER BY d.name")]


def get_domain(db: Database, name: str) -> DomainInfo:
    did, _ = domain_id(db, name)
    row = db.one(_SELECT + " WHERE d.id = :id", {"id": did})
    assert row is not None
    return _info(row)


POLICY_CHOICES = {"on": True, "off": False, "default": None}


def policy_name(value: bool | None) -> str:
    """`on`, `off` or `default`: how a per-domain switch is shown and set."""
    return next(name for name, v in POLICY_CHOICES.items() if v is value)


def set_dmarc_reject(db: Database, name: str, choice: str) -> DomainInfo:
    """Whether mail for this domain that fails a DMARC p=reject policy is refused at DATA.

    `on` refuses it (550 5.7.1), `off` forwards it marked, `default` follows
    SMTPY_DMARC_REJECT. A running daemon applies it within seconds.
    """
    if choice not in POLICY_CHOICES:
        raise InvalidInput(f"expected one of {', '.join(POLICY_CHOICES)}, not {choice!r}")
    did, _ = domain_id(db, name)
    db.execute(
        "UPDATE domains SET dmarc_reject = :value WHERE id = :id",
        {"value": POLICY_CHOICES[choice], "id": did},
    )
    return get_domain(db, name)


def remove_domain(db: Database, name: str) -> DomainInfo:
    """Stop serving a domain; its aliases and keys go with it. Queued mail stays queued."""
    info = get_domain(db, name)
    with db.transaction():
        db.execute("DELETE FROM aliases WHERE domain_id = :id", {"id": info.id})
        db.execute("DELETE FROM dkim_keys WHERE domain_id = :id", {"id": info.id})
        db.execute("DELETE FROM domains WHERE id = :id", {"id": info.id})
    return info


def domain_records(db: Database, name: str, *, hostname: str) -> list[DnsRecord]:
    """Every record the admin must publish for the domain."""
    did, alabel = domain_id(db, name)
    token = db.scalar("SELECT verification_token FROM domains WHERE id = :id", {"id": did})
    keys = [
        KeyRecord(row["selector"], row["public_record"])
        for row in db.all(
            "SELECT selector, public_record FROM dkim_keys WHERE domain_id = :id ORDER BY created_at, id",
            {"id": did},
        )
    ]
    return required_records(alabel, hostname=hostname, token=str(token), keys=keys)


@dataclass(frozen=True, slots=True)
class Verification:
    domain: str
    findings: list[Finding]

    @property
    def verified(self) -> bool:
        return all(f.status == "ok" for f in self.findings if f.required)


def verify_domain(
    db: Database,
    name: str,
    *,
    hostname: str,
    nameservers: list[tuple[str, int]] | None,
    timeout: float,
) -> Verification:
    """Look every record up; mark the domain verified when ownership and MX are in place."""
    from smtpy.dns import lookup, make_sync_resolver

    resolver = make_sync_resolver(nameservers, timeout=timeout)
    records = domain_records(db, name, hostname=hostname)
    findings = []
    for record in records:
        result = lookup(resolver, record.name, record.type)
        findings.append(judge(record, result.status, result.values, result.detail))
    report = Verification(records[0].name, findings)
    if report.verified:
        db.execute(
            "UPDATE domains SET verified_at = :now WHERE name = :name AND verified_at IS NULL",
            {"now": time.time(), "name": report.domain},
        )
    return report
