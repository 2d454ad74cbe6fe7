"""Events: their shape and signature, the outbox (only for organizations that subscribed)
and the feed that fills it from the message log in the order of commits, and end to end
through the real `smtpy serve`: a message sent through it reaches a real HTTPS receiver
as message.received and message.forwarded, nothing is lost to `kill -9`, and several
serving processes or nodes deliver each event once."""

from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook

from conftest import Cli
from dnsserver import DNSServer
from mailpeers import DOMAIN, SENDER, Forwarder, forwarding_world, make_message, send
from smtpy.admin import webhooks
from smtpy.admin.organizations import resolve_organization
from smtpy.errors import StoreError
from smtpy.events import outbox, signing
from smtpy.events.types import EVENT_TYPES, DomainData, body_of, make_event
from smtpy.queue import event_feed
from smtpy.queue.message_log import LogEvent, write_events
from smtpy.store.db import Database
from waiting import wait_until
from webhook_receiver import Hit, Reply, WebhookReceiver

ALIAS = f"team@{DOMAIN}"


# -- shape and signature (pure) -----------------------------------------------------------


def test_the_body_is_type_timestamp_data_and_verifies_with_standardwebhooks() -> None:
    event = make_event("domain.verified", DomainData(domain="bücher.test"), at=1_800_000_000.25)
    body = body_of(event)
    assert body == (
        '{"type":"domain.verified","timestamp":"2027-01-15T08:00:00.250Z",'
        '"data":{"domain":"bücher.test"}}'
    )
    old, new = signing.new_secret(), signing.new_secret()
    assert old.startswith("whsec_") and old != new
    now = int(time.time())
    headers = signing.headers([new, old], msg_id="evt_1", timestamp=now, body=body)
    assert headers["webhook-id"] == "evt_1" and headers["webhook-timestamp"] == str(now)
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (new, old):  # either secret verifies during a rotation
        assert Webhook(secret).verify(body.encode(), headers)["data"]["domain"] == "bücher.test"
    with pytest.raises(Exception, match="No matching signature"):
        Webhook(signing.new_secret()).verify(body.encode(), headers)
    tampered = body.replace("bücher", "bucher")
    with pytest.raises(Exception, match="No matching signature"):
        Webhook(new).verify(tampered.encode(), headers)


def test_every_type_has_a_model() -> None:
    assert len(EVENT_TYPES) == 9
    with pytest.raises(ValueError):
        make_event("domain.verified", {"domain": "a.test", "extra": 1}, at=0)


# -- the outbox in the store ------------------------------------------------------------------


@pytest.fixture
def db(store_url: str) -> Iterator[Database]:
    database = Database(store_url)
    yield database
    database.close()
    outbox.invalidate()


def _domain(db: Database, name: str, org: int) -> None:
    db.execute(
        "INSERT INTO domains (organization_id, name, verification_token, pending, created_at)"
        " VALUES (:org, :name, 'tok', :no, 0)",
        {"org": org, "name": name, "no": False},
    )


def _rows(db: Database) -> tuple[int, int]:
    return (
        int(db.scalar("SELECT count(*) FROM webhook_events")),
        int(db.scalar("SELECT count(*) FROM webhook_deliveries")),
    )


def _log(domain: str, event: str = "received") -> LogEvent:
    return LogEvent(
        at=time.time(),
        event=event,
        queue_id="Q1",
        sender=SENDER,
        alias=f"team@{domain}",
        recipient="sink@dest1.test",
        domain=domain,
        size=123,
        code=250 if event == "delivered" else None,
    )


def _subscribed(db: Database) -> None:
    """example.test served for the default organization, with an endpoint that wants
    every event type."""
    org = resolve_organization(db=db).id
    _domain(db, "example.test", org)
    webhooks.create_webhook(db=db, org=org, url="https://hooks.example.net/in")


def _feed(db: Database, *, node: str = "n1", now: float | None = None) -> list[str]:
    """Passes of the feed, as `smtpy serve` makes them, until it has read the whole log;
    the ids of the events it made, leased to `node`.

    On PostgreSQL a row waits for the write transactions older than its own to end,
    anywhere in the cluster (other tests' databases among them): hence the passes."""
    made: list[str] = []

    def read_to_the_end() -> bool:
        fed = event_feed.feed(db, node=node, lease=60, now=time.time() if now is None else now)
        made.extend(claimed.event_id for claimed in fed.claimed)
        last = db.one(
            "SELECT coalesce(txid, 0) AS txid, id FROM message_log"
            " ORDER BY coalesce(txid, 0) DESC, id DESC LIMIT 1"
        )
        cursor = event_feed.read_cursor(db)
        assert cursor is not None
        return last is None or (cursor.txid, cursor.log_id) >= (last["txid"], last["id"])

    wait_until(read_to_the_end, "the feed read the whole message log")
    return made


def test_the_feed_makes_only_what_an_endpoint_wants_from_the_log(db: Database) -> None:
    org = resolve_organization(db=db).id
    other = db.insert(
        "INSERT INTO organizations (name, created_at) VALUES ('other', 0) RETURNING id"
    )
    _domain(db, "example.test", org)
    _domain(db, "other.test", other)

    # No webhook anywhere: the message log is written, the outbox is not.
    with db.transaction():
        write_events(db, [_log("example.test"), _log("example.test", "delivered")])
    assert _feed(db) == [] and _rows(db) == (0, 0)

    hook = webhooks.create_webhook(
        db=db, org=org, url="https://hooks.example.net/in", events=["message.received"]
    )
    with db.transaction():
        write_events(
            db,
            [
                _log("example.test"),  # wanted
                _log("example.test", "delivered"),  # message.forwarded: not subscribed
                _log("other.test"),  # another organization's domain
                _log("unserved.test", "rejected"),  # nobody's
            ],
        )
    assert _rows(db) == (0, 0)  # the mail's commit wrote no event
    made = _feed(db)
    assert len(made) == 1 and _rows(db) == (1, 1)
    body = json.loads(db.scalar("SELECT body FROM webhook_events"))
    assert body["type"] == "message.received"
    assert body["data"] == {
        "queue_id": "Q1",
        "sender": SENDER,
        "alias": "team@example.test",
        "recipient": "sink@dest1.test",
        "domain": "example.test",
        "size": 123,
    }
    delivery = db.one("SELECT webhook_id, lease_owner, status FROM webhook_deliveries")
    assert delivery == {"webhook_id": hook.id, "lease_owner": "n1", "status": "pending"}
    assert _feed(db) == []  # each row once

    # A transaction undone takes its rows with it: nothing to make events of.
    with pytest.raises(StoreError), db.transaction():
        write_events(db, [_log("example.test")])
        raise StoreError("the commit failed")
    assert _feed(db) == [] and _rows(db) == (1, 1)

    # A disabled endpoint gets nothing new.
    webhooks.update_webhook(db=db, org=org, webhook_id=hook.id, enabled=False)
    with db.transaction():
        write_events(db, [_log("example.test")])
    idle = time.time() + event_feed.IDLE_SKIP + 1  # nobody wants the log: it is skipped
    assert _feed(db, now=idle) == [] and _rows(db) == (1, 1)


def test_an_endpoint_gets_the_events_of_what_happened_after_it_was_created(
    db: Database,
) -> None:
    org = resolve_organization(db=db).id
    _domain(db, "example.test", org)
    before = replace(_log("example.test"), at=time.time() - 3600, queue_id="OLD")
    with db.transaction():
        write_events(db, [before])
    webhooks.create_webhook(db=db, org=org, url="https://hooks.example.net/in")
    with db.transaction():
        write_events(db, [_log("example.test")])
    _feed(db)
    bodies = [json.loads(r["body"]) for r in db.all("SELECT body FROM webhook_events")]
    assert [b["data"]["queue_id"] for b in bodies] == ["Q1"]


def test_a_row_that_makes_no_valid_event_holds_back_none_after_it(db: Database) -> None:
    if db.dialect != "sqlite":
        pytest.skip("only SQLite keeps a value of another type in a column")
    _subscribed(db)
    db.execute(
        "INSERT INTO message_log (at, event, domain, size)"
        " VALUES (:at, 'received', 'example.test', 'lots')",
        {"at": time.time()},
    )
    with db.transaction():
        write_events(db, [_log("example.test")])
    assert len(_feed(db)) == 1
    assert json.loads(db.scalar("SELECT body FROM webhook_events"))["data"]["size"] == 123


def test_processes_feeding_in_turn_make_each_row_into_events_once(db: Database) -> None:
    _subscribed(db)
    made: list[str] = []
    for n in range(3):
        with db.transaction():
            write_events(db, [_log("example.test"), _log("example.test", "delivered")])
        wait_until(lambda: event_feed.waiting(db, now=time.time()), "the rows are visible")
        fed = event_feed.feed(db, node=f"p{n % 2}", lease=60, now=time.time(), limit=1)
        assert len(fed.claimed) == 1 and fed.more  # one of two rows: more wait
        made += [c.event_id for c in fed.claimed]
        made += _feed(db, node=f"p{(n + 1) % 2}")  # the other process takes the rest
    assert len(made) == len(set(made)) == 6 == _rows(db)[0]
    assert _feed(db) == []
    assert not event_feed.waiting(db, now=time.time())


def test_the_feed_waits_for_a_transaction_that_commits_out_of_order(store_url: str) -> None:
    """Two nodes on PostgreSQL: a row that commits after a later row must not be passed
    over (on SQLite one writer at a time makes ids the order of commits)."""
    if not store_url.startswith("postgresql"):
        pytest.skip("only PostgreSQL commits log rows out of id order")
    with Database(store_url) as db, Database(store_url) as other:
        _subscribed(db)
        with other.transaction():
            write_events(other, [replace(_log("example.test"), queue_id="FIRST")])  # id n
            with db.transaction():
                write_events(db, [replace(_log("example.test"), queue_id="SECOND")])  # id n+1
            assert not event_feed.waiting(db, now=time.time())
            # The first row is not visible yet: nothing is passed over.
            assert event_feed.feed(db, node="n1", lease=60, now=time.time()).claimed == []
        assert len(_feed(db)) == 2  # once the first committed: both, none passed over
        queue_ids = [
            json.loads(r["body"])["data"]["queue_id"]
            for r in db.all("SELECT body FROM webhook_events")
        ]
        assert sorted(queue_ids) == ["FIRST", "SECOND"]
        assert _feed(db) == []
    outbox.invalidate()


def test_a_transaction_left_open_is_named_when_it_holds_the_feed_back(store_url: str) -> None:
    if not store_url.startswith("postgresql"):
        pytest.skip("only PostgreSQL's feed waits for older transactions")
    with Database(store_url) as db, Database(store_url) as other:
        _subscribed(db)
        with other.transaction():
            other.scalar("SELECT pg_current_xact_id()")  # a write transaction, left open
            pid = other.scalar("SELECT pg_backend_pid()")
            with db.transaction():
                write_events(db, [_log("example.test")])
            two_minutes_on = time.time() + 120
            holdup = event_feed.held_back(db, now=two_minutes_on)
            assert holdup is not None and holdup.waiting >= 119
            assert holdup.running is not None and holdup.pid is not None
            if holdup.pid != pid:  # another test's transaction, older still, holds it too
                assert holdup.database != db.scalar("SELECT current_database()")
            assert event_feed.held_back(db, now=two_minutes_on, after=600) is None
        assert len(_feed(db)) == 1
        assert event_feed.held_back(db, now=two_minutes_on) is None
    outbox.invalidate()


def test_an_idle_feed_moves_to_the_end_of_the_log(db: Database) -> None:
    org = resolve_organization(db=db).id
    _domain(db, "example.test", org)
    with db.transaction():
        write_events(db, [_log("example.test")] * 3)
    later = time.time() + event_feed.IDLE_SKIP + 1
    wait_until(lambda: event_feed.waiting(db, now=later), "an idle move is due")
    assert _feed(db, now=later) == []  # read to the end: moved there, nothing made
    assert not event_feed.waiting(db, now=later + event_feed.IDLE_SKIP + 1)
    # An endpoint subscribed only to other types does not make the log into events.
    webhooks.create_webhook(
        db=db, org=org, url="https://hooks.example.net/in", events=["domain.verified"]
    )
    with db.transaction():
        write_events(db, [_log("example.test")])
    assert not event_feed.waiting(db, now=later + 1)  # no move due yet, nothing to make
    assert _feed(db, now=later + 2 * event_feed.IDLE_SKIP) == [] and _rows(db) == (0, 0)


def test_upgrading_a_store_sends_nothing_of_the_log_written_before(tmp_path: Path) -> None:
    """0014 starts the feed at the log's end: an endpoint that already existed is not sent
    the whole log when smtpy is upgraded."""
    from alembic import command

    from smtpy.store.migrate import alembic_config

    url = f"sqlite:///{tmp_path / 'smtpy.db'}"
    with Database(url) as db:
        _subscribed(db)
    command.downgrade(alembic_config(url), "0013")  # type: ignore[arg-type]
    with sqlite3.connect(tmp_path / "smtpy.db") as old:  # written by the smtpy before
        old.executemany(
            "INSERT INTO message_log (at, event, domain) VALUES (?, 'received', 'example.test')",
            [(time.time(),)] * 2,
        )
    command.upgrade(alembic_config(url), "head")  # type: ignore[arg-type]
    outbox.invalidate()
    with Database(url) as db:
        assert _feed(db) == []
        with db.transaction():
            write_events(db, [_log("example.test")])
        assert len(_feed(db)) == 1 and _rows(db) == (1, 1)
    outbox.invalidate()


# -- end to end through smtpy serve ----------------------------------------------------------


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[WebhookReceiver]:
    with WebhookReceiver(tmp_path) as r:
        yield r


@pytest.fixture
def world(
    cli_env: dict[str, str], dns_server: DNSServer, tmp_path: Path, receiver: WebhookReceiver
) -> Iterator[Forwarder]:
    env = {
        **cli_env,
        "SMTPY_WEBHOOK_ALLOW_PRIVATE": "true",
        "SMTPY_TLS_CA_FILE": str(receiver.ca_file),
        "SMTPY_WEBHOOK_RETRY_SCHEDULE": "0,1,1,1,1,1,1,1,1,1",
    }
    with forwarding_world(Cli(env), env, dns_server, tmp_path) as forwarder:
        forwarder.alias(ALIAS, "sink@dest1.test")
        receiver.secrets.append(forwarder.run("webhook", "add", receiver.url()).strip())
        yield forwarder


def _send(port: int, n: int, tag: str) -> None:
    for i in range(n):
        message = make_message(message_id=f"<{tag}-{i}@sender.test>", to=ALIAS)
        assert send(port, SENDER, [ALIAS], message) == {}


def _deliveries(world: Forwarder) -> list[dict[str, object]]:
    hook = json.loads(world.run("webhook", "list", "--json"))[0]["id"]
    return list(json.loads(world.run("webhook", "deliveries", hook, "--limit", "200", "--json")))


def _all_delivered(world: Forwarder, count: int, timeout: float = 90.0) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    while True:
        rows = _deliveries(world)
        if len(rows) >= count and all(r["status"] == "delivered" for r in rows):
            return rows
        assert time.monotonic() < deadline, f"not all delivered: {rows}\n" + "\n".join(
            d.log_tail(15) for d in world.daemons
        )
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_message_through_smtpy_serve_is_told_as_received_and_forwarded(
    world: Forwarder, receiver: WebhookReceiver
) -> None:
    daemon = world.start()
    _send(daemon.port, 1, "one")
    hits: list[Hit] = receiver.wait_for(
        lambda h: h if {x.type for x in h} >= {"message.received", "message.forwarded"} else None,
        timeout=60,
    )
    by_type = {h.type: h for h in hits}
    received, forwarded = by_type["message.received"], by_type["message.forwarded"]
    assert received.verified_by == (0,) and forwarded.verified_by == (0,)
    assert received.json["data"]["alias"] == ALIAS
    assert received.json["data"]["recipient"] == "sink@dest1.test"
    assert received.json["data"]["sender"] == SENDER
    assert forwarded.json["data"]["queue_id"] == received.json["data"]["queue_id"]
    assert forwarded.json["data"]["code"] == 250
    assert received.id != forwarded.id
    world.wait_settled()
    _all_delivered(world, 2)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_kill_9_with_events_in_the_outbox_loses_none(
    world: Forwarder, receiver: WebhookReceiver
) -> None:
    # The first answers are slow: the daemon holds those deliveries when it dies.
    receiver.script(*[Reply(200, delay=4.0)] * 4)
    daemon = world.start()
    _send(daemon.port, 3, "kill")
    deadline = time.monotonic() + 60
    while receiver.started < 2:  # posts in flight
        assert time.monotonic() < deadline, daemon.log_tail()
        time.sleep(0.05)
    daemon.kill()
    daemon.start()  # the same node: it takes back its leases (mail and webhooks) at once
    world.wait_settled()
    rows = _all_delivered(world, 6)
    delivered_ids = {str(r["event_id"]) for r in rows}
    answered = {h.id for h in receiver.received() if h.status == 200 and h.verified_by == (0,)}
    assert delivered_ids <= answered  # every event reached the receiver, signed
    assert Counter(str(r["type"]) for r in rows) == {
        "message.received": 3,
        "message.forwarded": 3,
    }


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_serving_processes_deliver_each_event_once(
    world: Forwarder, receiver: WebhookReceiver
) -> None:
    daemon = world.start(processes="2")
    _send(daemon.port, 8, "two")
    world.wait_settled()
    rows = _all_delivered(world, 16)
    counts = Counter(h.id for h in receiver.received())
    assert set(counts) == {str(r["event_id"]) for r in rows}
    assert set(counts.values()) == {1}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_nodes_on_postgresql_deliver_each_event_once(
    world: Forwarder, receiver: WebhookReceiver
) -> None:
    if not world.database_url.startswith("postgresql"):
        pytest.skip("several nodes share one store on PostgreSQL")
    first, second = world.start(), world.start()
    _send(first.port, 5, "n0")
    _send(second.port, 5, "n1")
    world.wait_settled()
    rows = _all_delivered(world, 20)
    counts = Counter(h.id for h in receiver.received())
    assert set(counts) == {str(r["event_id"]) for r in rows}
    assert set(counts.values()) == {1}


def test_removing_an_endpoint_keeps_the_events_another_endpoint_still_has(db: Database) -> None:
    org = resolve_organization(db=db).id
    first = webhooks.create_webhook(db=db, org=org, url="https://hooks.example.net/a")
    second = webhooks.create_webhook(
        db=db, org=org, url="https://hooks.example.net/b", events=["message.bounced"]
    )
    with db.transaction():
        shared = outbox.emit(db, org=org, type_="message.bounced", data={"queue_id": "q1"})
        only_first = outbox.emit(db, org=org, type_="domain.verified", data={"domain": "a.test"})
    assert shared is not None and only_first is not None
    assert _rows(db) == (2, 3)

    webhooks.remove_webhook(db=db, org=org, webhook_id=first.id)
    assert _rows(db) == (1, 1)  # the event only the removed endpoint had went with it
    assert db.scalar("SELECT id FROM webhook_events") == shared
    assert db.scalar("SELECT webhook_id FROM webhook_deliveries") == second.id

    webhooks.remove_webhook(db=db, org=org, webhook_id=second.id)
    assert _rows(db) == (0, 0)


def test_pruning_removes_finished_deliveries_and_keeps_pending_ones(db: Database) -> None:
    from smtpy.events.deliveries import prune

    org = resolve_organization(db=db).id
    webhooks.create_webhook(db=db, org=org, url="https://hooks.example.net/in")
    with db.transaction():
        for n in range(3):
            outbox.emit(db, org=org, type_="domain.verified", data={"domain": f"d{n}.test"}, at=n)
    db.execute("UPDATE webhook_deliveries SET created_at = 100")
    first, second, _third = (
        int(r["id"]) for r in db.all("SELECT id FROM webhook_deliveries ORDER BY id")
    )
    db.execute("UPDATE webhook_deliveries SET status = 'delivered' WHERE id = :id", {"id": first})
    db.execute("UPDATE webhook_deliveries SET status = 'failed' WHERE id = :id", {"id": second})
    db.execute(
        "INSERT INTO webhook_attempts (delivery_id, at, status_code, duration_ms)"
        " VALUES (:id, 100, 200, 5)",
        {"id": first},
    )
    assert prune(db, before=50) == 0  # nothing that old
    assert prune(db, before=200) == 2
    assert _rows(db) == (1, 1)  # the pending one and its event stay
    assert db.scalar("SELECT status FROM webhook_deliveries") == "pending"
    assert db.scalar("SELECT count(*) FROM webhook_attempts") == 0
