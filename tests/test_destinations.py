"""Destinations that confirm, end to end, on SQLite and PostgreSQL: aliases made through
the real `smtpy api`, mail sent through the real `smtpy serve` to real SMTP sinks.

The confirmation mail arrives; its link confirms once (a second use and an expired
link fail); an alias whose only destination waits gets 450 at RCPT; with one confirmed
and one waiting destination only the confirmed one receives the message and the other
delivery waits, never attempted, until its link is followed (then it is delivered) or
the queue lifetime ends (then the sender gets a DSN, naming the alias). The operator lists and confirms
with the CLI, and `smtpy route explain` shows what waits.
"""

from __future__ import annotations

import json
import re
import smtplib
import time
import uuid
from pathlib import Path

import httpx
import pytest

from apiserver import ApiServer, seed_org
from conftest import Cli
from dnsserver import DNSServer
from mailpeers import DEST1, SENDER, SENDER_MX, Received, forwarding_world, make_message, send

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

PUBLIC = "https://mail.example.net"
LINK = re.compile(re.escape(PUBLIC) + r"/destinations/confirm\?token=([A-Za-z0-9_-]+)")


def token_in(mail: Received) -> str:
    match = LINK.search(mail.message.get_content())
    assert match, mail.message.get_content()
    return match.group(1)


def mails_to(received: list[Received], address: str) -> list[Received]:
    return [r for r in received if address in r.rcpt_tos]


def waiting_deliveries(store_url: str) -> dict[str, tuple[str, int]]:
    """recipient -> (status, attempts) of every delivery still in the queue."""
    from smtpy.store.db import Database

    with Database(store_url) as db:
        rows = db.all("SELECT recipient, status, attempts FROM deliveries")
    return {str(r["recipient"]): (str(r["status"]), int(r["attempts"])) for r in rows}


def wait_queue(store_url: str, expected: dict[str, tuple[str, int]]) -> None:
    """Wait (bounded) until the queue holds exactly `expected`: what was sent is settled."""
    for _ in range(300):
        if waiting_deliveries(store_url) == expected:
            return
        time.sleep(0.1)
    assert waiting_deliveries(store_url) == expected


def follow(client: httpx.Client, token: str) -> httpx.Response:
    """What the owner does: open the link (a page with a button), then press it."""
    page = client.get("/destinations/confirm", params={"token": token})
    assert page.status_code == 200 and "Confirm my address" in page.text
    return client.post("/destinations/confirm", data={"token": token})


def test_destinations_confirm_before_mail_reaches_them(
    cli: Cli, cli_env: dict[str, str], dns_server: DNSServer, tmp_path: Path
) -> None:
    with forwarding_world(
        cli, cli_env, dns_server, tmp_path, webhook_allow_private="true"
    ) as world:
        url = world.database_url
        cli_env["SMTPY_WEBHOOK_ALLOW_PRIVATE"] = "true"
        # An endpoint that wants destination.verified, so the event is stored.
        assert (
            cli("webhook", "add", "https://127.0.0.1:9/h", "-e", "destination.verified").code == 0
        )
        port = world.start().port
        seeded = seed_org(url, org="default", email="admin@acme.test", role="admin")
        with ApiServer(world.env, SMTPY_PUBLIC_URL=PUBLIC) as api:
            admin = api.as_key(seeded["key"])
            for local, destinations in (
                ("solo", ["bob@dest1.test"]),
                ("duo", ["carol@dest2.test", "bob@dest1.test"]),
            ):
                made = admin.post(
                    "/api/v1/domains/example.test/aliases",
                    json={"local_part": local, "destinations": destinations},
                )
                assert made.status_code == 201, made.text
                assert made.json()["pending_destinations"] == destinations
            duo_id = made.json()["id"]

            # One confirmation mail each, delivered by smtpy serve.
            world.peers.wait_for(
                lambda r: (
                    len(mails_to(r, "bob@dest1.test")) + len(mails_to(r, "carol@dest2.test")) >= 2
                ),
                timeout=60,
            )
            [bob_mail] = mails_to(world.peers.received, "bob@dest1.test")
            assert bob_mail.host == DEST1 and bob_mail.mail_from == "smtpy@mx.forwarder.test"
            bob_token = token_in(bob_mail)

            # The operator sees both waiting, and confirms carol at the shell.
            listed = json.loads(world.run("destination", "list", "--json"))
            assert {(d["address"], d["confirmed"]) for d in listed} == {
                ("bob@dest1.test", False),
                ("carol@dest2.test", False),
            }
            assert "carol@dest2.test is confirmed" in world.run(
                "destination", "confirm", "Carol@DEST2.test"
            )
            missing = cli("destination", "confirm", "nobody@dest1.test")
            assert missing.code != 0 and "operator's own" in missing.stderr
            waits = json.loads(world.run("route", "explain", "duo@example.test", "--json"))
            assert waits["accepted"] is True
            assert waits["awaiting_confirmation"] == ["bob@dest1.test"]

            # Only destination waiting: 450 at RCPT, nothing accepted.
            first_id = f"<{uuid.uuid4().hex}@sender.test>"
            with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
                send(
                    port,
                    SENDER,
                    ["solo@example.test"],
                    make_message(message_id=first_id, to="solo@example.test"),
                )
            code, text = refused.value.recipients["solo@example.test"]
            assert code == 450 and b"4.2.1" in text and b"awaiting confirmation" in text

            # One confirmed, one waiting: carol receives it, bob's copy waits, untried.
            duo_message = f"<{uuid.uuid4().hex}@sender.test>"
            data = make_message(message_id=duo_message, to="duo@example.test")
            assert send(port, SENDER, ["duo@example.test"], data) == {}
            world.peers.wait_for(
                lambda r: [
                    m for m in mails_to(r, "carol@dest2.test") if m.message_id == duo_message
                ]
            )
            wait_queue(url, {"bob@dest1.test": ("unconfirmed", 0)})
            queued = json.loads(world.run("queue", "list", "--json"))
            assert queued[0]["state"] == "deferred"
            assert "awaiting confirmation" in queued[0]["recipients"][0]["last_error"]
            assert [m.message_id for m in mails_to(world.peers.received, "bob@dest1.test")] == [
                bob_mail.message_id
            ]

            # Bob follows his link: confirmed, and the waiting copy goes out at once.
            owner = httpx.Client(base_url=api.base_url, timeout=30)
            answer = follow(owner, bob_token)
            assert answer.status_code == 200 and "mail is now forwarded to bob@dest1.test" in (
                answer.text
            )
            world.peers.wait_for(
                lambda r: [m for m in mails_to(r, "bob@dest1.test") if m.message_id == duo_message]
            )
            again = follow(owner, bob_token)
            assert again.status_code == 422 and "used already" in again.text
            from smtpy.store.db import Database

            with Database(url) as db:
                events = [
                    json.loads(r["body"])
                    for r in db.all(
                        "SELECT body FROM webhook_events WHERE type = 'destination.verified'"
                    )
                ]
            assert [e["data"]["destination"] for e in events] == [
                "carol@dest2.test",
                "bob@dest1.test",
            ]

            # solo@ is accepted now (the daemon sees the change within its rules' TTL: a
            # sender retries after 450, as this loop does, bounded).
            solo_message = f"<{uuid.uuid4().hex}@sender.test>"
            data = make_message(message_id=solo_message, to="solo@example.test")
            for _ in range(100):
                try:
                    send(port, SENDER, ["solo@example.test"], data)
                    break
                except smtplib.SMTPRecipientsRefused:
                    time.sleep(0.1)
            else:
                raise AssertionError("solo@example.test still refused after its confirmation")
            world.peers.wait_for(
                lambda r: [m for m in mails_to(r, "bob@dest1.test") if m.message_id == solo_message]
            )

            # A new destination through PATCH: mailed; its link, once expired, fails.
            patched = admin.patch(
                f"/api/v1/aliases/{duo_id}",
                json={"destinations": ["carol@dest2.test", "erin@dest2.test"]},
            )
            assert patched.status_code == 200, patched.text
            assert patched.json()["pending_destinations"] == ["erin@dest2.test"]
            [erin_mail] = world.peers.wait_for(lambda r: mails_to(r, "erin@dest2.test"), timeout=60)
            with Database(url) as db:
                db.execute(
                    "UPDATE account_tokens SET expires_at = :past WHERE kind = 'destination'"
                    " AND email = 'erin@dest2.test'",
                    {"past": time.time() - 1},
                )
            expired = follow(owner, token_in(erin_mail))
            assert expired.status_code == 422 and "expired" in expired.text
            owner.close()

        # Mail for duo@ now: carol gets it, erin's copy waits until the lifetime ends. (The
        # daemon may route with the rules before the PATCH for up to their TTL: then bob
        # gets that one and the loop, bounded, sends another.)
        for _ in range(100):
            last_message = f"<{uuid.uuid4().hex}@sender.test>"
            data = make_message(message_id=last_message, to="duo@example.test")
            assert send(port, SENDER, ["duo@example.test"], data) == {}
            world.peers.wait_for(
                lambda r, mid=last_message: [
                    m for m in mails_to(r, "carol@dest2.test") if m.message_id == mid
                ]
            )
            if "erin@dest2.test" in waiting_deliveries(url):
                break
            time.sleep(0.2)
        else:
            raise AssertionError("the daemon never routed duo@ to erin")
        wait_queue(url, {"erin@dest2.test": ("unconfirmed", 0)})
        received_at = time.time()

        # The queue lifetime ends: the sender gets a DSN; erin got nothing.
        for daemon in world.daemons:
            assert daemon.stop() == 0, daemon.log_tail()
        while time.time() - received_at < 1.5:  # bounded: the lifetime below is 1 s
            time.sleep(0.1)
        world.start(queue_lifetime="1")
        [dsn] = world.peers.wait_for(
            lambda r: [m for m in r if m.host == SENDER_MX and m.mail_from == ""], timeout=90
        )
        assert dsn.rcpt_tos == (SENDER,)
        # It names the alias, never the destination behind it, and says why.
        assert b"duo@example.test" in dsn.data and b"erin@dest2.test" not in dsn.data
        assert b"awaiting confirmation" in dsn.data and b"4.4.7" in dsn.data
        world.wait_settled()
        assert [m.message_id for m in mails_to(world.peers.received, "erin@dest2.test")] == [
            erin_mail.message_id
        ]
