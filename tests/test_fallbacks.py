"""Fallback destinations: an alias's ordered fallbacks take over from a destination that
fails for good; the sender hears of it only when the last fallback failed too.

Three levels, each on SQLite and PostgreSQL:
- the rule itself (`smtpy.queue.fallbacks.next_step`), pure;
- the delivery worker over a real store, answering through the scheduler tests'
  `ScriptedTarget` with an injected clock (exact retry and lifetime times);
- the real `smtpy serve` with real SMTP peers answering 550 or 451, the real CLI,
  the real `smtpy api`, and a real HTTPS webhook receiver counting `message.bounced`.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest

from conftest import Cli
from dnsserver import DNSServer
from mailpeers import DOMAIN, SENDER, SENDER_MX, Forwarder, forwarding_world, make_message, send
from resourceworld import API, problem, served_domain, world
from smtpy.outbound.target import Status
from smtpy.queue.fallbacks import Step, next_step
from smtpy.queue.queries import NewDelivery, NewMessage, new_queue_id
from test_scheduler import HOSTNAME, LIFETIME, Harness, ScriptedTarget, T, run, running
from webhook_receiver import WebhookReceiver

ALIAS = f"team@{DOMAIN}"
SRS = f"SRS0=hash=TT=sender.test=carol@{HOSTNAME}"
ORIGINAL_SENDER = "carol@sender.test"  # the scheduler tests' sender


# -- the rule ------------------------------------------------------------------------------


def test_the_first_fallback_not_tried_and_not_pending_is_next() -> None:
    chain = ["f1@backup.test", "F2@Backup.test", "f3@backup.test"]
    assert next_step(chain, {}, set()) == Step("next", "f1@backup.test")
    assert next_step(chain, {"f1@backup.test": "failed"}, set()) == Step("next", "F2@Backup.test")
    # Keys compare case-insensitively; a fallback already pending as a delivery is skipped.
    assert next_step(chain, {"f1@backup.test": "queued"}, {"f2@backup.test"}) == Step(
        "next", "f3@backup.test"
    )


def test_with_every_fallback_taken_one_that_has_the_message_covers_the_failure() -> None:
    chain = ["f1@backup.test", "f2@backup.test"]
    assert next_step(chain, {"f1@backup.test": "failed", "f2@backup.test": "queued"}, set()) == (
        Step("covered", "f2@backup.test")
    )
    assert next_step(chain, {"f1@backup.test": "delivered", "f2@backup.test": "failed"}, set()) == (
        Step("covered", "f1@backup.test")
    )
    assert next_step(chain, {"f1@backup.test": "failed"}, {"f2@backup.test"}) == Step(
        "covered", "f2@backup.test"
    )


def test_only_when_every_fallback_failed_does_the_failure_bounce() -> None:
    chain = ["f1@backup.test", "f2@backup.test"]
    assert next_step(chain, {"f1@backup.test": "failed", "f2@backup.test": "failed"}, set()) is None
    assert next_step([], {}, set()) is None


def test_route_explain_names_the_fallbacks_awaiting_confirmation() -> None:
    from smtpy.admin.explain import fallbacks_awaiting_confirmation
    from smtpy.route.aliases import AliasRule, DomainRules

    chain = ("f1@backup.test", "F2@Backup.test", "https://hook.example/in")
    rules = DomainRules.build(
        "example.test",
        [AliasRule(1, "example.test", "exact", "team", ("p@dest.test",), fallbacks=chain)],
        unconfirmed=frozenset({"f2@backup.test"}),
    )

    async def rules_for(domain: str) -> DomainRules | None:
        return rules if domain == "example.test" else None

    async def waiting(address: str) -> tuple[str, ...]:
        return await fallbacks_awaiting_confirmation(address, chain, rules_for)

    assert asyncio.run(waiting("team@example.test")) == ("F2@Backup.test",)
    assert asyncio.run(waiting("team@elsewhere.test")) == ()


# -- the delivery worker over a real store ------------------------------------------------


def fallback_message(*destinations: str, fallbacks: tuple[str, ...]) -> NewMessage:
    """One message for ALIAS, which forwards to `destinations` and falls back to `fallbacks`."""
    tag = uuid.uuid4().hex[:8]
    return NewMessage(
        queue_id=new_queue_id(T),
        sender=ORIGINAL_SENDER,
        data=(
            f"From: {ORIGINAL_SENDER}\r\nTo: {ALIAS}\r\nSubject: fallbacks\r\n"
            f"Message-ID: <{tag}@sender.test>\r\n\r\nHello.\r\n"
        ).encode(),
        deliveries=[
            NewDelivery(ALIAS, d, d.rpartition("@")[2], SRS, fallbacks=fallbacks)
            for d in destinations
        ],
        received_at=T,
    )


async def log_rows(h: Harness) -> list[dict[str, Any]]:
    return await h.query(
        "SELECT event, alias, recipient, reason, reply FROM message_log WHERE event <> 'received'"
        " ORDER BY id"
    )


def dsns(target: ScriptedTarget) -> list[bytes]:
    return [c.message for c in target.calls if ORIGINAL_SENDER in c.recipients]


def script(**answers: list[Status]) -> dict[str, list[Status]]:
    return {
        f"{name}@{'backup' if name.startswith('f') else 'dest'}.test": a
        for name, a in answers.items()
    }


def test_a_550_goes_to_the_first_fallback_and_the_sender_hears_nothing(store_url: str) -> None:
    target = ScriptedTarget(script=script(p=["failed"]))

    async def scenario() -> list[dict[str, Any]]:
        chain = ("f1@backup.test", "f2@backup.test")
        async with running(
            store_url, target, before=[fallback_message("p@dest.test", fallbacks=chain)]
        ) as h:
            await h.until(h.queue_empty, "the message went to its fallback")
            return await log_rows(h)

    rows = run(scenario())
    assert [c.recipients for c in target.calls] == [["p@dest.test"], ["f1@backup.test"]]
    assert dsns(target) == []
    assert [(r["event"], r["recipient"], r["reason"]) for r in rows] == [
        ("deferred", "p@dest.test", "fallback"),
        ("delivered", "f1@backup.test", None),
    ]
    assert rows[0]["reply"].endswith("(next: fallback f1@backup.test)")
    assert all(r["alias"] == ALIAS for r in rows)


def test_a_fallback_awaiting_confirmation_is_held_until_its_owner_confirms(
    store_url: str,
) -> None:
    from smtpy.admin.destinations import confirm_address, insert_destination
    from smtpy.admin.domains import DomainCreate, add_domain
    from smtpy.admin.organizations import resolve_organization
    from smtpy.store.db import Database

    with Database(store_url) as db:  # a user added the alias: f1 was never confirmed
        org = resolve_organization(db=db).id
        add_domain(db=db, org=org, domain=DomainCreate(name=DOMAIN))
        insert_destination(
            db,
            org=org,
            kind="address",
            address="f1@backup.test",
            key="f1@backup.test",
            confirmed=False,
            now=T,
        )
    target = ScriptedTarget(script=script(p=["failed"]))

    async def scenario() -> list[dict[str, Any]]:
        chain = ("f1@backup.test",)
        async with running(
            store_url, target, before=[fallback_message("p@dest.test", fallbacks=chain)]
        ) as h:
            await h.until(lambda: _statuses(h, ["unconfirmed"]), "the fallback's delivery held")
            held = await h.query("SELECT recipient, attempts FROM deliveries")
            await h.writer.call(
                lambda db: confirm_address(db=db, address="F1@backup.test", org=org)
            )
            await h.until(h.queue_empty, "the confirmed fallback got the message")
            return held

    held = run(scenario())
    assert [(d["recipient"], d["attempts"]) for d in held] == [("f1@backup.test", 0)]
    assert [c.recipients for c in target.calls] == [["p@dest.test"], ["f1@backup.test"]]
    assert dsns(target) == []


async def _statuses(h: Harness, want: list[str]) -> bool:
    return [d["status"] for d in await h.query("SELECT status FROM deliveries")] == want


def test_only_the_last_fallback_failing_bounces_and_once(store_url: str) -> None:
    target = ScriptedTarget(script=script(p=["failed"], f1=["failed"], f2=["failed"]))

    async def scenario() -> list[dict[str, Any]]:
        chain = ("f1@backup.test", "f2@backup.test")
        async with running(
            store_url, target, before=[fallback_message("p@dest.test", fallbacks=chain)]
        ) as h:
            await h.until(lambda: _done_with_dsn(h), "the DSN was delivered")
            return await log_rows(h)

    rows = run(scenario())
    assert [c.recipients for c in target.calls if ORIGINAL_SENDER not in c.recipients] == [
        ["p@dest.test"],
        ["f1@backup.test"],
        ["f2@backup.test"],
    ]
    [dsn] = dsns(target)
    report = message_from_bytes(dsn, policy=policy.default).as_string()
    assert f"Original-Recipient: rfc822; {ALIAS}" in report
    mine = [r for r in rows if r["alias"] == ALIAS]
    assert [(r["event"], r["recipient"]) for r in mine] == [
        ("deferred", "p@dest.test"),
        ("deferred", "f1@backup.test"),
        ("bounced", "f2@backup.test"),
    ]


async def _done_with_dsn(h: Harness) -> bool:
    return bool(dsns(h.target)) and await h.queue_empty()


@pytest.mark.parametrize("same_domain", [True, False])
def test_two_destinations_failing_never_send_one_fallback_twice(
    store_url: str, same_domain: bool
) -> None:
    second = "q@dest.test" if same_domain else "q@other.test"
    target = ScriptedTarget(script={"p@dest.test": ["failed"], second: ["failed"]})

    async def scenario() -> None:
        message = fallback_message("p@dest.test", second, fallbacks=("f1@backup.test",))
        async with running(store_url, target, before=[message]) as h:
            await h.until(h.queue_empty, "the message settled")

    run(scenario())
    assert target.attempts_of("f1@backup.test") == 1
    assert dsns(target) == [], "the fallback took the message: no DSN"


def test_two_failures_take_two_fallbacks_in_order(store_url: str) -> None:
    target = ScriptedTarget(script={"p@dest.test": ["failed"], "q@dest.test": ["failed"]})

    async def scenario() -> None:
        chain = ("f1@backup.test", "f2@backup.test", "f3@backup.test")
        message = fallback_message("p@dest.test", "q@dest.test", fallbacks=chain)
        async with running(store_url, target, before=[message]) as h:
            await h.until(h.queue_empty, "the message settled")

    run(scenario())
    tried = [r for c in target.calls for r in c.recipients if r.endswith("backup.test")]
    assert sorted(tried) == ["f1@backup.test", "f2@backup.test"]
    assert dsns(target) == []


def test_a_covered_failure_bounces_once_when_the_chain_fails(store_url: str) -> None:
    target = ScriptedTarget(
        script={"p@dest.test": ["failed"], "q@dest.test": ["failed"], "f1@backup.test": ["failed"]}
    )

    async def scenario() -> None:
        message = fallback_message("p@dest.test", "q@dest.test", fallbacks=("f1@backup.test",))
        async with running(store_url, target, before=[message]) as h:
            await h.until(lambda: _done_with_dsn(h), "the DSN was delivered")

    run(scenario())
    assert target.attempts_of("f1@backup.test") == 1
    assert len(dsns(target)) == 1


def test_retries_exhausted_go_to_the_fallback_with_a_lifetime_of_its_own(store_url: str) -> None:
    # The primary defers forever; the fallback defers once, then takes the message.
    target = ScriptedTarget(
        script={"p@dest.test": ["deferred"] * 50, "f1@backup.test": ["deferred"]}
    )

    async def scenario() -> list[dict[str, Any]]:
        message = fallback_message("p@dest.test", fallbacks=("f1@backup.test",))
        async with running(store_url, target, before=[message]) as h:
            await h.until(lambda: _deferred_once(h, "p@dest.test"), "the first deferral")
            h.later(LIFETIME)  # the next attempt defers past the queue lifetime
            await h.until(lambda: _deferred_once(h, "f1@backup.test"), "the fallback deferred")
            pending = await h.deliveries()
            assert [d["recipient"] for d in pending] == ["f1@backup.test"], (
                "the fallback keeps its message: its own lifetime starts when it is queued"
            )
            h.later(60)  # the fallback's retry
            await h.until(h.queue_empty, "the fallback delivered")
            return await log_rows(h)

    rows = run(scenario())
    assert target.attempts_of("p@dest.test") == 2
    assert target.attempts_of("f1@backup.test") == 2
    assert dsns(target) == []
    assert [(r["event"], r["recipient"], r["reason"]) for r in rows] == [
        ("deferred", "p@dest.test", None),
        ("deferred", "p@dest.test", "fallback"),
        ("deferred", "f1@backup.test", None),
        ("delivered", "f1@backup.test", None),
    ]


async def _deferred_once(h: Harness, recipient: str) -> bool:
    """The queue holds just `recipient`, its first deferral recorded."""
    rows = await h.query("SELECT recipient, attempts FROM deliveries")
    return [(r["recipient"], r["attempts"]) for r in rows] == [(recipient, 1)]


# -- the real smtpy serve ---------------------------------------------------------------------


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[WebhookReceiver]:
    with WebhookReceiver(tmp_path) as r:
        yield r


@pytest.fixture
def forwarder(
    cli_env: dict[str, str], dns_server: DNSServer, tmp_path: Path, receiver: WebhookReceiver
) -> Iterator[Forwarder]:
    env = {
        **cli_env,
        "SMTPY_WEBHOOK_ALLOW_PRIVATE": "true",
        "SMTPY_TLS_CA_FILE": str(receiver.ca_file),
        "SMTPY_WEBHOOK_RETRY_SCHEDULE": "0,1,1,1,1,1,1,1,1,1",
    }
    with forwarding_world(Cli(env), env, dns_server, tmp_path) as world_:
        yield world_


def _send_one(forwarder: Forwarder, daemon_port: int) -> str:
    message_id = f"<{uuid.uuid4().hex}@sender.test>"
    assert send(daemon_port, SENDER, [ALIAS], make_message(message_id=message_id, to=ALIAS)) == {}
    return message_id


def _log(forwarder: Forwarder) -> list[dict[str, Any]]:
    lines = forwarder.run("log", "--json", "--alias", ALIAS).splitlines()
    return [row for line in lines if (row := json.loads(line))["event"] != "received"]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_fallback_used_after_a_permanent_550_from_the_primary(forwarder: Forwarder) -> None:
    forwarder.alias(ALIAS, "bob@dest1.test", fallback="carol@dest2.test")
    forwarder.peers.script(
        "bob@dest1.test", "550 5.1.1 <bob@dest1.test>: no such user", repeat=True
    )
    daemon = forwarder.start()
    message_id = _send_one(forwarder, daemon.port)

    [got] = forwarder.peers.wait_for(lambda got: [r for r in got if r.message_id == message_id])
    assert got.rcpt_tos == ("carol@dest2.test",)
    forwarder.wait_settled()  # nothing more can be sent: no DSN will ever come
    assert [r for r in forwarder.peers.received if r.host == SENDER_MX] == []
    rows = _log(forwarder)
    assert [(r["event"], r["recipient"], r["reason"]) for r in rows] == [
        ("deferred", "bob@dest1.test", "fallback"),
        ("delivered", "carol@dest2.test", None),
    ]
    assert "next: fallback carol@dest2.test" in rows[0]["reply"]
    assert daemon.events("bounced") == []
    assert daemon.wait_event("fallback")["fallback"] == "carol@dest2.test"


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_primary_and_fallback_550_bounce_once_and_tell_message_bounced_once(
    forwarder: Forwarder, receiver: WebhookReceiver
) -> None:
    receiver.secrets.append(forwarder.run("webhook", "add", receiver.url()).strip())
    forwarder.alias(ALIAS, "bob@dest1.test", fallback="carol@dest2.test")
    for address in ("bob@dest1.test", "carol@dest2.test"):
        forwarder.peers.script(address, f"550 5.1.1 <{address}>: no such user", repeat=True)
    daemon = forwarder.start()
    _send_one(forwarder, daemon.port)

    [dsn] = forwarder.peers.wait_for(lambda got: [r for r in got if r.host == SENDER_MX])
    assert dsn.rcpt_tos == (SENDER,) and dsn.mail_from == ""
    assert f"Original-Recipient: rfc822; {ALIAS}" in dsn.message.as_string()
    forwarder.wait_settled()
    assert len([r for r in forwarder.peers.received if r.host == SENDER_MX]) == 1
    bounced = [r for r in _log(forwarder) if r["event"] == "bounced"]
    assert [r["recipient"] for r in bounced] == ["carol@dest2.test"]

    # The outbox drains: every event told, message.bounced exactly once.
    hook = json.loads(forwarder.run("webhook", "list", "--json"))[0]["id"]
    deadline = time.monotonic() + 60
    while True:
        rows = json.loads(forwarder.run("webhook", "deliveries", hook, "--limit", "200", "--json"))
        if rows and all(r["status"] == "delivered" for r in rows):
            break
        assert time.monotonic() < deadline, rows
        time.sleep(0.2)
    types = [h.type for h in receiver.hits if h.type.startswith("message.")]
    assert types.count("message.bounced") == 1, types
    assert types.count("message.deferred") == 1, "the primary's failure is told as deferred"


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_retries_exhausted_on_the_primary_go_to_the_fallback(
    cli_env: dict[str, str], dns_server: DNSServer, tmp_path: Path
) -> None:
    with forwarding_world(Cli(cli_env), cli_env, dns_server, tmp_path) as forwarder:
        forwarder.alias(ALIAS, "bob@dest1.test", fallback="carol@dest2.test")
        forwarder.peers.script("bob@dest1.test", "451 4.3.0 try again later", repeat=True)
        daemon = forwarder.start(queue_lifetime="3", retry_schedule="1")
        message_id = _send_one(forwarder, daemon.port)

        [got] = forwarder.peers.wait_for(
            lambda got: [r for r in got if r.message_id == message_id], timeout=30
        )
        assert got.rcpt_tos == ("carol@dest2.test",)
        forwarder.wait_settled()
        assert [r for r in forwarder.peers.received if r.host == SENDER_MX] == []
        bob = [r for r in forwarder.peers.replies if r.address == "bob@dest1.test"]
        assert len(bob) >= 2, "the primary was retried until its lifetime ran out"
        last = _log(forwarder)[-2:]
        assert [(r["event"], r["recipient"], r["reason"]) for r in last] == [
            ("deferred", "bob@dest1.test", "fallback"),
            ("delivered", "carol@dest2.test", None),
        ]


# -- the shells: CLI, route explain, API ------------------------------------------------------


def _aliases(cli: Cli) -> dict[str, dict[str, Any]]:
    result = cli("alias", "list", "--json")
    assert result.code == 0, result.stderr
    return {a["address"]: a for a in json.loads(result.stdout)}


def test_the_cli_sets_shows_and_refuses_fallbacks(cli: Cli, dns_server: DNSServer) -> None:
    assert cli("domain", "add", "example.test").code == 0
    assert cli("domain", "add", "other.test").code == 0
    added = cli(
        "alias", "add", ALIAS, "bob@dest1.test",
        "--fallback", "carol@dest2.test", "--fallback", "Dave@Dest1.test",
    )  # fmt: skip
    assert added.code == 0, added.stderr
    assert "fallback: carol@dest2.test, then Dave@dest1.test" in added.stdout
    assert _aliases(cli)[ALIAS]["fallbacks"] == ["carol@dest2.test", "Dave@dest1.test"]
    table = cli("alias", "list").stdout
    assert "fallbacks" in table and "carol@dest2.test" in table

    # route explain shows them in order (nothing is sent).
    for domain, host, address in (
        ("dest1.test", "mx.dest1.test", "127.0.0.2"),
        ("dest2.test", "mx.dest2.test", "127.0.0.3"),
    ):
        dns_server.add(domain, "MX", f"10 {host}.")
        dns_server.add(host, "A", address)
    explained = cli("route", "explain", ALIAS, "--json")
    assert explained.code == 0, explained.stderr
    got = json.loads(explained.stdout)
    assert got["fallbacks"] == ["carol@dest2.test", "Dave@dest1.test"]
    assert got["rule"]["fallbacks"] == ["carol@dest2.test", "Dave@dest1.test"]
    shown = cli("route", "explain", ALIAS).stdout
    assert "carol@dest2.test, then Dave@dest1.test" in shown

    changed = cli("alias", "fallback", ALIAS, "erin@dest2.test")
    assert changed.code == 0, changed.stderr
    assert _aliases(cli)[ALIAS]["fallbacks"] == ["erin@dest2.test"]

    before = _aliases(cli)
    for args, words in (
        (("alias", "fallback", ALIAS, "bob@dest1.test"), "destination of the alias"),
        (("alias", "fallback", ALIAS, "not an address"), "not a mail address"),
        (("alias", "fallback", ALIAS, "x@other.test"), "a domain this forwarder serves"),
        (("alias", "fallback", ALIAS, ALIAS), "the alias itself"),
        (("alias", "fallback", ALIAS), "--clear"),
        (("alias", "add", f"new@{DOMAIN}", "a@dest1.test", "--fallback", "a@dest1.test"),
         "destination of the alias"),
        (("alias", "add", f"no@{DOMAIN}", "--mode", "reject", "--fallback", "a@dest1.test"),
         "takes no fallbacks"),
    ):  # fmt: skip
        result = cli(*args)
        assert result.code == 2, (args, result.stdout, result.stderr)
        assert words in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert _aliases(cli) == before, "a refused change changes nothing"

    cleared = cli("alias", "fallback", ALIAS, "--clear")
    assert cleared.code == 0, cleared.stderr
    assert _aliases(cli)[ALIAS]["fallbacks"] == []


def test_the_api_takes_and_shows_fallbacks(cli_env: dict[str, str], store_url: str) -> None:
    with world(cli_env, store_url) as w:
        served_domain(store_url, w.org, "acme.test")
        url = f"{API}/domains/acme.test/aliases"
        made = w.admin.post(
            url,
            json={
                "local_part": "sales",
                "destinations": ["sales@mailbox.test"],
                "fallbacks": ["backup@mailbox.test", "last@other.test"],
            },
        )
        assert made.status_code == 201, made.text
        alias = made.json()
        assert alias["fallbacks"] == ["backup@mailbox.test", "last@other.test"]
        assert w.admin.get(f"{API}/aliases/{alias['id']}").json() == alias
        # Added by a user, the fallbacks await their owners' confirmation like destinations.
        waiting = {
            d["address"]: d["status"] for d in w.admin.get(f"{API}/destinations").json()["data"]
        }
        assert waiting == dict.fromkeys(
            ("sales@mailbox.test", "backup@mailbox.test", "last@other.test"),
            "pending confirmation",
        )
        listed = w.admin.get(url).json()["data"]
        assert [a["fallbacks"] for a in listed] == [alias["fallbacks"]]

        changed = w.admin.patch(f"{API}/aliases/{alias['id']}", json={"fallbacks": ["x@y.test"]})
        assert changed.status_code == 200, changed.text
        listed_now = w.admin.get(f"{API}/destinations").json()["data"]
        assert {d["address"]: d["status"] for d in listed_now}["x@y.test"] == "pending confirmation"
        assert changed.json()["fallbacks"] == ["x@y.test"]
        assert changed.json()["destinations"] == ["sales@mailbox.test"]
        page = w.member().get("/domains/acme.test")  # the dashboard lists them with the alias
        assert page.status_code == 200 and "fallback: x@y.test" in page.text, page.text[-2000:]

        bad = problem(
            w.admin.patch(
                f"{API}/aliases/{alias['id']}",
                json={"fallbacks": ["ok@mailbox.test", "sales@mailbox.test"]},
            ),
            422,
        )
        assert [e["field"] for e in bad["errors"]] == ["fallbacks.1"]
        worse = problem(
            w.admin.post(
                url,
                json={"local_part": "x", "destinations": ["a@b.test"], "fallbacks": ["nope"]},
            ),
            422,
        )
        assert [e["field"] for e in worse["errors"]] == ["fallbacks.0"]
        assert w.admin.get(f"{API}/aliases/{alias['id']}").json()["fallbacks"] == ["x@y.test"]
        assert [a["local_part"] for a in w.admin.get(url).json()["data"]] == ["sales"]

        cleared = w.admin.patch(f"{API}/aliases/{alias['id']}", json={"fallbacks": []})
        assert cleared.status_code == 200 and cleared.json()["fallbacks"] == []
