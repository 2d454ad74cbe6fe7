"""End-to-end: the real `smtpy serve` forwarding mail between real SMTP peers.

Each test sets up its domain and aliases with the real CLI, publishes the
domain's records (DKIM key included) on the loopback DNS server, starts the
daemon as a subprocess and talks to it with smtplib. Destination MX hosts
(`MailPeers`) listen on 127.0.0.2 (dest1.test), 127.0.0.3 (dest2.test) and
127.0.0.4 (sender.test, where bounces go). Every test runs on SQLite and
PostgreSQL.
"""

from __future__ import annotations

import re
import smtplib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import Cli
from dnsserver import DNSServer
from mailpeers import (
    DEST1,
    DEST2,
    DOMAIN,
    HOSTNAME,
    SENDER,
    SENDER_MX,
    Forwarder,
    Received,
    Serve,
    forwarding_world,
    make_message,
    send,
    smtp_client,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

MAX_SIZE = 64 * 1024
SRS0 = re.compile(r"^SRS0=[^=@]{4}=[A-Z2-7]{2}=sender\.test=alice@mx\.forwarder\.test$")


def new_id() -> str:
    return f"<{uuid.uuid4().hex}@sender.test>"


@pytest.fixture
def forwarder(
    cli: Cli, cli_env: dict[str, str], dns_server: DNSServer, tmp_path: Path
) -> Iterator[Forwarder]:
    with forwarding_world(cli, cli_env, dns_server, tmp_path, max_message_size=MAX_SIZE) as world:
        yield world


def only(received: list[Received], predicate: Callable[[Received], bool]) -> list[Received]:
    return [r for r in received if predicate(r)]


def with_id(message_id: str) -> Callable[[list[Received]], list[Received]]:
    return lambda got: [r for r in got if r.message_id == message_id]


# -- forwarding ------------------------------------------------------------------------


def test_alias_reaches_every_destination_with_srs_dkim_and_received(forwarder: Forwarder) -> None:
    forwarder.alias(f"team@{DOMAIN}", "bob@dest1.test", "carol@dest2.test", "dave@dest2.test")
    daemon = forwarder.start()
    message_id = new_id()
    data = make_message(message_id=message_id, to=f"team@{DOMAIN}")

    assert send(daemon.port, SENDER, [f"team@{DOMAIN}"], data) == {}

    destinations = {"bob@dest1.test", "carol@dest2.test", "dave@dest2.test"}
    got = forwarder.peers.wait_for(
        lambda got: {rcpt for r in got for rcpt in r.rcpt_tos} >= destinations and got
    )
    assert len(got) == 2, "one transaction per destination domain"
    by_host = {r.host: r for r in got}
    assert by_host[DEST1].rcpt_tos == ("bob@dest1.test",)
    assert sorted(by_host[DEST2].rcpt_tos) == ["carol@dest2.test", "dave@dest2.test"]
    for received in got:
        assert SRS0.match(received.mail_from), received.mail_from
        assert received.helo == HOSTNAME
        message = received.message
        assert message["Subject"] == "Hello"
        assert str(message["Message-ID"]) == message_id
        assert message.get_content().replace("\r\n", "\n") == (
            "Hello there.\n.A line that starts with a dot.\n"
        )
        [received_header] = message.get_all("Received")
        assert f"by {HOSTNAME} (smtpy) with ESMTP id " in " ".join(received_header.split())
        assert f"for <team@{DOMAIN}>" in received_header
        [signature] = message.get_all("DKIM-Signature")
        assert f"d={DOMAIN};" in " ".join(signature.split())
        assert forwarder.dkim_ok(received.data), "the DKIM signature does not verify"
    # Forging the signed content must break the signature: the check above means something.
    tampered = got[0].data.replace(b"Subject: Hello", b"Subject: Hellp")
    assert not forwarder.dkim_ok(tampered)


def test_routing_plus_regex_catchall_utf8_discard_and_helo(forwarder: Forwarder) -> None:
    forwarder.alias(f"bob@{DOMAIN}", "bob@dest1.test")
    forwarder.alias(f"/sales-[0-9]+/@{DOMAIN}", "sales@dest2.test")
    forwarder.alias(f"*@{DOMAIN}", "catchall@dest1.test")
    forwarder.alias(f"jürgen@{DOMAIN}", "juergen@dest2.test")
    forwarder.alias(f"spam@{DOMAIN}", mode="discard")
    daemon = forwarder.start()

    expected = {
        f"bob+news@{DOMAIN}": "bob@dest1.test",
        f"BOB@{DOMAIN}": "bob@dest1.test",
        f"sales-42@{DOMAIN}": "sales@dest2.test",
        f"sales-x@{DOMAIN}": "catchall@dest1.test",
        f"nobody-in-particular@{DOMAIN}": "catchall@dest1.test",
    }
    ids = {}
    for recipient in expected:
        ids[recipient] = new_id()
        data = make_message(message_id=ids[recipient], to=recipient)
        assert send(daemon.port, SENDER, [recipient], data) == {}

    utf8_id = new_id()
    utf8_data = make_message(message_id=utf8_id, to=f"jürgen@{DOMAIN}", subject="Grüße")
    assert (
        send(daemon.port, SENDER, [f"jürgen@{DOMAIN}"], utf8_data, mail_options=["SMTPUTF8"]) == {}
    )

    discard_id = new_id()
    assert send(daemon.port, SENDER, [f"spam@{DOMAIN}"], make_message(message_id=discard_id)) == {}

    helo_id = new_id()
    with smtp_client(daemon.port) as client:
        code, _ = client.helo("old.sender.test")
        assert code == 250
        client.sendmail(SENDER, [f"bob@{DOMAIN}"], make_message(message_id=helo_id))

    wanted = {*ids.values(), utf8_id, helo_id}
    forwarder.peers.wait_for_ids(wanted)
    received = {r.message_id: r for r in forwarder.peers.received}
    for recipient, destination in expected.items():
        assert received[ids[recipient]].rcpt_tos == (destination,), recipient

    utf8 = received[utf8_id]
    assert utf8.rcpt_tos == ("juergen@dest2.test",)
    assert "SMTPUTF8" in utf8.mail_options
    assert utf8.message["Subject"] == "Grüße"
    assert " with UTF8SMTP " in " ".join(utf8.message["Received"].split())

    helo = received[helo_id]
    assert helo.rcpt_tos == ("bob@dest1.test",)
    assert " with SMTP id " in " ".join(helo.message["Received"].split())
    assert "old.sender.test" in helo.message["Received"]

    assert discard_id not in received, "a discard alias delivered mail"
    assert len(forwarder.peers.received) == len(wanted)
    daemon.wait_event("discarded", lambda e: e["recipients"] == [f"spam@{DOMAIN}"])


def test_rcpt_and_data_rejections(forwarder: Forwarder) -> None:
    forwarder.alias(f"team@{DOMAIN}", "bob@dest1.test")
    forwarder.alias(f"off@{DOMAIN}", "bob@dest1.test")
    forwarder.run("alias", "disable", f"off@{DOMAIN}")
    forwarder.alias(f"gone@{DOMAIN}", mode="reject", message="This address has retired")
    daemon = forwarder.start()

    with smtp_client(daemon.port) as client:
        client.ehlo()
        assert client.has_extn("size")
        assert int(client.esmtp_features["size"]) == MAX_SIZE
        assert client.mail(SENDER)[0] == 250
        code, text = client.rcpt("someone@elsewhere.test")
        assert (code, text[:5]) == (550, b"5.7.1")
        code, text = client.rcpt(f"nobody@{DOMAIN}")
        assert (code, text[:5]) == (550, b"5.1.1")
        code, text = client.rcpt(f"off@{DOMAIN}")
        assert (code, text[:5]) == (550, b"5.2.1")
        assert client.rcpt(f"gone@{DOMAIN}") == (550, b"5.7.1 This address has retired")
        for n in range(100):
            code, text = client.rcpt(f"team+{n}@{DOMAIN}")
            assert code == 250, (n, text)
        code, text = client.rcpt(f"team+100@{DOMAIN}")
        assert (code, text[:5]) == (452, b"4.5.3")
        assert client.rset()[0] == 250

        # SIZE over the limit is refused at MAIL FROM.
        code, text = client.mail(SENDER, [f"SIZE={MAX_SIZE + 1}"])
        assert (code, text[:5]) == (552, b"5.3.4")
        assert client.rset()[0] == 250

        # A message over the limit is refused after DATA (the client declared no SIZE).
        too_big_id = new_id()
        too_big = make_message(message_id=too_big_id, body="x" * 76 + "\r\n") + (
            b"y" * 76 + b"\r\n"
        ) * (MAX_SIZE // 78 + 10)
        assert client.mail(SENDER)[0] == 250
        assert client.rcpt(f"team@{DOMAIN}")[0] == 250
        code, text = client.data(too_big)
        assert (code, text[:5]) == (552, b"5.3.4")

    # A mail loop: more than 25 Received headers.
    loop_id = new_id()
    trace = [f"Received: from hop{n}.test by hop{n + 1}.test; Thu, 26 Nov 2026" for n in range(26)]
    looping = make_message(message_id=loop_id, extra_headers=trace)
    with pytest.raises(smtplib.SMTPDataError) as error:
        send(daemon.port, SENDER, [f"team@{DOMAIN}"], looping)
    assert (error.value.smtp_code, error.value.smtp_error[:5]) == (554, b"5.4.6")

    # 25 are still fine; and it is the only message that arrives.
    ok_id = new_id()
    fine = make_message(message_id=ok_id, extra_headers=trace[:25])
    assert send(daemon.port, SENDER, [f"team@{DOMAIN}"], fine) == {}
    forwarder.peers.wait_for_ids([ok_id])
    forwarder.wait_settled()  # nothing left that could still arrive
    assert [r.message_id for r in forwarder.peers.received] == [ok_id]


# -- the SRS bounce path -----------------------------------------------------------------


def forward_one(forwarder: Forwarder, daemon: Serve) -> Received:
    """Send one message to team@ and return it as the destination got it."""
    message_id = new_id()
    assert send(daemon.port, SENDER, [f"team@{DOMAIN}"], make_message(message_id=message_id)) == {}
    [forwarded] = forwarder.peers.wait_for(with_id(message_id))
    assert SRS0.match(forwarded.mail_from), forwarded.mail_from
    return forwarded


def test_srs_address_leads_back_to_the_original_sender(forwarder: Forwarder) -> None:
    forwarder.alias(f"team@{DOMAIN}", "bob@dest1.test")
    daemon = forwarder.start(srs_secret="an e2e test secret")
    srs_address = forward_one(forwarder, daemon).mail_from

    # A reply to the envelope sender (e.g. from list software) goes back to alice.
    reply_id = new_id()
    reply = make_message(message_id=reply_id, sender="owner@dest1.test", to=srs_address)
    assert send(daemon.port, "owner@dest1.test", [srs_address], reply) == {}
    [returned] = forwarder.peers.wait_for(with_id(reply_id))
    assert returned.host == SENDER_MX
    assert returned.rcpt_tos == (SENDER,)
    assert returned.mail_from == "owner@dest1.test", "reversed SRS mail keeps its sender"

    # A forged SRS address (wrong hash) is refused at RCPT.
    tag, hash_, rest = srs_address.split("=", 2)
    forged = f"{tag}={''.join('C' if c == 'B' else 'B' for c in hash_)}={rest}"
    with smtp_client(daemon.port) as client:
        client.ehlo()
        client.mail("postmaster@dest1.test")
        code, text = client.rcpt(forged)
    assert (code, text[:5]) == (550, b"5.1.1")


def test_bounce_to_srs_address_reaches_the_original_sender(forwarder: Forwarder) -> None:
    forwarder.alias(f"team@{DOMAIN}", "bob@dest1.test")
    daemon = forwarder.start()
    srs_address = forward_one(forwarder, daemon).mail_from

    # The destination bounces, from the null sender, to the SRS address.
    bounce_id = new_id()
    bounce = make_message(
        message_id=bounce_id,
        sender="MAILER-DAEMON@dest1.test",
        to=srs_address,
        subject="Undelivered Mail Returned to Sender",
    )
    assert send(daemon.port, "", [srs_address], bounce) == {}
    [returned] = forwarder.peers.wait_for(with_id(bounce_id))
    assert returned.host == SENDER_MX
    assert returned.rcpt_tos == (SENDER,)
    assert returned.mail_from == "", "a bounce must keep the null sender"


# -- retries and bounces -------------------------------------------------------------------


def test_451_twice_then_250_is_delivered_once(forwarder: Forwarder) -> None:
    forwarder.alias(f"team@{DOMAIN}", "bob@dest1.test")
    forwarder.peers.script("bob@dest1.test", "451 4.3.0 Busy", "451 4.3.0 Still busy")
    daemon = forwarder.start()
    message_id = new_id()
    assert send(daemon.port, SENDER, [f"team@{DOMAIN}"], make_message(message_id=message_id)) == {}

    forwarder.peers.wait_for(with_id(message_id))
    forwarder.wait_settled()  # no further attempt can come
    assert len(with_id(message_id)(forwarder.peers.received)) == 1
    replies = [r.reply[:3] for r in forwarder.peers.replies if r.stage == "RCPT"]
    assert replies == ["451", "451", "250"]
    deferred = daemon.events("deferred")
    assert [e["attempt"] for e in deferred] == [1, 2]
    assert daemon.wait_event("delivered")["attempt"] == 3


def test_each_session_is_one_log_event(forwarder: Forwarder) -> None:
    forwarder.alias(f"team@{DOMAIN}", "bob@dest1.test")
    daemon = forwarder.start()
    with smtp_client(daemon.port) as client:
        client.sendmail(SENDER, [f"team@{DOMAIN}"], make_message(message_id=new_id()))
        client.sendmail(SENDER, [f"team@{DOMAIN}"], make_message(message_id=new_id()))
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            client.sendmail(SENDER, [f"nobody@{DOMAIN}"], make_message(message_id=new_id()))
    event = daemon.wait_event("session", lambda e: e["queued"] == 2)
    assert event["refused"] == 1
    assert event["client"] == "127.0.0.1"
    assert event["helo"] == "client.sender.test"
    assert event["tls"] is None
    assert 0 <= event["seconds"] < 30


def test_a_queued_message_that_cannot_be_signed_bounces_at_once(forwarder: Forwarder) -> None:
    # DATA refuses such headers now; a queue filled before that (or by hand) still holds some.
    from smtpy.queue.queries import NewDelivery, NewMessage, enqueue, new_queue_id
    from smtpy.store.db import Database

    forwarder.alias(f"team@{DOMAIN}", "bob@dest1.test")
    queue_id = new_queue_id()
    with Database(forwarder.database_url) as db, db.transaction():
        enqueue(
            db,
            NewMessage(
                queue_id=queue_id,
                sender=SENDER,
                data=b"Subject: fine\r\n: no field name\r\n\r\nbody\r\n",
                deliveries=[NewDelivery(f"team@{DOMAIN}", "bob@dest1.test", "dest1.test", SENDER)],
            ),
        )
    daemon = forwarder.start()
    [dsn] = forwarder.peers.wait_for(lambda got: only(got, lambda r: r.host == SENDER_MX))
    assert dsn.rcpt_tos == (SENDER,)
    assert b"Status: 5.6.0" in dsn.data
    assert b"cannot be forwarded" in dsn.data
    assert daemon.wait_event("bounced")["queue_id"] == queue_id
    assert not [r for r in forwarder.peers.received if r.host != SENDER_MX]


def test_550_bounces_to_the_original_sender_naming_the_alias(forwarder: Forwarder) -> None:
    forwarder.alias(f"team@{DOMAIN}", "bob@dest1.test")
    forwarder.peers.script(
        "bob@dest1.test", "550 5.1.1 <bob@dest1.test>: no such user", repeat=True
    )
    daemon = forwarder.start()
    message_id = new_id()
    assert send(daemon.port, SENDER, [f"team@{DOMAIN}"], make_message(message_id=message_id)) == {}

    [dsn] = forwarder.peers.wait_for(lambda got: only(got, lambda r: r.host == SENDER_MX))
    assert dsn.mail_from == ""
    assert dsn.rcpt_tos == (SENDER,)
    message = dsn.message
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    status = next(p for p in message.walk() if p.get_content_type() == "message/delivery-status")
    fields = status.as_string()
    assert f"Original-Recipient: rfc822; team@{DOMAIN}" in fields
    assert f"Final-Recipient: rfc822; team@{DOMAIN}" in fields
    assert "Status: 5.1.1" in fields
    assert b"bob@dest1.test" not in dsn.data, "the DSN leaks the alias destination"
    assert message_id.encode() in dsn.data, "the DSN returns the original headers"
    forwarder.wait_settled()  # no retry can come
    rcpt_attempts = [r for r in forwarder.peers.replies if r.address == "bob@dest1.test"]
    assert len(rcpt_attempts) == 1, "a 550 must not be retried"
    assert daemon.wait_event("bounced")["recipients"] == [f"team@{DOMAIN}"]


def test_failed_bounce_is_dropped_never_bounced(forwarder: Forwarder) -> None:
    forwarder.alias(f"team@{DOMAIN}", "bob@dest1.test")
    forwarder.peers.script("bob@dest1.test", "550 5.1.1 no such user", repeat=True)
    daemon = forwarder.start()
    bounce_id = new_id()
    assert send(daemon.port, "", [f"team@{DOMAIN}"], make_message(message_id=bounce_id)) == {}
    daemon.wait_event("bounce_dropped")
    forwarder.wait_settled()
    assert forwarder.peers.received == []
    assert daemon.events("bounced") == []


def test_mx_down_then_up_is_delivered_when_it_comes_back(forwarder: Forwarder) -> None:
    forwarder.alias(f"team@{DOMAIN}", "bob@dest1.test")
    forwarder.peers.down(DEST1)
    daemon = forwarder.start()
    message_id = new_id()
    assert send(daemon.port, SENDER, [f"team@{DOMAIN}"], make_message(message_id=message_id)) == {}

    deferred = daemon.wait_event("deferred")
    assert "refused" in deferred["reply"], deferred
    assert forwarder.peers.received == []
    forwarder.peers.up(DEST1)
    [received] = forwarder.peers.wait_for(with_id(message_id), timeout=15)
    assert received.host == DEST1
    assert received.rcpt_tos == ("bob@dest1.test",)
