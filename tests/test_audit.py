"""The audit log: every change, with who made it, through which shell, from where.

A change made with the real CLI and changes made through the real `smtpy api`
(an API key, a browser session) all appear in GET /api/v1/audit-log with their
actor, `via` and client address; and every core service that changes
something records it, under the actor the shell set.
"""

from __future__ import annotations

import getpass
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from apiserver import ApiServer, seed_org
from conftest import Cli
from dnsserver import DNSServer
from smtpy.accounts import api_keys, audit, members, sessions, users
from smtpy.accounts.actor import Actor, acting
from smtpy.admin import aliases, domains, keys, organizations, queue
from smtpy.admin.alias_import import import_virtual_map
from smtpy.admin.aliases import AliasCreate, AliasUpdate
from smtpy.admin.domains import DomainCreate, DomainUpdate
from smtpy.admin.keys import KeyCreate, KeyRotate
from smtpy.queue.queries import NewDelivery, NewMessage, enqueue
from smtpy.store.db import Database


@pytest.fixture
def api(cli_env: dict[str, str]) -> Iterator[ApiServer]:
    with ApiServer(cli_env) as server:
        yield server


def signed_in(api: ApiServer, store_url: str, user_id: int, org: int) -> httpx.Client:
    with Database(store_url) as db:
        new = sessions.create(
            db=db, user_id=user_id, organization_id=org, mfa_passed=True, lifetime=3600
        )
    browser = api.browser()
    browser.cookies.set("smtpy_session", new.token)
    browser.headers["X-CSRF-Token"] = sessions.csrf_token(new.token)
    return browser


def whole_log(client: httpx.Client) -> list[dict[str, Any]]:
    """Every event, walking the pages two at a time (bounded)."""
    events: list[dict[str, Any]] = []
    cursor = None
    for _ in range(100):
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        answer = client.get("/api/v1/audit-log", params=params)
        assert answer.status_code == 200, answer.text
        page = answer.json()
        events.extend(page["data"])
        if not page["has_more"]:
            return events
        cursor = page["next_cursor"]
    raise AssertionError("the audit log did not end within 100 pages")


def test_cli_and_api_changes_appear_with_actor_via_and_address(
    api: ApiServer, store_url: str, cli: Cli
) -> None:
    acme = seed_org(store_url, org="acme")
    member = seed_org(store_url, org="acme", role="member")
    other = seed_org(store_url, org="other")

    added = cli("domain", "add", "acme.test", "--org", "acme", "--key-algorithm", "ed25519")
    assert added.code == 0, added.stderr
    as_key = api.as_key(acme["key"])
    created = as_key.post("/api/v1/api-keys", json={"name": "deploy"})
    assert created.status_code == 201, created.text
    secret = created.json()["key"]
    key_id = acme["key"].split("_")[1]
    browser = signed_in(api, store_url, acme["user"], acme["org"])
    assert browser.patch("/api/v1/org", json={"name": "Acme Inc"}).status_code == 200

    events = whole_log(browser)
    assert [e["at"] for e in events] == sorted((e["at"] for e in events), reverse=True)
    assert len({e["id"] for e in events}) == len(events)
    by_action = {e["action"]: e for e in reversed(events)}  # the newest of each

    domain = by_action["domain.create"]
    assert (domain["via"], domain["actor"], domain["target"]) == (
        "cli",
        getpass.getuser(),
        "acme.test",
    )
    assert domain["client_ip"] is None
    assert domain["at"].endswith("Z") and isinstance(domain["id"], str)

    key = by_action["apikey.create"]
    assert key["via"] == "api_key"
    assert key["actor"] == f"key owner key ({key_id})"
    assert key["client_ip"] == "127.0.0.1"
    assert key["target"] == f"key deploy ({created.json()['id']})"

    rename = by_action["organization.rename"]
    assert (rename["via"], rename["actor"], rename["client_ip"]) == (
        "session",
        acme["email"],
        "127.0.0.1",
    )
    assert rename["detail"] == {"from": "acme"} and rename["target"] == "Acme Inc"

    assert secret not in json.dumps(events)
    assert secret.split("_", 2)[2] not in json.dumps(events)  # the secret may hold "_" itself

    # Members do not read the audit log; another organization sees none of it.
    assert (
        signed_in(api, store_url, member["user"], acme["org"]).get("/api/v1/audit-log").status_code
        == 403
    )
    theirs = api.as_key(other["key"]).get("/api/v1/audit-log").json()["data"]
    assert not {e["action"] for e in theirs} & {"domain.create", "organization.rename"}
    assert all("acme" not in (e["target"] or "") for e in theirs)


def mail(db: Database, queue_id: str, to: str) -> None:
    enqueue(
        db,
        NewMessage(
            queue_id=queue_id,
            sender="s@sender.test",
            data=b"Subject: x\r\n\r\nbody\r\n",
            deliveries=[NewDelivery(to, "someone@far.test", "far.test", "srs@fwd.test")],
        ),
    )


def test_every_change_of_every_service_is_recorded_as_the_acting_shells(db: Database) -> None:
    operator = Actor(via="cli", name="ops")
    with acting(operator):
        org = organizations.add_organization(db=db, name="acme").id
        owner, _ = users.add_user(db=db, email="o@acme.test", org=org, password=None)
        bob, role = users.add_user(db=db, email="b@acme.test", org=org, password=None)
        assert role == "member"
        bob_member = next(m for m in members.list_members(db=db, org=org) if m.user_id == bob.id)
        members.change_role(db=db, org=org, member_id=bob_member.id, role="admin")
        members.remove_member(db=db, org=org, member_id=bob_member.id)
        users.change_password(db=db, user_id=owner.id, password="a long password 1")
        users.reset_two_factor(db=db, user_id=owner.id)
        organizations.rename_organization(db=db, org=org, name="Acme")
        key = api_keys.create_key(db=db, org=org, name="ci")
        api_keys.revoke_key(db=db, org=org, key_id=key.id)

        domains.add_domain(
            db=db, org=org, domain=DomainCreate(name="acme.test", key_algorithm="ed25519")
        )
        domains.update_domain(
            db=db, org=org, name="acme.test", update=DomainUpdate(dmarc_reject="on")
        )
        aliases.add_alias(
            db=db, org=org, alias=AliasCreate(address="a@acme.test", destinations=["x@far.test"])
        )
        aliases.update_alias(
            db=db, org=org, address="a@acme.test", update=AliasUpdate(enabled=False)
        )
        aliases.remove_alias(db=db, org=org, address="a@acme.test")
        import_virtual_map(db=db, org=org, text="b@acme.test x@far.test\n")
        keys.generate_key(
            db=db, org=org, domain="acme.test", key=KeyCreate(selector="s2", algorithm="ed25519")
        )
        keys.rotate_key(
            db=db, org=org, domain="acme.test", key=KeyRotate(selector="s3", algorithm="ed25519")
        )
        keys.remove_key(db=db, org=org, domain="acme.test", selector="s2")
        for queue_id in ("QA", "QB", "QC"):
            mail(db, queue_id, "b@acme.test")
        queue.hold(db=db, org=org, queue_ids=["QA"])
        queue.release(db=db, org=org, queue_ids=["QA"])
        queue.retry(db=db, org=org, queue_ids=["QA"], now=time.time())
        queue.delete(db=db, org=org, queue_ids=["QB"])
        queue.bounce(db=db, org=org, queue_ids=["QC"], hostname="mx.forwarder.test")
        domains.remove_domain(db=db, org=org, name="acme.test")
        users.remove_user(db=db, user_id=bob.id)

    events = audit.list_events(db=db, org=org, limit=200).data
    assert {(e.via, e.actor) for e in events} == {("cli", "ops")}
    actions = [e.action for e in reversed(events)]  # oldest first
    assert actions == [
        "organization.create",
        "user.create",
        "member.add",
        "user.create",
        "member.add",
        "member.update",
        "member.remove",
        "user.password",
        "user.2fa_reset",
        "organization.rename",
        "apikey.create",
        "apikey.revoke",
        "domain.create",
        "domain.update",
        "alias.create",
        "alias.update",
        "alias.remove",
        "alias.create",
        "alias.import",
        "dkim.create",
        "dkim.rotate",
        "dkim.remove",
        "queue.hold",
        "queue.release",
        "queue.retry",
        "queue.delete",
        "queue.bounce",
        "domain.remove",
    ]
    # Bob was no member of acme any more: his removal is in no organization's log.
    targets = {e.action: e.target for e in events}
    assert targets["queue.bounce"] == "QC" and targets["alias.update"] == "a@acme.test"
    assert targets["dkim.remove"] == "s2._domainkey.acme.test"
    assert (
        db.scalar(
            "SELECT count(*) FROM audit_log WHERE action = 'user.remove' AND organization_id IS NULL"
        )
        == 1
    )

    # Nothing recorded for what changed nothing or failed.
    with acting(operator):
        api_keys.revoke_key(db=db, org=org, key_id=key.id)  # revoked already
        with pytest.raises(Exception, match="already"):
            organizations.add_organization(db=db, name="ACME")
    assert len(audit.list_events(db=db, org=org, limit=200).data) == len(events)


def test_without_a_shell_changes_are_the_systems(db: Database) -> None:
    org = organizations.add_organization(db=db, name="acme").id
    (event,) = audit.list_events(db=db, org=org).data
    assert (event.via, event.actor, event.action) == ("system", "smtpy", "organization.create")


def test_verify_is_recorded_when_it_changes_the_domain(db: Database, dns_server: DNSServer) -> None:
    """An API-added domain stops being pending and becomes verified: one event; verifying
    again changes nothing and records nothing."""
    host, _, port = dns_server.nameserver.rpartition(":")
    with acting(Actor(via="session", name="o@acme.test", client_ip="127.0.0.9")):
        org = organizations.add_organization(db=db, name="acme").id
        domains.add_domain(
            db=db,
            org=org,
            domain=DomainCreate(name="acme.test", key_algorithm="ed25519", pending=True),
        )
        for record in domains.domain_records(
            db=db, org=org, name="acme.test", hostname="mx.forwarder.test"
        ):
            dns_server.add(record.name, record.type, record.value)
        for _ in range(2):
            report = domains.verify_domain(
                db=db,
                org=org,
                name="acme.test",
                hostname="mx.forwarder.test",
                nameservers=[(host, int(port))],
                timeout=2.0,
            )
            assert report.verified
    events = [e for e in audit.list_events(db=db, org=org).data if e.action == "domain.verify"]
    assert len(events) == 1
    assert events[0].detail == {"pending": False, "verified": True}
    assert (events[0].via, events[0].actor, events[0].client_ip) == (
        "session",
        "o@acme.test",
        "127.0.0.9",
    )
    created = next(e for e in audit.list_events(db=db, org=org).data if e.action == "domain.create")
    assert created.detail is not None and created.detail["pending"] is True
