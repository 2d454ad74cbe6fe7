"""Destinations: the mail addresses and https URLs an organization forwards to, and whether
their owners agreed to receive its mail.

A mail address added through the API or the dashboard (by itself, or by naming it in an
alias) gets a row with `confirmed_at` NULL and a confirmation mail with a link
(`smtpy.accounts.links`, kind "destination": once, within 24 hours). Until the link is
followed nothing is forwarded to it: the router refuses mail for an alias whose every
destination waits with 450 4.2.1, and keeps a delivery to a waiting destination in the
queue (status `unconfirmed`, never attempted) until it is confirmed (then due at once) or
the queue lifetime ends (then the usual DSN).

An address no row names is the operator's own (aliases made with the CLI, and every alias
made before this table): it counts as confirmed. The operator marks an address confirmed
with `smtpy destination confirm`. An https URL (POST {"url"}) is confirmed when it is made,
since the admin who adds it controls it; it signs what it receives with its own secret,
shown once.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

from smtpy.accounts import links, mailer
from smtpy.accounts.actor import current
from smtpy.accounts.audit import record
from smtpy.billing import plans as billing
from smtpy.billing.plans import Catalog
from smtpy.errors import Conflict, InvalidInput, NotFound, TooManyRequests
from smtpy.events import outbox
from smtpy.events.types import DestinationData
from smtpy.mail.addresses import display_domain, parse_address, split_address
from smtpy.mail.parsed import is_url
from smtpy.store.db import Database
from smtpy.store.pages import Page, check_limit, keyset, page_of

if TYPE_CHECKING:
    from smtpy.config import Settings

Kind = Literal["address", "url"]

RESEND_EVERY = 60.0  # seconds between two confirmation mails to one destination
MAX_DESTINATIONS = 10_000  # rows per organization, whatever the plan
CONFIRM_PATH = "/destinations/confirm"  # the dashboard page the mailed link opens
WAITING = "destination awaiting confirmation: not sent until its owner follows the mailed link"
# The shells through which a user (not the operator) acts: what they add must be confirmed.
_USER_SHELLS = frozenset({"api_key", "session"})


class DestinationPublic(BaseModel):
    """A destination as shells show it (`destination list --json` prints these keys)."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    id: int
    organization_id: int
    kind: Kind
    address: str  # a mail address (domain as U-label) or the URL
    confirmed: bool
    confirmed_at: float | None
    confirmation_sent_at: float | None
    created_at: float


class DestinationCreated(DestinationPublic):
    secret: str | None  # whsec_… of a URL: in this answer only


_SELECT = (
    "SELECT id, organization_id, kind, address, confirmed_at, confirmation_sent_at, created_at"
    " FROM destinations"
)


def _public(row: dict[str, Any]) -> DestinationPublic:
    address = str(row["address"])
    if row["kind"] == "address":
        local, domain = split_address(address)
        address = f"{local}@{display_domain(domain)}"
    return DestinationPublic(
        id=int(row["id"]),
        organization_id=int(row["organization_id"]),
        kind=row["kind"],
        address=address,
        confirmed=row["confirmed_at"] is not None,
        confirmed_at=row["confirmed_at"],
        confirmation_sent_at=row["confirmation_sent_at"],
        created_at=float(row["created_at"]),
    )


def address_key(address: str) -> str:
    """How a mail address is compared: its local part case-folded, its domain an A-label."""
    return parse_address(address).key


def address_key_or_none(destination: str) -> str | None:
    """The key of a destination that is a mail address; None for anything else (a URL)."""
    try:
        return parse_address(destination).key
    except InvalidInput:
        return None


def unconfirmed_keys(db: Database, org: int) -> frozenset[str]:
    """The keys of the organization's mail addresses still awaiting confirmation (the router
    loads these with a domain's rules, and holds mail for them)."""
    rows = db.all(
        "SELECT address_key FROM destinations WHERE organization_id = :org AND kind = 'address'"
        " AND confirmed_at IS NULL",
        {"org": org},
    )
    return frozenset(str(r["address_key"]) for r in rows)


def needs_confirmation() -> bool:
    """Whether what the current actor adds must be confirmed: a user through the API or the
    dashboard, not the operator at the shell (nor the system)."""
    return current().via in _USER_SHELLS


def insert_destination(
    db: Database,
    *,
    org: int,
    kind: Kind,
    address: str,
    key: str,
    secret: str | None = None,
    confirmed: bool,
    now: float,
) -> int:
    """THE insert of a destination row (in the caller's transaction); its id. Conflict when
    the organization has it already."""
    return db.insert(
        "INSERT INTO destinations (organization_id, kind, address, address_key, secret,"
        " confirmed_at, confirmation_sent_at, created_at) VALUES (:org, :kind, :address, :key,"
        " :secret, :confirmed, NULL, :now) RETURNING id",
        {
            "org": org,
            "kind": kind,
            "address": address,
            "key": key,
            "secret": secret,
            "confirmed": now if confirmed else None,
            "now": now,
        },
    )


def _served(db: Database, domain: str) -> bool:
    return db.scalar("SELECT 1 FROM domains WHERE name = :d", {"d": domain}) is not None


def _send_confirmation(
    db: Database, *, org: int, destination_id: int, address: str, key: str, settings: Settings
) -> None:
    """A new link (the unused old one stops working) mailed to `address`, in the caller's
    transaction: nothing is sent if it rolls back."""
    now = time.time()
    token = links.issue(db=db, kind="destination", email=key, organization_id=org, now=now)
    name = db.scalar("SELECT name FROM organizations WHERE id = :org", {"org": org})
    url = mailer.link(settings, CONFIRM_PATH, token)
    body = (
        "Hello,\n\n"
        f"the organization {name} on smtpy wants to forward mail to {address}.\n"
        "If you agree to receive it, open this link (it works once, within 24 hours):\n\n"
        f"{url}\n\n"
        "Until then no mail is forwarded to you. If you do not know what this is about,\n"
        "ignore this mail: nothing will be sent to you.\n"
    )
    mailer.queue_mail(
        db=db,
        settings=settings,
        to=address,
        subject="Confirm that mail may be forwarded to you",
        body=body,
        now=now,
    )
    db.execute(
        "UPDATE destinations SET confirmation_sent_at = :now WHERE id = :id",
        {"now": now, "id": destination_id},
    )


def note_alias_destinations(
    db: Database, *, org: int, destinations: Sequence[str], settings: Settings | None
) -> list[str]:
    """For an alias a user adds or changes through the API or the dashboard: each mail
    address the organization has no row for gets an unconfirmed one and a confirmation
    mail (in the caller's transaction). Through the CLI nothing is needed: the operator's
    addresses count as confirmed. Addresses on domains this server serves are routed by
    their own aliases, not mailed. Returns the addresses that now await confirmation.

    Without `settings` (a caller that has none) the rows are made but no mail is sent:
    POST /destinations/{id}/resend sends it.
    """
    if not needs_confirmation():
        return []
    now = time.time()
    added: list[str] = []
    for destination in destinations:
        if is_url(destination):
            continue  # a URL destination: confirmed by the admin who adds it (url_destinations)
        parsed = parse_address(destination)
        if _served(db, parsed.domain):
            continue
        key = parsed.key
        if db.scalar(
            "SELECT 1 FROM destinations WHERE organization_id = :org AND address_key = :key",
            {"org": org, "key": key},
        ):
            continue
        new_id = insert_destination(
            db, org=org, kind="address", address=str(parsed), key=key, confirmed=False, now=now
        )
        if settings is not None:
            _send_confirmation(
                db, org=org, destination_id=new_id, address=str(parsed), key=key, settings=settings
            )
        added.append(str(parsed))
    return added


# -- the API's and the CLI's operations -------------------------------------------------


def _count(db: Database, org: int) -> tuple[set[str], int]:
    keys = {str(k).lower() for k in billing.destinations_of(db, org)}
    rows = db.all("SELECT address_key FROM destinations WHERE organization_id = :org", {"org": org})
    keys.update(str(r["address_key"]).lower() for r in rows)
    return keys, len(rows)


def check_plan_limit(*, db: Database, org: int, key: str, catalog: Catalog | None) -> None:
    """Refuse a new destination beyond the plan's `destinations` limit (PlanLimit; counted as
    the distinct addresses of the aliases and the destinations together), and in any case
    beyond `MAX_DESTINATIONS` rows."""
    billing.hold_organization(db, org)
    keys, rows = _count(db, org)
    if key.lower() not in keys:
        billing.check_limit(db, org, "destinations", catalog=catalog, used=len(keys))
    if rows >= MAX_DESTINATIONS:
        raise Conflict(
            f"an organization has at most {MAX_DESTINATIONS} destinations: remove one first"
        )


def create_destination(
    *,
    db: Database,
    org: int,
    address: str | None = None,
    url: str | None = None,
    settings: Settings | None = None,
    catalog: Catalog | None = None,
    allow_private: bool = False,
) -> DestinationCreated:
    """Add a mail address (unconfirmed, mailed a confirmation link; through the CLI,
    confirmed) or an https URL (confirmed, with a signing secret in the answer only)."""
    if (address is None) == (url is None):
        raise InvalidInput('give either "address" (a mail address) or "url" (an https URL)')
    now = time.time()
    secret: str | None = None
    if url is not None:
        from smtpy.admin.webhooks import check_url
        from smtpy.events.signing import new_secret

        target = check_url(url, allow_private=allow_private)
        kind: Kind = "url"
        stored = key = target.url
        secret = new_secret()
        confirmed = True
    else:
        assert address is not None
        parsed = parse_address(address)
        if _served(db, parsed.domain):
            raise InvalidInput(
                f"{parsed.display} is on a domain this server serves: name it in an alias"
                " directly, it needs no confirmation"
            )
        kind, stored, key = "address", str(parsed), parsed.key
        confirmed = not needs_confirmation()
    try:
        with db.transaction():
            check_plan_limit(db=db, org=org, key=key, catalog=catalog)
            new_id = insert_destination(
                db,
                org=org,
                kind=kind,
                address=stored,
                key=key,
                secret=secret,
                confirmed=confirmed,
                now=now,
            )
            if not confirmed and settings is not None:
                _send_confirmation(
                    db, org=org, destination_id=new_id, address=stored, key=key, settings=settings
                )
            record(
                db,
                org=org,
                action="destination.create",
                target=stored,
                detail={"kind": kind, "confirmed": confirmed},
            )
            created = _get(db, org, new_id)
    except Conflict:
        if db.scalar(
            "SELECT 1 FROM destinations WHERE organization_id = :org AND address_key = :key",
            {"org": org, "key": key},
        ):
            raise Conflict(
                f"the destination {stored} exists already; see GET /destinations"
            ) from None
        raise
    return DestinationCreated(**created.model_dump(), secret=secret)


def _get(db: Database, org: int, destination_id: int) -> DestinationPublic:
    row = db.one(
        _SELECT + " WHERE id = :id AND organization_id = :org", {"id": destination_id, "org": org}
    )
    if row is None:
        raise NotFound(
            f"there is no destination with id {destination_id}; see `smtpy destination list`"
        )
    return _public(row)


def _id(destination_id: str | int) -> int:
    text = str(destination_id).strip()
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise NotFound(f"there is no destination with id {text}; see GET /destinations")
    return int(text)


def get_destination(*, db: Database, org: int, destination_id: str | int) -> DestinationPublic:
    """One destination of the organization; another organization's is not found."""
    return _get(db, org, _id(destination_id))


def organization_of_destination(*, db: Database, destination_id: str | int) -> int:
    """The organization a destination belongs to (the CLI's operator acts in any)."""
    org = db.scalar(
        "SELECT organization_id FROM destinations WHERE id = :id", {"id": _id(destination_id)}
    )
    if org is None:
        raise NotFound(
            f"there is no destination with id {destination_id}; see `smtpy destination list`"
        )
    return int(org)


def page_destinations(
    *, db: Database, org: int, limit: int | None = None, cursor: str | None = None
) -> Page[DestinationPublic]:
    """The organization's destinations, newest first, a page at a time."""
    size = check_limit(limit)
    after, params = keyset("created_at", "id", cursor)
    rows = db.all(
        _SELECT
        + " WHERE organization_id = :org"
        + (f" AND {after}" if after else "")
        + " ORDER BY created_at DESC, id DESC LIMIT :n",
        {**params, "org": org, "n": size + 1},
    )
    return page_of([_public(r) for r in rows], size, key=lambda d: (d.created_at, d.id))


def list_destinations(*, db: Database, org: int | None = None) -> list[DestinationPublic]:
    """The organization's destinations (None: every organization's), newest first."""
    where = "" if org is None else " WHERE organization_id = :org"
    rows = db.all(_SELECT + where + " ORDER BY created_at DESC, id DESC", {"org": org})
    return [_public(r) for r in rows]


def _aliases_naming(db: Database, org: int, key: str) -> list[str]:
    import json

    rows = db.all(
        "SELECT a.kind, a.local_part, a.destinations, d.name FROM aliases a"
        " JOIN domains d ON d.id = a.domain_id WHERE d.organization_id = :org",
        {"org": org},
    )
    naming = []
    for row in rows:
        for destination in json.loads(row["destinations"] or "[]"):
            try:
                same = parse_address(destination).key == key
            except InvalidInput:
                same = destination == key
            if same:
                local = f"/{row['local_part']}/" if row["kind"] == "regex" else row["local_part"]
                naming.append(f"{local}@{display_domain(row['name'])}")
                break
    return naming


def remove_destination(*, db: Database, org: int, destination_id: str | int) -> DestinationPublic:
    """Remove a destination no alias names any more (an alias naming it would then count it
    as the operator's own, hence confirmed)."""
    with db.transaction():
        found = _get(db, org, _id(destination_id))
        key = str(
            db.scalar("SELECT address_key FROM destinations WHERE id = :id", {"id": found.id})
        )
        naming = _aliases_naming(db, org, key)
        if naming:
            raise Conflict(
                f"the destination {found.address} is used by the alias {naming[0]}: remove it"
                " from the alias first"
            )
        db.execute("DELETE FROM destinations WHERE id = :id", {"id": found.id})
        record(db, org=org, action="destination.remove", target=found.address)
    return found


def resend_confirmation(
    *,
    db: Database,
    org: int,
    destination_id: str | int,
    settings: Settings,
    now: float | None = None,
) -> DestinationPublic:
    """Mail a new confirmation link (the previous one stops working); at most one a minute."""
    now = time.time() if now is None else now
    with db.transaction():
        found = _get(db, org, _id(destination_id))
        if found.kind != "address":
            raise InvalidInput(f"{found.address} is a URL: it needs no confirmation")
        if found.confirmed:
            raise Conflict(f"{found.address} is confirmed already")
        sent = found.confirmation_sent_at
        if sent is not None and now - sent < RESEND_EVERY:
            wait = max(1, int(RESEND_EVERY - (now - sent)) + 1)
            raise TooManyRequests(
                f"a confirmation mail went to {found.address} less than a minute ago: wait"
                f" {wait} s, and look in its spam folder meanwhile",
                retry_after=wait,
            )
        row = db.one(
            "SELECT address, address_key FROM destinations WHERE id = :id", {"id": found.id}
        )
        assert row is not None
        _send_confirmation(
            db,
            org=org,
            destination_id=found.id,
            address=str(row["address"]),
            key=str(row["address_key"]),
            settings=settings,
        )
        record(db, org=org, action="destination.resend", target=found.address)
        return _get(db, org, found.id)


def _mark_confirmed(db: Database, org: int, destination_id: int, now: float) -> bool:
    """Confirm one row (in the caller's transaction): the event, and the mail waiting for it
    due at once. False when it was confirmed already."""
    if not db.execute(
        "UPDATE destinations SET confirmed_at = :now WHERE id = :id AND confirmed_at IS NULL",
        {"now": now, "id": destination_id},
    ):
        return False
    row = db.one(
        "SELECT address, address_key FROM destinations WHERE id = :id", {"id": destination_id}
    )
    assert row is not None
    release_waiting(db, org=org, key=str(row["address_key"]), now=now)
    local, domain = split_address(str(row["address"]))
    outbox.emit(
        db,
        org=org,
        type_="destination.verified",
        data=DestinationData(destination=f"{local}@{display_domain(domain)}"),
        at=now,
    )
    return True


def release_waiting(db: Database, *, org: int, key: str, now: float) -> int:
    """Make the deliveries of `org`'s mail waiting for the destination `key` due now."""
    domains = {
        str(r["name"])
        for r in db.all("SELECT name FROM domains WHERE organization_id = :org", {"org": org})
    }
    rows = db.all(
        "SELECT id, original_recipient, recipient FROM deliveries WHERE status = 'unconfirmed'"
        " AND lease_owner IS NULL"  # leased: its queue lifetime ended, it is being failed
    )
    ids = []
    for row in rows:
        try:
            if parse_address(str(row["recipient"])).key != key:
                continue
        except InvalidInput:
            continue
        if split_address(str(row["original_recipient"]))[1] in domains:
            ids.append(int(row["id"]))
    for delivery_id in ids:
        db.execute(
            "UPDATE deliveries SET status = 'queued', next_attempt_at = :now, last_error = NULL,"
            " updated_at = :now WHERE id = :id AND status = 'unconfirmed' AND lease_owner IS NULL",
            {"now": now, "id": delivery_id},
        )
    return len(ids)


def confirm_link(*, db: Database, token: str, now: float | None = None) -> DestinationPublic:
    """Follow a mailed confirmation link: once, within 24 hours (InvalidInput otherwise)."""
    now = time.time() if now is None else now
    with db.transaction():
        link = links.redeem(db=db, kind="destination", token=token, now=now)
        row = None
        if link.organization_id is not None:
            row = db.one(
                _SELECT
                + " WHERE organization_id = :org AND address_key = :key AND kind = 'address'",
                {"org": link.organization_id, "key": link.email},
            )
        if row is None:
            raise InvalidInput(
                "this destination was removed since the link was sent: nothing to confirm"
            )
        org = int(row["organization_id"])
        if _mark_confirmed(db, org, int(row["id"]), now):
            record(db, org=org, action="destination.confirm", target=_public(row).address)
        return _get(db, org, int(row["id"]))


def confirm_address(
    *, db: Database, address: str, org: int | None = None, now: float | None = None
) -> list[DestinationPublic]:
    """The operator marks a mail address confirmed (in `org`, or in every organization that
    has it); NotFound when none has it (it counts as confirmed then already)."""
    now = time.time() if now is None else now
    key = address_key(address)
    where = "kind = 'address' AND address_key = :key" + (
        "" if org is None else " AND organization_id = :org"
    )
    with db.transaction():
        rows = db.all(_SELECT + " WHERE " + where + " ORDER BY id", {"key": key, "org": org})
        if not rows:
            raise NotFound(
                f"no organization has the destination {address.strip()}: an address no"
                " destination names is the operator's own, and confirmed already"
            )
        confirmed = []
        for row in rows:
            row_org = int(row["organization_id"])
            if _mark_confirmed(db, row_org, int(row["id"]), now):
                record(db, org=row_org, action="destination.confirm", target=_public(row).address)
            confirmed.append(_get(db, row_org, int(row["id"])))
    return confirmed


def confirmation_states(db: Database, org: int, destinations: Iterable[str]) -> dict[str, bool]:
    """Whether each of `destinations` is confirmed for `org` (no row: confirmed)."""
    waiting = unconfirmed_keys(db, org)
    return {d: address_key_or_none(d) not in waiting for d in destinations}
