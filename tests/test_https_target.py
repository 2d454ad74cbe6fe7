"""HttpsTarget (smtpy.outbound.https_target) against a real HTTPS receiver on loopback and
the real store (SQLite and PostgreSQL) holding the destinations' secrets.

What each answer means for the queue, the SSRF refusal at delivery time, and the
secret looked up in the alias's own organization."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from smtpy.admin.aliases import AliasCreate, add_alias
from smtpy.admin.domains import DomainCreate, add_domain
from smtpy.admin.organizations import resolve_organization
from smtpy.events.sender import Sender
from smtpy.outbound.deliver import Deliverer
from smtpy.outbound.https_target import HttpsTarget, destination_secret
from smtpy.outbound.target import Origin, Outcome
from smtpy.store.db import Database
from webhook_receiver import Reply, WebhookReceiver

MESSAGE = (
    b"From: Alice <alice@sender.test>\r\nTo: orders@example.test\r\nSubject: hi\r\n"
    b"Message-ID: <1@sender.test>\r\n\r\nHello.\r\n"
)


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[WebhookReceiver]:
    with WebhookReceiver(tmp_path) as r:
        yield r


@pytest.fixture
def db(store_url: str) -> Iterator[Database]:
    with Database(store_url) as database:
        yield database


def alias_to(db: Database, org: int, domain: str, *urls: str) -> dict[str, str]:
    add_domain(db=db, org=org, domain=DomainCreate(name=domain, key_algorithm="ed25519"))
    return add_alias(
        db=db,
        org=org,
        alias=AliasCreate(address=f"orders@{domain}", destinations=list(urls)),
        allow_private=True,
    ).secrets


def target(
    db: Database, receiver: WebhookReceiver, *, allow_private: bool = True, timeout: float = 5.0
) -> HttpsTarget:
    async def secrets(domain: str, url: str) -> str | None:
        return destination_secret(db, domain=domain, url=url)

    sender = Sender(allow_private=allow_private, timeout=timeout, ca_file=receiver.ca_file)
    return HttpsTarget(sender, secrets=secrets)


def deliver(https: HttpsTarget, *urls: str, alias: str = "orders@example.test") -> list[Outcome]:
    origin = Origin("QID1", "alice@sender.test", (alias,) * len(urls), 0.0)

    async def run() -> list[Outcome]:
        try:
            return await https.deliver(
                sender="SRS0=x@fwd.test", recipients=list(urls), message=MESSAGE, origin=origin
            )
        finally:
            await https.close()

    return asyncio.run(run())


def test_each_url_gets_its_own_post_signed_with_its_own_secret(
    db: Database, receiver: WebhookReceiver
) -> None:
    org = resolve_organization(db=db).id
    one, two = receiver.url("/one"), receiver.url("/two")
    secrets = alias_to(db, org, "example.test", one, two)
    receiver.secrets = [secrets[one], secrets[two]]

    outcomes = deliver(target(db, receiver), one, two)

    assert [(o.recipient, o.status, o.reply, o.enhanced) for o in outcomes] == [
        (one, "delivered", "HTTP 200", "2.0.0"),
        (two, "delivered", "HTTP 200", "2.0.0"),
    ]
    by_path = {h.path: h for h in receiver.received()}
    assert by_path["/one"].verified_by == (0,) and by_path["/two"].verified_by == (1,)
    assert by_path["/one"].json["data"]["envelope"]["mail_from"] == "alice@sender.test"


def test_the_secret_is_the_one_of_the_alias_organization(
    db: Database, receiver: WebhookReceiver
) -> None:
    from smtpy.accounts.organizations import create_organization

    url = receiver.url()
    ours = alias_to(db, resolve_organization(db=db).id, "example.test", url)[url]
    other_org = create_organization(db=db, name="Globex")
    theirs = alias_to(db, other_org, "globex.test", url)[url]
    assert ours != theirs
    receiver.secrets = [ours, theirs]

    deliver(target(db, receiver), url, alias="orders@globex.test")

    [hit] = receiver.received()
    assert hit.verified_by == (1,)


@pytest.mark.parametrize(
    ("reply", "status", "enhanced"),
    [
        (Reply(429, headers={"Retry-After": "120"}), "deferred", "4.7.0"),
        (Reply(503), "deferred", "4.0.0"),
        (Reply(408), "deferred", "4.0.0"),
        (Reply(301, headers={"Location": "https://elsewhere.test/"}), "deferred", "4.0.0"),
        (Reply(404), "failed", "5.1.1"),
        (Reply(403), "failed", "5.7.1"),
        (Reply(413), "failed", "5.3.4"),
        (Reply(422, body="bad\n  payload"), "failed", "5.0.0"),
    ],
)
def test_what_each_answer_means(
    db: Database, receiver: WebhookReceiver, reply: Reply, status: str, enhanced: str
) -> None:
    url = receiver.url()
    receiver.secrets = list(
        alias_to(db, resolve_organization(db=db).id, "example.test", url).values()
    )
    receiver.script(reply)

    [outcome] = deliver(target(db, receiver), url)

    assert (outcome.status, outcome.enhanced, outcome.code) == (status, enhanced, None)
    assert outcome.reply.startswith(f"HTTP {reply.status}")
    assert outcome.remote_host == "127.0.0.1"
    assert outcome.retry_after == (120.0 if reply.status == 429 else None)
    if reply.status == 422:
        assert outcome.reply == "HTTP 422: bad payload"
    assert len(receiver.received()) == 1, "redirects are not followed"


def test_no_answer_within_the_timeout_is_deferred(db: Database, receiver: WebhookReceiver) -> None:
    url = receiver.url()
    alias_to(db, resolve_organization(db=db).id, "example.test", url)
    receiver.script(Reply(200, delay=3.0))

    [outcome] = deliver(target(db, receiver, timeout=0.5), url)

    assert (outcome.status, outcome.enhanced) == ("deferred", "4.4.1")
    assert "no answer within" in outcome.reply


def test_a_url_refused_by_the_ssrf_rules_fails_without_a_request(
    db: Database, receiver: WebhookReceiver
) -> None:
    url = receiver.url()
    plain = f"http://127.0.0.1:{receiver.port}/hook"
    alias_to(db, resolve_organization(db=db).id, "example.test", url, plain)

    outcomes = deliver(target(db, receiver, allow_private=False), url, plain)

    assert [(o.status, o.enhanced) for o in outcomes] == [("failed", "5.7.1")] * 2
    assert "loopback" in outcomes[0].reply and "https://" in outcomes[1].reply
    assert receiver.received() == []


def test_a_url_without_its_destination_row_is_deferred_not_posted(
    db: Database, receiver: WebhookReceiver
) -> None:
    url = receiver.url()
    alias_to(db, resolve_organization(db=db).id, "example.test", url)
    db.execute("DELETE FROM destinations")

    [outcome] = deliver(target(db, receiver), url)

    assert outcome.status == "deferred" and "no signing secret" in outcome.reply
    assert receiver.received() == []


def test_the_deliverer_picks_the_target_by_the_recipient_form() -> None:
    from smtpy.config import Settings
    from smtpy.dns import Lookups, make_resolver

    settings = Settings(hostname="mx.forwarder.test", dns_nameservers=["127.0.0.1:53"])
    deliverer = Deliverer.from_settings(settings, Lookups(make_resolver([("127.0.0.1", 53)])))
    assert deliverer.target_for("https://hooks.example/in") is deliverer.https
    assert deliverer.target_for("HTTP://127.0.0.1/in") is deliverer.https
    assert deliverer.target_for("bob@dest1.test") is deliverer.smtp
    asyncio.run(deliverer.close())


def test_destination_secret_reads_the_row_add_alias_made(db: Database) -> None:
    org = resolve_organization(db=db).id
    url = "https://hooks.example.net/in"
    made = alias_to(db, org, "example.test", url)
    lookup = partial(destination_secret, db, url=url)
    assert lookup(domain="example.test") == made[url]
    assert lookup(domain="unknown.test") is None
