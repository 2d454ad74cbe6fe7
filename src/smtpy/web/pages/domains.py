"""Domains: the list with status, add (pending until verified, as in the API), a domain's
page (the records to publish with copy buttons and in zone-file form, their live status,
verify, DKIM key rotation, its aliases), and removal."""

from __future__ import annotations

from typing import Annotated

from fastapi import Form, Request
from fastapi.responses import PlainTextResponse, Response

from smtpy.admin import aliases, domains, keys
from smtpy.admin.records import zone_lines
from smtpy.api.deps import Db
from smtpy.errors import InvalidInput
from smtpy.web.pages._view import as_user, settings_of
from smtpy.web.routing import page_router
from smtpy.web.session import PageUser, SignedIn
from smtpy.web.templating import FormErrors, done, is_htmx, render

router = page_router()


def domain_url(name: str) -> str:
    return f"/domains/{name}"


def _list(
    request: Request,
    db: Db,
    user: SignedIn,
    *,
    errors: FormErrors | None = None,
    name: str = "",
    status_code: int = 200,
) -> Response:
    return render(
        request,
        "domains/list.html",
        {
            "domains": domains.list_domains(db=db, org=user.principal.org),
            "errors": errors or FormErrors(),
            "name": name,
        },
        user=user,
        status_code=status_code,
    )


@router.get("/domains")
def domain_list(request: Request, db: Db, user: PageUser) -> Response:
    return _list(request, db, user)


@router.post("/domains")
def domain_add(
    request: Request, db: Db, user: PageUser, name: Annotated[str, Form()] = ""
) -> Response:
    """Add a domain; like the API's, it receives no mail until verified."""
    try:
        user.principal.require("manage")
        with as_user(user):
            added = domains.add_domain(
                db=db,
                org=user.principal.org,
                domain=domains.DomainCreate(name=name, pending=True),
            )
    except InvalidInput as exc:
        return _list(
            request, db, user, errors=FormErrors().error(exc, "name"), name=name, status_code=422
        )
    return done(
        request,
        domain_url(added.ascii_name),
        f"{added.name} was added. Publish its records below, then verify it.",
    )


def _detail(
    request: Request,
    db: Db,
    user: SignedIn,
    name: str,
    *,
    errors: FormErrors | None = None,
    form: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    org = user.principal.org
    domain = domains.get_domain(db=db, org=org, name=name)
    records = domains.domain_records(
        db=db, org=org, name=name, hostname=settings_of(request).hostname
    )
    q = request.query_params.get("q", "").strip()
    found = aliases.list_aliases(db=db, org=org, domain=name)
    if q:
        needle = q.casefold()
        found = [
            a
            for a in found
            if needle in a.address.casefold() or any(needle in d.casefold() for d in a.destinations)
        ]
    return render(
        request,
        "domains/detail.html",
        {
            "domain": domain,
            "records": records,
            "zone": "\n".join(zone_lines(records)),
            "keys": keys.list_keys(db=db, org=org, domain=name),
            "aliases": found,
            "q": q,
            "errors": errors or FormErrors(),
            "form": form or {},
        },
        user=user,
        status_code=status_code,
    )


@router.get("/domains/{name}")
def domain_detail(request: Request, db: Db, user: PageUser, name: str) -> Response:
    return _detail(request, db, user, name)


@router.get("/domains/{name}/status")
def record_status(request: Request, db: Db, user: PageUser, name: str) -> Response:
    """Each record as DNS has it now (a fragment the domain's page loads by itself)."""
    settings = settings_of(request)
    findings = domains.check_records(
        db=db,
        org=user.principal.org,
        name=name,
        hostname=settings.hostname,
        nameservers=settings.dns_nameservers,
        timeout=settings.dns_timeout,
    )
    if is_htmx(request):
        return render(request, "domains/_status.html", {"findings": findings}, user=user)
    domain = domains.get_domain(db=db, org=user.principal.org, name=name)
    return render(  # without JavaScript: a page of its own
        request, "domains/status_page.html", {"findings": findings, "domain": domain}, user=user
    )


@router.get("/domains/{name}/zone")
def zone_file(db: Db, user: PageUser, name: str, request: Request) -> Response:
    """The records as a zone-file fragment, to download."""
    records = domains.domain_records(
        db=db, org=user.principal.org, name=name, hostname=settings_of(request).hostname
    )
    domain = domains.get_domain(db=db, org=user.principal.org, name=name)
    return PlainTextResponse(
        "\n".join(zone_lines(records)) + "\n",
        headers={"Content-Disposition": f'attachment; filename="{domain.ascii_name}.zone"'},
    )


@router.post("/domains/{name}/verify")
def domain_verify(request: Request, db: Db, user: PageUser, name: str) -> Response:
    settings = settings_of(request)
    user.principal.require("manage")
    with as_user(user):
        result = domains.verify_domain(
            db=db,
            org=user.principal.org,
            name=name,
            hostname=settings.hostname,
            nameservers=settings.dns_nameservers,
            timeout=settings.dns_timeout,
        )
    if result.verified:
        message = f"{result.domain} is verified: its ownership and MX records are in place."
    elif result.resolver_error:
        message = f"Not verified: {result.resolver_error}"
    else:
        missing = [f"{f.type} {f.name}" for f in result.records if f.required and f.status != "ok"]
        message = f"Not verified yet: {', '.join(missing)} not found as expected. Publish, then try again."
    return done(
        request,
        domain_url(domains.get_domain(db=db, org=user.principal.org, name=name).ascii_name),
        message,
    )


@router.post("/domains/{name}/keys/rotate")
def key_rotate(request: Request, db: Db, user: PageUser, name: str) -> Response:
    user.principal.require("manage")
    with as_user(user):
        rotation = keys.rotate_key(db=db, org=user.principal.org, domain=name, key=keys.KeyRotate())
    domain = domains.get_domain(db=db, org=user.principal.org, name=name)
    return done(
        request,
        domain_url(domain.ascii_name),
        f"New DKIM key {rotation.new.selector} signs from now on: publish its TXT record.",
    )


@router.post("/domains/{name}/delete")
def domain_delete(request: Request, db: Db, user: PageUser, name: str) -> Response:
    user.principal.require("manage")
    with as_user(user):
        removed = domains.remove_domain(db=db, org=user.principal.org, name=name)
    return done(request, "/domains", f"{removed.name} was removed, with its aliases and keys.")
