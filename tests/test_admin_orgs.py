"""The admin services act inside one organization, and the store reports conflicts itself.

Two organizations share one store (both backends): each sees only its own
domains, aliases, keys, queued mail, log events and figures; mail that no
organization's domain received (a bounce smtpy sends) is the default
organization's. The state the queue listing shows is the one the depth
counts use.
"""

from __future__ import annotations

import time

import pytest

from smtpy.admin import aliases, domains, keys, messages, queue, stats
from smtpy.admin.aliases import AliasCreate
from smtpy.admin.domains import DomainCreate
from smtpy.admin.keys import KeyCreate
from smtpy.admin.organizations import resolve_organization
from smtpy.errors import Conflict, NotFound
from smtpy.queue.message_log import LogEvent, write_events
from smtpy.queue.queries import NewDelivery, NewMessage, enqueue, queue_depth
from smtpy.store.db import Database

NOW = 1_800_000_000.0


def new_org(db: Database, name: str) -> int:
    """Organizations other than the default are made by the accounts layer (API.md)."""
    db.execute(
        "INSERT INTO organizations (name, created_at) VALUES (:n, 0)",
        {"n": name},
    )
    return resolve_organization(db=db, name=name).id


@pytest.fixture
def two(db: Database) -> tuple[int, int]:
    """The default organization serving mine.test, and acme serving acme.test."""
    mine = resolve_organization(db=db).id
    acme = new_org(db, "acme")
    for org, name in ((mine, "mine.test"), (acme, "acme.test")):
        domains.add_domain(db=db, org=org, domain=DomainCreate(name=name, key_algorithm="ed25519"))
        aliases.add_alias(
            db=db,
            org=org,
            alias=AliasCreate(address=f"info@{name}", destinations=[f"info@dest.{name}"]),
        )
    return mine, acme


def mail(db: Database, queue_id: str, to: str, *, sender: str = "s@sender.test") -> None:
    enqueue(
        db,
        NewMessage(
            queue_id=queue_id,
            sender=sender,
            data=b"Subject: x\r\n\r\nbody\r\n",
            deliveries=[NewDelivery(to, "someone@far.test", "far.test", "srs@fwd.test")],
            received_at=NOW,
        ),
    )


def test_each_organization_lists_and_finds_only_its_own(db: Database, two: tuple[int, int]) -> None:
    mine, acme = two
    assert [d.name for d in domains.list_domains(db=db, org=mine)] == ["mine.test"]
    assert [d.name for d in domains.list_domains(db=db, org=acme)] == ["acme.test"]
    assert domains.get_domain(db=db, org=acme, name="acme.test").organization == "acme"
    assert [a.address for a in aliases.list_aliases(db=db, org=acme)] == ["info@acme.test"]
    assert [k.domain for k in keys.list_keys(db=db, org=mine)] == ["mine.test"]
    for call in (
        lambda: domains.get_domain(db=db, org=mine, name="acme.test"),
        lambda: domains.remove_domain(db=db, org=mine, name="acme.test"),
        lambda: aliases.find_alias(db=db, org=mine, address="info@acme.test"),
        lambda: aliases.remove_alias(db=db, org=mine, address="info@acme.test"),
        lambda: aliases.add_alias(
            db=db, org=mine, alias=AliasCreate(address="x@acme.test", destinations=["y@z.test"])
        ),
        lambda: keys.generate_key(
            db=db, org=mine, domain="acme.test", key=KeyCreate(algorithm="ed25519")
        ),
        lambda: keys.list_keys(db=db, org=mine, domain="acme.test"),
    ):
        with pytest.raises(NotFound, match=r"acme\.test is not served here"):
            call()
    assert [d.name for d in domains.list_domains(db=db, org=acme)] == ["acme.test"]
    assert len(aliases.list_aliases(db=db, org=acme)) == 1


def test_a_domain_another_organization_serves_is_a_conflict(
    db: Database, two: tuple[int, int]
) -> None:
    mine, _ = two
    with pytest.raises(Conflict, match=r"acme\.test is already served"):
        domains.add_domain(db=db, org=mine, domain=DomainCreate(name="ACME.test"))


def test_an_unknown_organization_is_not_found_and_not_created(db: Database) -> None:
    with pytest.raises(NotFound, match="no organization named 'nope'"):
        resolve_organization(db=db, name="nope")
    assert db.scalar("SELECT count(*) FROM organizations WHERE name = 'nope'") == 0
    assert resolve_organization(db=db).name == "default"  # created on first use
    assert resolve_organization(db=db, name="default") == resolve_organization(db=db)


def test_queued_mail_belongs_to_the_domain_it_was_sent_to(
    db: Database, two: tuple[int, int]
) -> None:
    mine, acme = two
    mail(db, "QMINE", "info@mine.test")
    mail(db, "QACME", "info@acme.test")
    mail(db, "QDSN", "s@sender.test", sender="")  # a bounce smtpy sends: nobody's domain
    assert [m.queue_id for m in queue.list_messages(db=db, org=mine)] == ["QMINE", "QDSN"]
    assert [m.queue_id for m in queue.list_messages(db=db, org=acme)] == ["QACME"]
    assert queue.all_ids(db=db, org=acme) == ["QACME"]
    with pytest.raises(NotFound, match="no queued message has id QACME"):
        queue.show_message(db=db, org=mine, queue_id="QACME")
    with pytest.raises(NotFound, match="QACME"):
        queue.hold(db=db, org=mine, queue_ids=["QACME"])
    assert queue.hold(db=db, org=acme, queue_ids=["qacme"]) == 1
    shown = queue.show_message(db=db, org=acme, queue_id="QACME")
    assert (shown.state, shown.headers) == ("held", "Subject: x\r\n")
    assert queue.delete(db=db, org=mine, queue_ids=["QACME"], missing_ok=True) == 0
    assert [m.queue_id for m in queue.list_messages(db=db, org=acme)] == ["QACME"]


def test_the_listing_and_the_depth_counts_agree_on_each_state(
    db: Database, two: tuple[int, int]
) -> None:
    mine, _ = two
    for queue_id in ("QA", "QB", "QC"):
        mail(db, queue_id, "info@mine.test")
    db.execute(
        "UPDATE deliveries SET attempts = 1, next_attempt_at = :later WHERE message_id ="
        " (SELECT id FROM messages WHERE queue_id = 'QB')",
        {"later": NOW + 3600},
    )
    queue.hold(db=db, org=mine, queue_ids=["QC"])
    listed = {m.queue_id: m.state for m in queue.list_messages(db=db, org=mine, now=NOW)}
    assert listed == {"QA": "active", "QB": "deferred", "QC": "held"}
    counts, _ = queue_depth(db, now=NOW)
    assert counts == {"active": 1, "deferred": 1, "held": 1}
    assert [
        m.queue_id for m in queue.list_messages(db=db, org=mine, state="deferred", now=NOW)
    ] == ["QB"]


def test_log_and_figures_are_the_organizations_own(db: Database, two: tuple[int, int]) -> None:
    mine, acme = two
    write_events(
        db,
        [
            LogEvent(at=NOW, event="received", alias="info@mine.test", domain="mine.test"),
            LogEvent(at=NOW + 1, event="received", alias="info@acme.test", domain="acme.test"),
            LogEvent(at=NOW + 2, event="rejected", alias="x@relay.test", reason="relay_denied"),
        ],
    )
    flt = messages.LogFilter()
    assert [r["alias"] for r in messages.recent(db=db, org=acme, flt=flt)] == ["info@acme.test"]
    assert [r["alias"] for r in messages.recent(db=db, org=mine, flt=flt)] == [
        "info@mine.test",
        "x@relay.test",
    ]
    follower = messages.Follower(org=acme, flt=flt, start_id=0)
    assert [r["alias"] for r in follower.poll(db)] == ["info@acme.test"]
    for org, received, rejected in ((mine, 1, 1), (acme, 1, 0)):
        figures = stats.compute(db=db, org=org, since=NOW - 10, until=NOW + 10)
        assert (figures.total.received, figures.total.rejected) == (received, rejected)
    by_domain = stats.compute(db=db, org=acme, since=NOW - 10, until=NOW + 10, by="domain")
    assert [g.key for g in by_domain.groups] == ["acme.test"]


def test_the_store_reports_unique_and_foreign_key_violations_as_errors_of_smtpy(
    db: Database,
) -> None:
    resolve_organization(db=db)
    with pytest.raises(Conflict, match="already holds"):
        db.execute("INSERT INTO organizations (name, created_at) VALUES ('default', 0)")
    with pytest.raises(NotFound, match="refers to is gone"):
        db.execute(
            "INSERT INTO domains (organization_id, name, verification_token, created_at)"
            " VALUES (999999, 'orphan.test', 't', :now)",
            {"now": time.time()},
        )
    assert db.scalar("SELECT count(*) FROM domains") == 0
