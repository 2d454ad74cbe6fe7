"""Domains: add, list, show, update, remove, the records to publish, and verification.

Every function acts inside one organization (`org`, its id): a domain of
another organization is not found here, and adding one that another
organization serves is a conflict.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

from smtpy.accounts import audit
from smtpy.admin.records import DnsRecord, Finding, KeyRecord, judge, required_records
from smtpy.errors import Conflict, InvalidInput, NotFound
from smtpy.mail.addresses import display_domain, normalize_domain
from smtpy.store.db import Database
from smtpy.store.pages import Page, check_limit, keyset, page_of

if TYPE_CHECKING:
    import dns.resolver

Policy = Literal["on", "off", "default"]
POLICY_CHOICES: dict[str, bool | None] = {"on": True, "off": False, "default": None}


def policy_name(value: bool | None) -> Policy:
    """`on`, `off` or `default`: how a per-domain switch is shown and set."""
    return "default" if value is None else ("on" if value else "off")


class DomainCreate(BaseModel):
    model_config = ConfigDict(defer_build=True)

    name: str  # Unicode or IDNA form
    key_algorithm: str = "rsa"  # of the first DKIM key
    # Added through the API: receives no mail until `verify_domain` finds its ownership token.
    pending: bool = False


class DomainUpdate(BaseModel):
    """What an admin may change; None leaves a field as it is."""

    model_config = ConfigDict(defer_build=True)

    dmarc_reject: str | None = None  # on | off | default (SMTPY_DMARC_REJECT)


class DomainPublic(BaseModel):
    """A domain as shells show it (`domain list --json` prints these keys)."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    id: int
    name: str  # U-label, as people write it
    ascii_name: str  # A-label, as DNS and the store have it
    organization: str
    pending: bool  # added through the API, ownership not proven yet: receives no mail
    verified: bool
    verified_at: float | None
    created_at: float
    aliases: int
    keys: int
    dmarc_reject: Policy  # default: the global SMTPY_DMARC_REJECT applies


_SELECT = """
SELECT d.id, d.name, d.verified_at, d.created_at, d.dmarc_reject, d.pending,
       o.name AS organization,
       (SELECT count(*) FROM aliases a WHERE a.domain_id = d.id) AS aliases,
       (SELECT count(*) FROM dkim_keys k WHERE k.domain_id = d.id) AS keys
FROM domains d JOIN organizations o ON o.id = d.organization_id
"""


def _public(row: dict[str, Any]) -> DomainPublic:
    return DomainPublic(
        id=int(row["id"]),
        name=display_domain(row["name"]),
        ascii_name=row["name"],
        organization=row["organization"],
        pending=bool(row["pending"]),
        verified=row["verified_at"] is not None,
        verified_at=row["verified_at"],
        created_at=row["created_at"],
        aliases=int(row["aliases"]),
        keys=int(row["keys"]),
        dmarc_reject=policy_name(
            None if row["dmarc_reject"] is None else bool(row["dmarc_reject"])
        ),
    )


def domain_id(*, db: Database, org: int, name: str) -> tuple[int, str]:
    """(id, A-label) of a domain `org` serves, or NotFound that says how to add it."""
    alabel = normalize_domain(name)
    row = db.one(
        "SELECT id FROM domains WHERE name = :name AND organization_id = :org",
        {"name": alabel, "org": org},
    )
    if row is None:
        raise NotFound(
            f"domain {display_domain(alabel)} is not served here; add it with `smtpy domain add {name}`"
        )
    return int(row["id"]), alabel


def add_domain(*, db: Database, org: int, domain: DomainCreate) -> DomainPublic:
    """Serve a new domain: an ownership token and a first active DKIM key. A `pending`
    domain (added through the API) receives no mail until its ownership is verified."""
    from smtpy.admin.keys import KeyCreate, create_key

    alabel = normalize_domain(domain.name)
    served = f"domain {display_domain(alabel)} is already served"
    try:
        with db.transaction():
            if db.one("SELECT id FROM domains WHERE name = :name", {"name": alabel}):
                raise Conflict(served)
            new_id = db.insert(
                "INSERT INTO domains (organization_id, name, verification_token, pending,"
                " created_at) VALUES (:org, :name, :token, :pending, :now) RETURNING id",
                {
                    "org": org,
                    "name": alabel,
                    "token": secrets.token_hex(16),
                    "pending": domain.pending,
                    "now": time.time(),
                },
            )
            key = create_key(
                db=db, did=new_id, domain=alabel, key=KeyCreate(algorithm=domain.key_algorithm)
            )
            audit.record(
                db,
                org=org,
                action="domain.create",
                target=display_domain(alabel),
                detail={
                    "dkim_selector": key.selector,
                    "dkim_algorithm": key.algorithm,
                    "pending": domain.pending,
                },
            )
    except Conflict:  # also when another node added it at the same moment
        raise Conflict(served) from None
    return get_domain(db=db, org=org, name=alabel)


def list_domains(*, db: Database, org: int) -> list[DomainPublic]:
    """The organization's domains, by name."""
    return [
        _public(row)
        for row in db.all(_SELECT + " WHERE d.organization_id = :org ORDER BY d.name", {"org": org})
    ]


def domain_page(
    *, db: Database, org: int, limit: int | None = None, cursor: str | None = None
) -> Page[DomainPublic]:
    """The organization's domains, newest first, a page at a time (keyset on creation)."""
    size = check_limit(limit)
    after, params = keyset("d.created_at", "d.id", cursor)
    where = "d.organization_id = :org" + (f" AND {after}" if after else "")
    rows = db.all(
        f"{_SELECT} WHERE {where} ORDER BY d.created_at DESC, d.id DESC LIMIT :n",
        {**params, "org": org, "n": size + 1},
    )
    return page_of([_public(r) for r in rows], size, key=lambda d: (d.created_at, d.id))


def get_domain(*, db: Database, org: int, name: str) -> DomainPublic:
    did, _ = domain_id(db=db, org=org, name=name)
    row = db.one(_SELECT + " WHERE d.id = :id", {"id": did})
    if row is None:  # removed between the two reads
        raise NotFound(f"domain {name} is not served here")
    return _public(row)


def update_domain(*, db: Database, org: int, name: str, update: DomainUpdate) -> DomainPublic:
    """Change a domain's settings. `dmarc_reject`: whether mail for this domain that fails a
    DMARC p=reject policy is refused at DATA (`on`: 550 5.7.1; `off`: forwarded, marked;
    `default`: SMTPY_DMARC_REJECT). A running daemon applies it within seconds."""
    did, alabel = domain_id(db=db, org=org, name=name)
    if update.dmarc_reject is not None:
        choice = update.dmarc_reject.lower()
        if choice not in POLICY_CHOICES:
            raise InvalidInput(
                f"expected one of {', '.join(POLICY_CHOICES)}, not {update.dmarc_reject!r}"
            )
        with db.transaction():
            db.execute(
                "UPDATE domains SET dmarc_reject = :value WHERE id = :id",
                {"value": POLICY_CHOICES[choice], "id": did},
            )
            audit.record(
                db,
                org=org,
                action="domain.update",
                target=display_domain(alabel),
                detail={"dmarc_reject": choice},
            )
    return get_domain(db=db, org=org, name=name)


def remove_domain(*, db: Database, org: int, name: str) -> DomainPublic:
    """Stop serving a domain; its aliases and keys go with it. Queued mail stays queued."""
    info = get_domain(db=db, org=org, name=name)
    did, _ = domain_id(db=db, org=org, name=name)
    with db.transaction():
        db.execute("DELETE FROM aliases WHERE domain_id = :id", {"id": did})
        db.execute("DELETE FROM dkim_keys WHERE domain_id = :id", {"id": did})
        db.execute("DELETE FROM domains WHERE id = :id", {"id": did})
        audit.record(
            db,
            org=org,
            action="domain.remove",
            target=info.name,
            detail={"aliases": info.aliases, "keys": info.keys},
        )
    return info


def domain_records(*, db: Database, org: int, name: str, hostname: str) -> list[DnsRecord]:
    """Every record the admin must publish for the domain."""
    did, alabel = domain_id(db=db, org=org, name=name)
    token = db.scalar("SELECT verification_token FROM domains WHERE id = :id", {"id": did})
    keys = [
        KeyRecord(row["selector"], row["public_record"])
        for row in db.all(
            "SELECT selector, public_record FROM dkim_keys WHERE domain_id = :id ORDER BY created_at, id",
            {"id": did},
        )
    ]
    return required_records(alabel, hostname=hostname, token=str(token), keys=keys)


class Verification(BaseModel):
    """What `domain verify` found (`--json` prints these keys)."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    domain: str  # U-label
    verified: bool  # ownership and MX are in place
    pending: bool = False  # still waits for its ownership token (added through the API)
    # Set when the resolver itself never answered: then nothing was learnt about the domain.
    resolver_error: str | None = None
    records: list[Finding]


def _resolver_names(resolver: dns.resolver.Resolver) -> str:
    names = []
    for server in resolver.nameservers:
        address = getattr(server, "address", server)
        port = getattr(server, "port", resolver.port)
        host = f"[{address}]" if ":" in str(address) else str(address)
        names.append(f"{host}:{port}")
    return ", ".join(names) or "none configured"


def _lookup_all(
    resolver: dns.resolver.Resolver, records: Sequence[DnsRecord]
) -> list[tuple[str, tuple[str, ...], str]]:
    """Look every record up at once: the wait is one lookup's, not the sum of them."""
    from concurrent.futures import ThreadPoolExecutor

    from smtpy.dns import lookup

    with ThreadPoolExecutor(max_workers=len(records), thread_name_prefix="verify") as pool:
        results = list(pool.map(lambda r: lookup(resolver, r.name, r.type), records))
    return [(r.status, r.values, r.detail) for r in results]


def _findings(
    *,
    db: Database,
    org: int,
    name: str,
    hostname: str,
    nameservers: Sequence[tuple[str, int]] | None,
    timeout: float,
) -> tuple[list[Finding], str | None]:
    """Every record looked up (in parallel) and judged, and the resolver's own failure."""
    from smtpy.dns import make_sync_resolver

    resolver = make_sync_resolver(nameservers, timeout=timeout)
    records = domain_records(db=db, org=org, name=name, hostname=hostname)
    results = _lookup_all(resolver, records)
    resolver_error = None
    if all(status in ("timeout", "error") for status, _, _ in results) and any(
        status == "timeout" for status, _, _ in results
    ):
        where = "SMTPY_DNS_NAMESERVERS" if nameservers is not None else "the system's resolver"
        resolver_error = (
            f"the DNS resolver {_resolver_names(resolver)} ({where}) did not answer within "
            f"{timeout:g} s; check that it runs and is reachable, then try again"
        )
    findings = []
    for record, (status, values, detail) in zip(records, results, strict=True):
        finding = judge(record, status, values, detail)
        if resolver_error is not None and status == "timeout":
            finding = finding.model_copy(update={"fix": resolver_error})
        findings.append(finding)
    return findings, resolver_error


def check_records(
    *,
    db: Database,
    org: int,
    name: str,
    hostname: str,
    nameservers: Sequence[tuple[str, int]] | None,
    timeout: float,
) -> list[Finding]:
    """Every record the domain needs, as DNS has it now (looked up in parallel); changes
    nothing."""
    findings, _ = _findings(
        db=db, org=org, name=name, hostname=hostname, nameservers=nameservers, timeout=timeout
    )
    return findings


def verify_domain(
    *,
    db: Database,
    org: int,
    name: str,
    hostname: str,
    nameservers: Sequence[tuple[str, int]] | None,
    timeout: float,
) -> Verification:
    """Look every record up (in parallel); mark the domain verified when ownership and MX
    are in place. A pending domain (added through the API) starts receiving mail once its
    ownership token is found.

    When no lookup got any answer and they timed out, the resolver itself is
    silent (down, firewalled, wrong address): `resolver_error` names it, and
    the findings say so rather than blame the domain's name servers.
    """
    findings, resolver_error = _findings(
        db=db, org=org, name=name, hostname=hostname, nameservers=nameservers, timeout=timeout
    )
    verified = all(f.status == "ok" for f in findings if f.required)
    owned = any(f.purpose == "ownership" and f.status == "ok" for f in findings)
    alabel = findings[0].name
    changed: dict[str, bool] = {}
    with db.transaction():
        if owned and db.execute(
            "UPDATE domains SET pending = :no WHERE name = :name AND pending",
            {"no": False, "name": alabel},
        ):
            changed["pending"] = False
        if verified and db.execute(
            "UPDATE domains SET verified_at = :now WHERE name = :name AND verified_at IS NULL",
            {"now": time.time(), "name": alabel},
        ):
            changed["verified"] = True
        if changed:
            audit.record(
                db, org=org, action="domain.verify", target=display_domain(alabel), detail=changed
            )
    return Verification(
        domain=display_domain(alabel),
        verified=verified,
        pending=not owned and get_domain(db=db, org=org, name=alabel).pending,
        resolver_error=resolver_error,
        records=findings,
    )
