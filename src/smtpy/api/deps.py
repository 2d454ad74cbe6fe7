"""What routes declare they need: the store, the settings, and the authenticated caller."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request

from smtpy.accounts import api_keys
from smtpy.accounts.actor import Actor
from smtpy.api.principal import Principal
from smtpy.config import Settings
from smtpy.errors import Unauthorized
from smtpy.store.db import Database


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_db(request: Request) -> Iterator[Database]:
    """A connection to the store for this request (from the app's pool)."""
    with request.app.state.pool.connection() as db:
        yield db


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


SettingsDep = Annotated[Settings, Depends(get_settings)]
Db = Annotated[Database, Depends(get_db)]


def get_principal(request: Request, db: Db) -> Principal:
    """The caller: an API key (`Authorization: Bearer smtpy_…`), else `Unauthorized` (401)."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token:
        key = api_keys.authenticate(db=db, key=token)
        actor = Actor(
            via="api_key",
            name=f"key {key.name} ({key.id})",
            api_key_id=key.id,
            client_ip=client_ip(request),
        )
        return Principal(org=key.organization_id, role="admin", actor=actor, api_key_id=key.id)
    raise Unauthorized("sign in, or send an API key as Authorization: Bearer smtpy_…")


Auth = Annotated[Principal, Depends(get_principal)]
