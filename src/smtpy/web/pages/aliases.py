"""Aliases on a domain's page: add (exact or catch-all `*`, several destinations), edit
the destinations and the ordered fallbacks, enable or disable, delete. The core decides
who may (a member only on verified domains) and what is valid; errors are shown at their
field."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Form, Request
from fastapi.responses import Response

from smtpy.admin import aliases, domains
from smtpy.api.deps import Db, SettingsDep
from smtpy.errors import Forbidden, InvalidInput
from smtpy.web.pages._view import as_user
from smtpy.web.pages.domains import _detail, domain_url
from smtpy.web.routing import page_router
from smtpy.web.session import PageUser
from smtpy.web.templating import FormErrors, done, render

router = page_router()

_SEPARATORS = re.compile(r"[\s,;]+")


def destination_list(text: str) -> list[str]:
    """Destinations as typed: one per line, or separated by commas or spaces."""
    return [part for part in _SEPARATORS.split(text.strip()) if part]


def field_of(exc: InvalidInput, default: str) -> str:
    """The form field of a core error (`destinations.2` is the destinations box)."""
    field = getattr(exc, "field", None) or default
    return str(field).split(".", 1)[0]


@router.post("/domains/{name}/aliases")
def alias_add(
    request: Request,
    db: Db,
    user: PageUser,
    settings: SettingsDep,
    name: str,
    local_part: Annotated[str, Form()] = "",
    destinations: Annotated[str, Form()] = "",
) -> Response:
    domain = domains.get_domain(db=db, org=user.principal.org, name=name)
    local = local_part.strip()
    try:
        if not local:
            raise InvalidInput("enter the part before @, or * for a catch-all")
        with as_user(user):
            added = aliases.add_alias(
                db=db,
                org=user.principal.org,
                alias=aliases.AliasCreate(
                    address=f"{local}@{domain.ascii_name}",
                    destinations=destination_list(destinations),
                ),
                role=user.principal.role,
                allow_private=settings.webhook_allow_private,
                settings=settings,
            )
    except Forbidden as exc:  # a member, on a domain not verified yet: said on the form
        errors = FormErrors()
        errors.add(None, exc.message)
        return _detail(
            request,
            db,
            user,
            name,
            errors=errors,
            form={"local_part": local_part, "destinations": destinations},
            status_code=403,
        )
    except InvalidInput as exc:
        field = "local_part" if not local else field_of(exc, "local_part")
        errors = FormErrors()
        errors.add(field, exc.message)
        return _detail(
            request,
            db,
            user,
            name,
            errors=errors,
            form={"local_part": local_part, "destinations": destinations},
            status_code=422,
        )
    return done(
        request,
        domain_url(domain.ascii_name) + "#aliases",
        f"Alias {added.address} was added.",
    )


def _alias(db: Db, user: PageUser, alias_id: str) -> aliases.AliasPublic:
    return aliases.get_alias(db=db, org=user.principal.org, alias_id=alias_id)


def _back(alias: aliases.AliasPublic, db: Db, user: PageUser) -> str:
    domain = domains.get_domain(db=db, org=user.principal.org, name=alias.domain)
    return domain_url(domain.ascii_name) + "#aliases"


@router.get("/aliases/{alias_id}/edit")
def alias_edit_form(request: Request, db: Db, user: PageUser, alias_id: str) -> Response:
    alias = _alias(db, user, alias_id)
    return render(
        request,
        "domains/alias_edit.html",
        {
            "alias": alias,
            "destinations": "\n".join(alias.destinations),
            "fallbacks": "\n".join(alias.fallbacks),
            "back": _back(alias, db, user),
        },
        user=user,
    )


@router.post("/aliases/{alias_id}/edit")
def alias_edit(
    request: Request,
    db: Db,
    user: PageUser,
    settings: SettingsDep,
    alias_id: str,
    destinations: Annotated[str, Form()] = "",
    fallbacks: Annotated[str, Form()] = "",
    enabled: Annotated[str | None, Form()] = None,
) -> Response:
    alias = _alias(db, user, alias_id)
    forward = alias.mode == "forward"
    update = aliases.AliasUpdate(
        enabled=enabled is not None,
        destinations=destination_list(destinations) if forward else None,
        fallbacks=destination_list(fallbacks) if forward else None,
    )
    try:
        with as_user(user):
            changed = aliases.update_alias_by_id(
                db=db,
                org=user.principal.org,
                alias_id=alias_id,
                update=update,
                role=user.principal.role,
                allow_private=settings.webhook_allow_private,
                settings=settings,
            )
    except InvalidInput as exc:
        errors = FormErrors()
        errors.add(field_of(exc, "destinations"), exc.message)
        return render(
            request,
            "domains/alias_edit.html",
            {
                "alias": alias,
                "destinations": destinations,
                "fallbacks": fallbacks,
                "back": _back(alias, db, user),
                "errors": errors,
            },
            user=user,
            status_code=422,
        )
    return done(request, _back(alias, db, user), f"Alias {changed.address} was saved.")


@router.post("/aliases/{alias_id}/enable")
@router.post("/aliases/{alias_id}/disable")
def alias_switch(request: Request, db: Db, user: PageUser, alias_id: str) -> Response:
    alias = _alias(db, user, alias_id)
    on = request.url.path.endswith("/enable")
    with as_user(user):
        aliases.update_alias_by_id(
            db=db,
            org=user.principal.org,
            alias_id=alias_id,
            update=aliases.AliasUpdate(enabled=on),
            role=user.principal.role,
        )
    state = "enabled: its mail is forwarded again" if on else "disabled: its mail is refused"
    return done(request, _back(alias, db, user), f"Alias {alias.address} is {state}.")


@router.post("/aliases/{alias_id}/delete")
def alias_delete(request: Request, db: Db, user: PageUser, alias_id: str) -> Response:
    alias = _alias(db, user, alias_id)
    back = _back(alias, db, user)
    with as_user(user):
        aliases.remove_alias_by_id(
            db=db, org=user.principal.org, alias_id=alias_id, role=user.principal.role
        )
    return done(request, back, f"Alias {alias.address} was deleted.")
