"""Two organizations on one real `smtpy api`, for tests that need them both (module scope).

    world = make_world(store_url, env)   # A and B, each with a user, a key and objects
    world.a["key"], world.b["domain"], world.snapshot_b()

B's objects are made through the core services, as the CLI and the daemon make
them: a served domain with an alias, a message in the queue and the message log,
a membership, an API key and a browser session.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apiserver import ApiServer, seed_org
from conftest import POSTGRES_URL, _with_db, drop_database, postgres_admin

# Tables that hold an organization's data, and how to select B's rows in each.
B_ROWS = {
    "organizations": "SELECT * FROM organizations WHERE id = :org",
    "domains": "SELECT * FROM domains WHERE organization_id = :org ORDER BY id",
    "aliases": (
        "SELECT * FROM aliases WHERE domain_id IN"
        " (SELECT id FROM domains WHERE organization_id = :org) ORDER BY id"
    ),
    "dkim_keys": (
        "SELECT * FROM dkim_keys WHERE domain_id IN"
        " (SELECT id FROM domains WHERE organization_id = :org) ORDER BY id"
    ),
    "memberships": "SELECT * FROM memberships WHERE organization_id = :org ORDER BY id",
    "users": (
        "SELECT * FROM users WHERE id IN"
        " (SELECT user_id FROM memberships WHERE organization_id = :org) ORDER BY id"
    ),
    "api_keys": "SELECT * FROM api_keys WHERE organization_id = :org ORDER BY id",
    "sessions": (
        "SELECT * FROM sessions WHERE user_id IN"
        " (SELECT user_id FROM memberships WHERE organization_id = :org) ORDER BY id"
    ),
    "messages": "SELECT * FROM messages WHERE queue_id = :queue_id",
    "deliveries": (
        "SELECT * FROM deliveries WHERE message_id IN"
        " (SELECT id FROM messages WHERE queue_id = :queue_id) ORDER BY id"
    ),
    "message_log": "SELECT * FROM message_log WHERE domain = :domain ORDER BY id",
    "audit_log": "SELECT * FROM audit_log WHERE organization_id = :org ORDER BY id",
    "webhooks": "SELECT * FROM webhooks WHERE organization_id = :org ORDER BY id",
    "webhook_deliveries": (
        "SELECT * FROM webhook_deliveries WHERE webhook_id IN"
        " (SELECT id FROM webhooks WHERE organization_id = :org) ORDER BY id"
    ),
    "destinations": "SELECT * FROM destinations WHERE organization_id = :org ORDER BY id",
}


@contextmanager
def module_store(backend: str, tmp: Path) -> Iterator[str]:
    """A migrated store of its own on `backend` (sqlite or postgresql)."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp / 'smtpy.db'}"
        return
    name = f"smtpy_w_{uuid.uuid4().hex[:12]}"
    postgres_admin(POSTGRES_URL, f"CREATE DATABASE {name}")
    try:
        from smtpy.store.migrate import upgrade

        url = _with_db(POSTGRES_URL, name)
        upgrade(url)
        yield url
    finally:
        drop_database(POSTGRES_URL, name)


def base_env(store_url: str, tmp: Path, nameserver: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMTPY_")}
    env.update(
        {
            "SMTPY_DATABASE_URL": store_url,
            "SMTPY_HOSTNAME": "mx.forwarder.test",
            "SMTPY_STATE_DIR": str(tmp / "state"),
            "SMTPY_DNS_NAMESERVERS": nameserver,
            "SMTPY_DNS_TIMEOUT": "2",
            "HOME": str(tmp),
        }
    )
    return env


@dataclass
class World:
    store_url: str
    a: dict[str, Any]
    b: dict[str, Any]
    server: ApiServer | None = None
    document: dict[str, Any] = field(default_factory=dict)

    def snapshot_b(self) -> dict[str, list[dict[str, Any]]]:
        """All of B's rows, to compare before and after a call by A."""
        from smtpy.store.db import Database

        params = {"org": self.b["org"], "queue_id": self.b["queue_id"], "domain": self.b["domain"]}
        with Database(self.store_url) as db:
            return {table: [dict(r) for r in db.all(sql, params)] for table, sql in B_ROWS.items()}


def seed_objects(store_url: str, who: dict[str, Any], domain: str) -> None:
    """A served domain with an alias, a queued and logged message, a second member, a
    browser session (past 2FA) and a webhook endpoint with a failed delivery for `who` (a
    `seed_org` answer), recorded in `who`."""
    from smtpy.accounts import members, sessions, users
    from smtpy.admin.aliases import AliasCreate, add_alias
    from smtpy.admin.destinations import insert_destination
    from smtpy.admin.domains import DomainCreate, add_domain
    from smtpy.admin.webhooks import create_webhook
    from smtpy.events import outbox
    from smtpy.events.types import DomainData
    from smtpy.queue.message_log import LogEvent, write_events
    from smtpy.queue.queries import NewDelivery, NewMessage, enqueue
    from smtpy.store.db import Database

    org = who["org"]
    now = time.time()
    queue_id = f"Q{uuid.uuid4().hex[:10].upper()}"
    with Database(store_url) as db:
        add_domain(db=db, org=org, domain=DomainCreate(name=domain, key_algorithm="ed25519"))
        alias = add_alias(
            db=db,
            org=org,
            alias=AliasCreate(address=f"info@{domain}", destinations=[f"box@dest.{domain}"]),
        )
        with db.transaction():
            enqueue(
                db,
                NewMessage(
                    queue_id=queue_id,
                    sender="someone@sender.test",
                    data=b"Subject: hello\r\n\r\nbody\r\n",
                    deliveries=[
                        NewDelivery(
                            f"info@{domain}", f"box@dest.{domain}", f"dest.{domain}", "srs@fwd.test"
                        )
                    ],
                    received_at=now,
                ),
            )
            write_events(
                db,
                [
                    LogEvent(
                        at=now,
                        event="received",
                        queue_id=queue_id,
                        sender="someone@sender.test",
                        alias=f"info@{domain}",
                        recipient=f"box@dest.{domain}",
                        domain=domain,
                        size=30,
                    )
                ],
            )
        member = users.create_user(db=db, email=f"member@{domain}", password=who["password"])
        membership = members.add_member(db=db, org=org, user_id=member.id, role="member")
        session = sessions.create(
            db=db, user_id=who["user"], organization_id=org, mfa_passed=True, lifetime=86400
        )
        hook = create_webhook(db=db, org=org, url=f"https://hooks.{domain}/in", allow_private=True)
        with db.transaction():
            outbox.emit(db, org=org, type_="domain.verified", data=DomainData(domain=domain))
        delivery_id = db.scalar(
            "SELECT id FROM webhook_deliveries WHERE webhook_id = :hook", {"hook": hook.id}
        )
        with db.transaction():  # awaiting confirmation, as one added through the API
            destination_id = insert_destination(
                db,
                org=org,
                kind="address",
                address=f"pending@dest.{domain}",
                key=f"pending@dest.{domain}",
                confirmed=False,
                now=now,
            )
        key_id = db.scalar(
            "SELECT id FROM api_keys WHERE organization_id = :org ORDER BY created_at LIMIT 1",
            {"org": org},
        )
    who.update(
        domain=domain,
        alias_id=str(alias.id),
        queue_id=queue_id,
        member_id=str(membership.id),
        key_id=str(key_id),
        destination_id=str(destination_id),
        session_id=str(session.session.id),
        session_token=session.token,
        webhook_id=hook.id,
        delivery_id=str(delivery_id),
    )


def make_world(store_url: str) -> World:
    a = seed_org(store_url, org="tenant-a", email="owner@tenant-a.test")
    b = seed_org(store_url, org="tenant-b", email="owner@tenant-b.test")
    seed_objects(store_url, a, "tenant-a.test")
    seed_objects(store_url, b, "tenant-b.test")
    return World(store_url=store_url, a=a, b=b)
