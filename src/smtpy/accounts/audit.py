"""The audit log: every change, who made it, when, from where, through which shell.

Services call `record` after each change they make; the actor comes from
`smtpy.accounts.actor.current()`, which the shell set. Reading it is scoped to
one organization, newest first, with keyset paging.
"""

from __future__ import annotations

import json
import time
from typing import Any

from pydantic import BaseModel, ConfigDict

from smtpy.accounts.actor import current
from smtpy.store.db import Database
from smtpy.store.pages import Page, check_limit, keyset, page_of


class AuditEventPublic(BaseModel):
    model_config = ConfigDict(frozen=True, defer_build=True)

    id: int
    at: float
    actor: str
    via: str
    action: str
    target: str | None
    detail: dict[str, Any] | None
    client_ip: str | None


_SELECT = "SELECT id, at, actor, via, action, target, detail, client_ip FROM audit_log"


def record(
    db: Database,
    *,
    org: int | None,
    action: str,
    target: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Write one change to the audit log as the current actor's (never a secret in `detail`)."""
    actor = current()
    db.execute(
        "INSERT INTO audit_log (at, organization_id, actor, via, action, target, detail,"
        " client_ip) VALUES (:at, :org, :actor, :via, :action, :target, :detail, :ip)",
        {
            "at": time.time(),
            "org": org,
            "actor": actor.name[:400],
            "via": actor.via,
            "action": action,
            "target": None if target is None else target[:600],
            "detail": None if detail is None else json.dumps(detail, sort_keys=True, default=str),
            "ip": actor.client_ip,
        },
    )


def list_events(
    *, db: Database, org: int, limit: int | None = None, cursor: str | None = None
) -> Page[AuditEventPublic]:
    """The organization's audit log, newest first."""
    limit = check_limit(limit)
    after, params = keyset("at", "id", cursor)
    where = "organization_id = :org" + (f" AND {after}" if after else "")
    rows = db.all(
        _SELECT + " WHERE " + where + " ORDER BY at DESC, id DESC LIMIT :lim",
        {**params, "org": org, "lim": limit + 1},
    )
    events = [
        AuditEventPublic.model_validate(
            {**r, "detail": json.loads(r["detail"]) if r["detail"] else None}
        )
        for r in rows
    ]
    return page_of(events, limit, key=lambda e: (e.at, e.id))
