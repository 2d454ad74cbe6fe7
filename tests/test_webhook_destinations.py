"""End-to-end: an alias whose destination is an https URL (a webhook destination).

The real `smtpy serve` receives mail over SMTP and posts it, through its queue,
to a real HTTPS receiver on loopback (a test CA) that checks every Standard
Webhooks signature with the `standardwebhooks` library. Bounces go to a real
SMTP sink (the sender's MX, 127.0.0.4). Aliases are added with the real CLI.
Every test runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from conftest import Cli
from dnsserver import DNSServer
from mailpeers import DOMAIN, SENDER, SENDER_MX, Forwarder, forwarding_world, send
from smtpy.store.db import Database
from webhook_receiver import Reply, WebhookReceiver

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

SECRET = re.compile(r"signing secret for (\S+): (whsec_\S+)")
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 8


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[WebhookReceiver]:
    with WebhookReceiver(tmp_path) as r:
        yield r


@pytest.fixture
def world(
    cli: Cli,
    cli_env: dict[str, str],
    dns_server: DNSServer,
    tmp_path: Path,
    receiver: WebhookReceiver,
) -> Iterator[Forwarder]:
    cli_env["SMTPY_WEBHOOK_ALLOW_PRIVATE"] = "true"  # the receiver is on 127.0.0.1
    with forwarding_world(
        cli,
        cli_env,
        dns_server,
        tmp_path,
        webhook_allow_private="true",
        tls_ca_file=str(receiver.ca_file),
    ) as world:
        yield world


def add_url_alias(world: Forwarder, receiver: WebhookReceiver, *destinations: str) -> str:
    """Add orders@ with `destinations`; the secret `smtpy alias add` printed, which the
    receiver then verifies signatures with."""
    out = world.run("alias", "add", f"orders@{DOMAIN}", *destinations)
    [(url, secret)] = SECRET.findall(out)
    assert url == receiver.url()
    receiver.secrets.append(secret)
    return secret


def order_message(message_id: str) -> bytes:
    message = EmailMessage()
    message["From"] = f"Alice <{SENDER}>"
    message["To"] = f"orders@{DOMAIN}"
    message["Subject"] = "Order 42"
    message["Date"] = "Thu, 26 Nov 2026 10:00:00 +0000"
    message["Message-ID"] = message_id
    message.set_content("Please find the order attached.\n")
    message.add_alternative("<p>Please find the <b>order</b> attached.</p>\n", subtype="html")
    message.add_attachment(PDF, maintype="application", subtype="pdf", filename="order.pdf")
    return message.as_bytes().replace(b"\n", b"\r\n")


def new_id() -> str:
    return f"<{uuid.uuid4().hex}@sender.test>"


def test_a_message_with_attachments_is_posted_signed_with_the_destination_secret(
    world: Forwarder, receiver: WebhookReceiver
) -> None:
    secret = add_url_alias(world, receiver, "bob@dest1.test", receiver.url())
    with Database(world.database_url) as db:
        row = db.one("SELECT kind, secret, confirmed_at FROM destinations")
    assert row is not None and (row["kind"], row["secret"]) == ("url", secret)
    assert row["confirmed_at"] is not None
    shown = json.loads(world.run("alias", "list", "--json"))
    assert shown[0]["destinations"] == ["bob@dest1.test", receiver.url()]
    assert secret not in json.dumps(shown), "the secret is shown once, at creation"
    daemon = world.start()
    message_id = new_id()

    assert send(daemon.port, SENDER, [f"orders@{DOMAIN}"], order_message(message_id)) == {}

    [hit] = receiver.wait_for(lambda hits: hits)
    assert hit.verified_by == (0,), "the signature verifies with the destination's secret"
    assert hit.path == "/hook" and hit.type == "message.received"
    data = hit.json["data"]
    assert data["envelope"] == {"mail_from": SENDER, "rcpt_to": [f"orders@{DOMAIN}"]}
    assert (data["message_id"], data["subject"]) == (message_id, "Order 42")
    assert data["from"] == f"Alice <{SENDER}>" and data["to"] == [f"orders@{DOMAIN}"]
    assert data["text"].replace("\r\n", "\n") == "Please find the order attached.\n"
    assert "<b>order</b>" in data["html"]
    [pdf] = data["attachments"]
    assert (pdf["filename"], pdf["content_type"], pdf["size"]) == (
        "order.pdf",
        "application/pdf",
        len(PDF),
    )
    assert base64.b64decode(pdf["content_base64"]) == PDF
    assert data["truncated"] == {"text": False, "html": False, "headers": False, "attachments": []}
    assert any(name == "Received" for name, _ in data["headers"])
    # The address beside the URL got the message over SMTP as usual.
    [mail] = world.peers.wait_for(lambda got: [r for r in got if r.message_id == message_id])
    assert mail.rcpt_tos == ("bob@dest1.test",)
    world.wait_settled()
    assert len(receiver.received()) == 1, "one POST per URL per message"
    delivered = daemon.wait_event("delivered", lambda e: e["recipient"] == receiver.url())
    assert delivered["reply"] == "HTTP 200"


def test_500_then_200_is_delivered_on_retry_with_the_same_event_id(
    world: Forwarder, receiver: WebhookReceiver
) -> None:
    add_url_alias(world, receiver, receiver.url())
    receiver.script(Reply(500, body="busy"))
    daemon = world.start()

    assert send(daemon.port, SENDER, [f"orders@{DOMAIN}"], order_message(new_id())) == {}

    first, second = receiver.wait_for(lambda hits: hits if len(hits) >= 2 else None)
    world.wait_settled()
    assert [h.status for h in receiver.received()] == [500, 200]
    assert first.id == second.id, "a retry is the same event: the receiver can drop a repeat"
    assert first.verified_by == second.verified_by == (0,)
    deferred = daemon.wait_event("deferred")
    assert deferred["reply"] == "HTTP 500: busy" and deferred["attempt"] == 1
    assert daemon.wait_event("delivered")["attempt"] == 2
    assert world.peers.received == [], "no DSN"


def test_a_429_is_retried_after_what_its_retry_after_asked_not_the_schedule(
    world: Forwarder, receiver: WebhookReceiver
) -> None:
    add_url_alias(world, receiver, receiver.url())
    receiver.script(Reply(429, headers={"Retry-After": "4"}, body="slow down"))
    daemon = world.start()  # SMTPY_RETRY_SCHEDULE=1: the schedule alone retries after 1 s

    assert send(daemon.port, SENDER, [f"orders@{DOMAIN}"], order_message(new_id())) == {}

    first, second = receiver.wait_for(lambda hits: hits if len(hits) >= 2 else None)
    world.wait_settled()
    assert [h.status for h in receiver.received()] == [429, 200]
    assert second.at - first.at >= 3.9, "the second POST came before Retry-After allowed it"
    assert daemon.wait_event("deferred")["reply"] == "HTTP 429: slow down"


@pytest.mark.parametrize("status", [400, 410])
def test_a_4xx_answer_bounces_to_the_sender_at_once(
    world: Forwarder, receiver: WebhookReceiver, status: int
) -> None:
    add_url_alias(world, receiver, receiver.url())
    receiver.script(Reply(status, body="no such endpoint"))
    daemon = world.start()
    message_id = new_id()

    assert send(daemon.port, SENDER, [f"orders@{DOMAIN}"], order_message(message_id)) == {}

    [dsn] = world.peers.wait_for(lambda got: [r for r in got if r.host == SENDER_MX])
    world.wait_settled()
    assert len(receiver.received()) == 1, "a 4xx is not retried"
    assert dsn.mail_from == "" and dsn.rcpt_tos == (SENDER,)
    report = next(
        p for p in dsn.message.walk() if p.get_content_type() == "message/delivery-status"
    ).as_string()
    assert f"Final-Recipient: rfc822; orders@{DOMAIN}" in report
    assert f"Status: {'5.1.1' if status == 410 else '5.0.0'}" in report
    assert f"HTTP {status}: no such endpoint" in report
    assert "Remote-MTA: dns; 127.0.0.1" in report
    assert receiver.url().encode() not in dsn.data, "the DSN leaks the alias destination"
    assert message_id.encode() in dsn.data
    assert daemon.wait_event("bounced")["recipients"] == [f"orders@{DOMAIN}"]


def test_a_loopback_url_is_refused_without_the_setting_and_nothing_changes(
    cli: Cli, cli_env: dict[str, str], store_url: str
) -> None:
    assert cli("domain", "add", DOMAIN).code == 0
    cli_env.pop("SMTPY_WEBHOOK_ALLOW_PRIVATE", None)
    for url in (
        "https://127.0.0.1:8443/hook",
        "http://hooks.example.com/in",
        "https://localhost/x",
    ):
        result = cli("alias", "add", f"orders@{DOMAIN}", "bob@dest1.test", url)
        assert result.code != 0
        error = " ".join((result.stderr + result.stdout).split())
        assert "SMTPY_WEBHOOK_ALLOW_PRIVATE" in error, error
        assert "Traceback" not in error
    assert json.loads(cli("alias", "list", "--json").stdout) == []
    with Database(store_url) as db:
        assert db.scalar("SELECT count(*) FROM destinations") == 0


def test_only_new_urls_get_a_secret_shown(
    world: Forwarder, receiver: WebhookReceiver, cli: Cli
) -> None:
    secret = add_url_alias(world, receiver, receiver.url())
    again = world.run("alias", "add", f"sales@{DOMAIN}", receiver.url())
    assert "signing secret" not in again and secret not in again
    with Database(world.database_url) as db:
        assert db.scalar("SELECT count(*) FROM destinations") == 1
