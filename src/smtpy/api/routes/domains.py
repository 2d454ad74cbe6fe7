"""/api/v1 routes: domains (see API.md).

A domain added here stays `pending` (it receives no mail) until `POST
/domains/{name}/verify` finds its ownership token in DNS; its aliases can be
set up meanwhile. `{name}` is the domain in either form (U-label or A-label).
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from smtpy.accounts.actor import acting
from smtpy.admin import domains
from smtpy.admin.records import Finding
from smtpy.api.deps import Auth, Db, SettingsDep
from smtpy.api.shapes import rfc3339
from smtpy.billing.plans import Catalog
from smtpy.store.pages import Page

router = APIRouter(tags=["domains"])


class DomainIn(BaseModel):
    name: str = Field(min_length=1, max_length=253, examples=["example.org"])


class RecordOut(BaseModel):
    """A record to publish (its live state: GET /domains/{name}/records)."""

    type: str
    name: str
    value: str


class DomainOut(BaseModel):
    id: str
    name: str  # U-label
    ascii_name: str  # A-label
    status: Literal["pending", "active"]  # pending: receives no mail until verified
    verified: bool  # ownership and MX found in DNS
    verified_at: str | None
    created_at: str
    aliases: int
    dmarc_reject: str


class DomainDetail(DomainOut):
    records: list[RecordOut]  # what to publish


class RecordStatus(BaseModel):
    type: str
    name: str
    value: str
    status: Literal["ok", "missing", "wrong"]
    observed: list[str]  # what DNS returned
    required: bool  # ownership and MX: needed for the domain to be verified
    fix: str  # what to do, when not ok


class VerifyOut(BaseModel):
    domain: DomainOut
    verified: bool
    records: list[RecordStatus]


def _out(d: domains.DomainPublic) -> DomainOut:
    return DomainOut(
        id=str(d.id),
        name=d.name,
        ascii_name=d.ascii_name,
        status="pending" if d.pending else "active",
        verified=d.verified,
        verified_at=rfc3339(d.verified_at),
        created_at=rfc3339(d.created_at) or "",
        aliases=d.aliases,
        dmarc_reject=d.dmarc_reject,
    )


def _status(f: Finding) -> RecordStatus:
    # A lookup that failed (timeout, SERVFAIL) found nothing: `fix` says why.
    status: Literal["ok", "missing", "wrong"] = (
        f.status if f.status in ("ok", "wrong") else "missing"
    )
    return RecordStatus(
        type=f.type,
        name=f.name,
        value=f.value,
        status=status,
        observed=list(f.found),
        required=f.required,
        fix=f.fix,
    )


@router.get("/domains")
def list_domains(
    db: Db, principal: Auth, limit: int | None = None, cursor: str | None = None
) -> Page[DomainOut]:
    """The organization's domains, newest first."""
    page = domains.domain_page(db=db, org=principal.org, limit=limit, cursor=cursor)
    return Page[DomainOut](
        data=[_out(d) for d in page.data], has_more=page.has_more, next_cursor=page.next_cursor
    )


@router.post("/domains", status_code=201)
def add_domain(body: DomainIn, db: Db, principal: Auth, settings: SettingsDep) -> DomainDetail:
    """Add a domain: `pending` (no mail) until verify finds its ownership token."""
    principal.require("manage")
    with acting(principal.actor):
        added = domains.add_domain(
            db=db,
            org=principal.org,
            domain=domains.DomainCreate(name=body.name, pending=True),
            catalog=Catalog.of(settings),
        )
    return _detail(db, principal.org, added, settings.hostname)


def _detail(db: Db, org: int, d: domains.DomainPublic, hostname: str) -> DomainDetail:
    records = domains.domain_records(db=db, org=org, name=d.ascii_name, hostname=hostname)
    return DomainDetail(
        **_out(d).model_dump(),
        records=[RecordOut(type=r.type, name=r.name, value=r.value) for r in records],
    )


@router.get("/domains/{name}")
def get_domain(name: str, db: Db, principal: Auth, settings: SettingsDep) -> DomainDetail:
    """A domain, with the records to publish."""
    d = domains.get_domain(db=db, org=principal.org, name=name)
    return _detail(db, principal.org, d, settings.hostname)


@router.delete("/domains/{name}", status_code=204)
def delete_domain(name: str, db: Db, principal: Auth) -> Response:
    """Stop serving a domain; its aliases and keys go with it (admins only)."""
    principal.require("manage")
    with acting(principal.actor):
        domains.remove_domain(db=db, org=principal.org, name=name)
    return Response(status_code=204)


@router.get("/domains/{name}/records")
def domain_records(name: str, db: Db, principal: Auth, settings: SettingsDep) -> list[RecordStatus]:
    """Every record the domain needs, with what DNS answers now."""
    findings = domains.check_records(
        db=db,
        org=principal.org,
        name=name,
        hostname=settings.hostname,
        nameservers=settings.dns_nameservers,
        timeout=settings.dns_timeout,
    )
    return [_status(f) for f in findings]


@router.post("/domains/{name}/verify")
def verify_domain(name: str, db: Db, principal: Auth, settings: SettingsDep) -> VerifyOut:
    """Look the records up; a pending domain becomes active once its ownership token is
    found, and is verified when MX points here too."""
    principal.require("manage")
    with acting(principal.actor):
        report = domains.verify_domain(
            db=db,
            org=principal.org,
            name=name,
            hostname=settings.hostname,
            nameservers=settings.dns_nameservers,
            timeout=settings.dns_timeout,
        )
    d = domains.get_domain(db=db, org=principal.org, name=name)
    return VerifyOut(
        domain=_out(d), verified=report.verified, records=[_status(f) for f in report.records]
    )
