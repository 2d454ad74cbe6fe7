"""URL destinations: the `destinations` row (and signing secret) behind an alias's URL.

An alias destination that is an https URL receives each message as a signed
`message.received` event (`smtpy.outbound.https_target`). The secret it is
signed with belongs to the organization's `destinations` row for that URL,
made the first time an alias of the organization names the URL, in the same
transaction as the alias:

    made = ensure_url_destination(db, org=org, url="https://app.example/in")
    made.secret   # whsec_…; made.created: shown to the admin once, when True

A URL is confirmed by the admin who adds it (the SSRF rules guard where it
may point), so the row is confirmed at once. `check_url` is the one check of
a URL's form and address, shared with webhook endpoints.
"""

from __future__ import annotations

import time
from typing import NamedTuple

from smtpy.admin.destinations import insert_destination
from smtpy.admin.webhooks import check_url
from smtpy.events.signing import new_secret
from smtpy.store.db import Database

__all__ = ["UrlDestination", "check_url", "ensure_url_destination"]


class UrlDestination(NamedTuple):
    secret: str
    created: bool  # True: this call made the row (show the secret to the admin, once)


def ensure_url_destination(db: Database, *, org: int, url: str) -> UrlDestination:
    """The organization's destination row for `url`, made (confirmed, with a new secret)
    when it has none. Call it inside the transaction that saves the alias."""
    found = db.one(
        "SELECT secret FROM destinations WHERE organization_id = :org AND address_key = :url",
        {"org": org, "url": url},
    )
    if found is not None and found["secret"]:
        return UrlDestination(str(found["secret"]), created=False)
    secret = new_secret()
    now = time.time()
    if found is not None:  # a row without a secret (made elsewhere): give it one
        db.execute(
            "UPDATE destinations SET secret = :secret, kind = 'url',"
            " confirmed_at = COALESCE(confirmed_at, :now)"
            " WHERE organization_id = :org AND address_key = :url",
            {"secret": secret, "now": now, "org": org, "url": url},
        )
    else:
        insert_destination(
            db, org=org, kind="url", address=url, key=url, secret=secret, confirmed=True, now=now
        )
    return UrlDestination(secret, created=True)
