"""Inbound SMTP in process (smtpy.smtp.handler): the real server and handler, a real store
(SQLite and PostgreSQL) behind a real StoreThread, and real clients on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import re
import smtplib
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import example, given, settings
from hypothesis import strategies as st

from admin_store import add_alias, add_domain
from smtpy.admin.aliases import domain_rules
from smtpy.mail.framing import crlf_line_endings
from smtpy.queue.queries import NewMessage
from smtpy.queue.writer import StoreThread
from smtpy.route.aliases import DomainRules
from smtpy.route.srs import SRS
from smtpy.smtp.handler import Handler, Policy
from smtpy.smtp.server import SmtpServer, server_factory
from smtpy.store.db import Database

HOSTNAME = "mx.forwarder.test"
SRS_ = SRS(secrets=(b"receive test secret",), domain=HOSTNAME)
MAX_SIZE = 20_000
MAX_RECIPIENTS = 4
ENHANCED = re.compile(r"^[245]\d\d[ -][245]\.\d{1,3}\.\d{1,3} ")
QUEUED = re.compile(r"^2\.0\.0 Ok: queued as ([0-9A-Z]{16})$")
T = TypeVar("T")


@dataclass
class Server:
    port: int
    store: StoreThread
    queued: list[NewMessage] = field(default_factory=list)

    async def queue(self, message: NewMessage) -> None:
        """What the daemon's delivery worker does first: commit durably; then count it."""
        await self.store.enqueue(message)
        self.queued.append(message)


@pytest.fixture
def served(db: Database) -> Database:
    add_domain(db, "example.test", key_algorithm="ed25519")
    add_alias(db, "alice@example.test", ["alice@dest.test"])
    add_alias(db, "team@example.test", ["a@dest.test", "b@dest.test", "alice@example.test"])
    add_alias(db, "null@example.test", [], mode="discard")
    return db


@contextlib.asynccontextmanager
async def smtp_server(
    store_url: str, *, tls: ssl.SSLContext | None = None, max_recipients: int = MAX_RECIPIENTS
) -> AsyncIterator[Server]:
    store = StoreThread(store_url, name="test-store")
    store.start()

    async def rules_for(domain: str) -> DomainRules | None:
        return await store.call(lambda db: domain_rules(db, domain))

    server = Server(0, store)
    handler = Handler(
        policy=Policy(
            hostname=HOSTNAME,
            max_recipients=max_recipients,
            max_message_size=MAX_SIZE,
            plus_separator="+",
        ),
        queue=server.queue,
        rules_for=rules_for,
        srs=SRS_,
    )
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(
        server_factory(
            handler, hostname=HOSTNAME, max_message_size=MAX_SIZE, tls_context=lambda: tls
        ),
        "127.0.0.1",
        0,
    )
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(listener.wait_closed(), 5)
        store.stop()


def serve(store_url: str, client: Callable[[Server], T], **kwargs: Any) -> T:
    """Start a server, run the blocking `client(server)` in a thread, return its result."""

    async def scenario() -> T:
        async with smtp_server(store_url, **kwargs) as server:
            return await asyncio.to_thread(client, server)

    return asyncio.run(scenario())


def connect(server: Server) -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", server.port, local_hostname="client.test", timeout=10)


def message(subject: str = "hello", *, received: int = 0, body: bytes = b"Hi there.\r\n") -> bytes:
    trace = b"".join(
        b"Received: from hop%d by hop%d; date\r\n" % (i, i + 1) for i in range(received)
    )
    return trace + b"From: carol@sender.test\r\nSubject: " + subject.encode() + b"\r\n\r\n" + body


def queued_id(reply: tuple[int, bytes]) -> str:
    code, text = reply
    assert code == 250, reply
    match = QUEUED.match(text.decode())
    assert match, reply
    return match.group(1)


def stored(db: Database) -> list[dict[str, Any]]:
    """Every message with its deliveries."""
    messages = db.all("SELECT * FROM messages ORDER BY id")
    for m in messages:
        m["data"] = bytes(m["data"])
        m["deliveries"] = db.all(
            "SELECT original_recipient, recipient, domain, envelope_sender, status, attempts"
            " FROM deliveries WHERE message_id = :id ORDER BY id",
            {"id": m["id"]},
        )
    return messages


class Raw:
    """A raw SMTP client over asyncio streams, for bytes smtplib will not send."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, server: Server) -> tuple[Raw, list[str]]:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        raw = cls(reader, writer)
        return raw, await raw.reply()

    async def reply(self) -> list[str]:
        lines = []
        while True:
            line = await asyncio.wait_for(self.reader.readline(), 10)
            assert line.endswith(b"\r\n"), line
            lines.append(line[:-2].decode("utf-8"))
            if line[3:4] != b"-":
                return lines

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def command(self, line: bytes) -> list[str]:
        await self.send(line + b"\r\n")
        return await self.reply()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


def raw_session(store_url: str, session: Callable[[Raw], Any], **kwargs: Any) -> Any:
    async def scenario() -> Any:
        async with smtp_server(store_url, **kwargs) as server:
            raw, greeting = await Raw.open(server)
            assert greeting == [f"220 {HOSTNAME} smtpy"]
            try:
                return await session(raw)
            finally:
                await raw.close()

    return asyncio.run(scenario())


# -- the session --------------------------------------------------------------


def test_ehlo_advertises_the_extensions(served: Database, store_url: str) -> None:
    def client(server: Server) -> tuple[int, bytes, dict[str, str]]:
        with connect(server) as smtp:
            code, text = smtp.ehlo()
            return code, text, dict(smtp.esmtp_features)

    code, text, features = serve(store_url, client)
    assert code == 250
    assert text.splitlines()[0] == HOSTNAME.encode()
    assert features["size"] == str(MAX_SIZE)
    for name in ("pipelining", "8bitmime", "smtputf8", "enhancedstatuscodes"):
        assert name in features
    assert "auth" not in features  # a forwarder takes no logins
    assert "starttls" not in features  # no certificate configured


def test_every_reply_after_ehlo_carries_an_enhanced_status_code(
    served: Database, store_url: str
) -> None:
    commands = [
        b"NOOP",
        b"HELP",
        b"HELP MAIL",
        b"VRFY alice@example.test",
        b"EXPN team",
        b"RSET x",
        b"RSET",
        b"STARTTLS",
        b"AUTH PLAIN AHVzZXIAcGFzcw==",
        b"RCPT TO:<alice@example.test>",
        b"DATA",
        b"MAIL TO:<carol@sender.test>",
        b"MAIL FROM:<carol@sender.test> FOO=BAR",
        b"MAIL FROM:<carol@sender.test> SIZE=1000000",
        b"MAIL FROM:<carol@sender.test> BODY=9BIT",
        b"MAIL FROM:<not an address>",
        b"MAIL FROM:<carol@sender.test> SIZE=100",
        b"MAIL FROM:<dave@sender.test>",
        b"RCPT TO:<nobody@example.test>",
        b"RCPT TO:<someone@elsewhere.test>",
        b"RCPT TO:<bad address@example.test>",
        b"RCPT TO:<alice@example.test> NOTIFY=NEVER",
        b"RCPT TO:alice@example.test",
        b"RCPT TO:<alice@example.test>",
        b"DATA x",
        b"BDAT 10 LAST",
        b"\xff\xfe",
        b"",
        b"QUIT now",
    ]

    async def session(raw: Raw) -> list[str]:
        ehlo = await raw.command(b"EHLO client.test")
        assert not any(ENHANCED.match(line) for line in ehlo)  # RFC 2034: none on EHLO
        replies = []
        for line in commands:
            replies += await raw.command(line)
        assert (await raw.command(b"DATA"))[0].startswith("354 ")
        replies += await raw.command(message() + b".")
        replies += await raw.command(b"QUIT")
        return replies

    replies = raw_session(store_url, session)
    assert len(replies) == len(commands) + 2
    missing = [r for r in replies if not ENHANCED.match(r)]
    assert missing == []
    assert replies[-1] == "221 2.0.0 Bye"
    assert re.match(r"250 2\.0\.0 Ok: queued as ", replies[-2])


def test_pipelined_transaction(served: Database, store_url: str) -> None:
    async def session(raw: Raw) -> list[str]:
        await raw.command(b"EHLO client.test")
        await raw.send(
            b"MAIL FROM:<carol@sender.test>\r\nRCPT TO:<alice@example.test>\r\n"
            b"RCPT TO:<nobody@example.test>\r\nRCPT TO:<team@example.test>\r\nDATA\r\n"
        )
        replies = [(await raw.reply())[0] for _ in range(5)]
        replies += await raw.command(message() + b".")
        return replies

    replies = raw_session(store_url, session)
    assert [r[:9] for r in replies] == [
        "250 2.1.0",
        "250 2.1.5",
        "550 5.1.1",
        "250 2.1.5",
        "354 End d",
        "250 2.0.0",
    ]
    [msg] = stored(served)
    assert sorted(d["recipient"] for d in msg["deliveries"]) == [
        "a@dest.test",
        "alice@dest.test",
        "b@dest.test",
    ]


# -- accepted mail --------------------------------------------------------------


def test_message_is_queued_with_srs_sender_and_received_header(
    served: Database, store_url: str
) -> None:
    def client(server: Server) -> tuple[str, int]:
        with connect(server) as smtp:
            smtp.ehlo()
            assert smtp.mail("Carol@Sender.test")[0] == 250
            assert smtp.rcpt("Alice@Example.test") == (250, b"2.1.5 Recipient OK")
            assert smtp.rcpt("team@example.test")[0] == 250
            queue_id = queued_id(smtp.data(message()))
        return queue_id, len(server.queued)

    queue_id, notified = serve(store_url, client)
    assert notified == 1
    [msg] = stored(served)
    assert msg["queue_id"] == queue_id
    assert msg["sender"] == "Carol@Sender.test"
    assert (msg["client_ip"], msg["client_helo"]) == ("127.0.0.1", "client.test")
    assert not msg["smtputf8"]
    assert msg["data"].endswith(message())  # the message itself, byte for byte
    header = msg["data"].removesuffix(message())
    assert header.startswith(
        b"Received: from client.test ([127.0.0.1])\r\n"
        b"\tby mx.forwarder.test (smtpy) with ESMTP id " + queue_id.encode() + b";\r\n\t"
    )
    assert msg["size"] == len(msg["data"])
    deliveries = msg["deliveries"]
    assert [(d["original_recipient"], d["recipient"], d["domain"]) for d in deliveries] == [
        ("Alice@example.test", "alice@dest.test", "dest.test"),
        ("team@example.test", "a@dest.test", "dest.test"),
        ("team@example.test", "b@dest.test", "dest.test"),
    ]
    for d in deliveries:
        assert (d["status"], d["attempts"]) == ("queued", 0)
        assert d["envelope_sender"].startswith("SRS0=")
        assert d["envelope_sender"].endswith("@" + HOSTNAME)
        assert SRS_.reverse(d["envelope_sender"]) == "Carol@Sender.test"


def test_received_header_names_the_one_recipient(served: Database, store_url: str) -> None:
    def client(server: Server) -> str:
        with connect(server) as smtp:
            smtp.sendmail("carol@sender.test", ["alice+tag@example.test"], message())
        return "ok"

    serve(store_url, client)
    [msg] = stored(served)
    assert b"\tfor <alice+tag@example.test>;\r\n" in msg["data"].split(b"\r\nFrom:")[0]


def test_helo_works(served: Database, store_url: str) -> None:
    def client(server: Server) -> tuple[int, bytes]:
        with connect(server) as smtp:
            reply = smtp.helo()
            smtp.sendmail("carol@sender.test", ["alice@example.test"], message())
        return reply

    assert serve(store_url, client) == (250, HOSTNAME.encode())  # RFC 2034: no code on HELO
    [msg] = stored(served)
    assert b"(smtpy) with SMTP id " in msg["data"]


def test_null_sender_is_accepted(served: Database, store_url: str) -> None:
    bounce_to = SRS_.forward("carol@sender.test")

    def client(server: Server) -> list[tuple[int, bytes]]:
        with connect(server) as smtp:
            smtp.ehlo()
            replies = [smtp.mail("<>"), smtp.rcpt("alice@example.test"), smtp.rcpt(bounce_to)]
            queued_id(smtp.data(message("Undelivered Mail")))
        return replies

    replies = serve(store_url, client)
    assert [code for code, _ in replies] == [250, 250, 250]
    [msg] = stored(served)
    assert msg["sender"] == ""
    assert [(d["recipient"], d["envelope_sender"]) for d in msg["deliveries"]] == [
        ("alice@dest.test", ""),
        ("carol@sender.test", ""),  # the SRS address reversed: the bounce goes home
    ]


def test_srs_bounce_keeps_its_sender(served: Database, store_url: str) -> None:
    bounce_to = SRS_.forward("carol@sender.test")

    def client(server: Server) -> None:
        with connect(server) as smtp:
            smtp.sendmail("postmaster@dest.test", [bounce_to], message())

    serve(store_url, client)
    [msg] = stored(served)
    assert msg["deliveries"] == [
        {
            "original_recipient": bounce_to,
            "recipient": "carol@sender.test",
            "domain": "sender.test",
            "envelope_sender": "postmaster@dest.test",
            "status": "queued",
            "attempts": 0,
        }
    ]


def test_smtputf8_message(served: Database, store_url: str) -> None:
    async def session(raw: Raw) -> list[str]:
        await raw.command(b"EHLO client.test")
        replies = [
            *await raw.command("MAIL FROM:<jörg@sender.test> SMTPUTF8".encode()),
            *await raw.command(b"RCPT TO:<alice@example.test>"),
            *await raw.command(b"DATA"),
            *await raw.command("Subject: grüße\r\n\r\nbody\r\n.".encode()),
        ]
        return replies

    replies = raw_session(store_url, session)
    assert [r[:3] for r in replies] == ["250", "250", "354", "250"]
    [msg] = stored(served)
    assert msg["smtputf8"]
    assert msg["sender"] == "jörg@sender.test"
    assert b"(smtpy) with UTF8SMTP id " in msg["data"]
    assert msg["data"].endswith("Subject: grüße\r\n\r\nbody\r\n".encode())
    assert SRS_.reverse(msg["deliveries"][0]["envelope_sender"]) == "jörg@sender.test"


def test_discarded_mail_is_answered_and_not_stored(served: Database, store_url: str) -> None:
    def client(server: Server) -> int:
        with connect(server) as smtp:
            smtp.ehlo()
            smtp.mail("carol@sender.test")
            assert smtp.rcpt("null@example.test")[0] == 250
            queued_id(smtp.data(message()))
        return len(server.queued)

    assert serve(store_url, client) == 0
    assert stored(served) == []


# -- refused mail ---------------------------------------------------------------


def test_rcpt_rules(served: Database, store_url: str) -> None:
    add_alias(served, "off@example.test", ["off@dest.test"])
    served.execute("UPDATE aliases SET enabled = :f WHERE local_key = 'off'", {"f": False})
    add_alias(served, "gone@example.test", [], mode="reject", reject_message="Moved away")
    expired = SRS_.forward("carol@sender.test", now=0)

    def client(server: Server) -> dict[str, tuple[int, bytes]]:
        with connect(server) as smtp:
            smtp.ehlo()
            smtp.mail("carol@sender.test")
            return {
                rcpt: smtp.rcpt(rcpt)
                for rcpt in [
                    "alice@example.test",
                    "ALICE+x@EXAMPLE.test",
                    "nobody@example.test",
                    "someone@elsewhere.test",
                    "off@example.test",
                    "gone@example.test",
                    expired,
                    "no-domain@",
                ]
            }

    replies = serve(store_url, client)
    codes = {rcpt: text.decode()[:5] for rcpt, (code, text) in replies.items()}
    assert {rcpt: code for rcpt, (code, _) in replies.items()} == {
        "alice@example.test": 250,
        "ALICE+x@EXAMPLE.test": 250,
        "nobody@example.test": 550,
        "someone@elsewhere.test": 550,
        "off@example.test": 550,
        "gone@example.test": 550,
        expired: 550,
        "no-domain@": 553,
    }
    assert codes["nobody@example.test"] == "5.1.1"
    assert codes["someone@elsewhere.test"] == "5.7.1"
    assert codes["off@example.test"] == "5.2.1"
    assert replies["gone@example.test"][1] == b"5.7.1 Moved away"
    assert codes[expired] == "5.1.1"
    assert codes["no-domain@"] == "5.1.3"


def test_too_many_recipients(served: Database, store_url: str) -> None:
    def client(server: Server) -> list[tuple[int, bytes]]:
        with connect(server) as smtp:
            smtp.ehlo()
            smtp.mail("carol@sender.test")
            replies = [smtp.rcpt("nobody@example.test")]  # refused ones do not count
            replies += [smtp.rcpt(f"alice+{n}@example.test") for n in range(MAX_RECIPIENTS + 2)]
            queued_id(smtp.data(message()))
        return replies

    replies = serve(store_url, client)
    assert [code for code, _ in replies] == [550] + [250] * MAX_RECIPIENTS + [452, 452]
    assert replies[-1] == (452, b"4.5.3 Too many recipients")
    [msg] = stored(served)
    assert len(msg["deliveries"]) == 1  # the same destination, once


def test_size_over_the_limit_at_mail(served: Database, store_url: str) -> None:
    def client(server: Server) -> tuple[int, bytes]:
        with connect(server) as smtp:
            smtp.ehlo()
            return smtp.mail("carol@sender.test", [f"SIZE={MAX_SIZE + 1}"])

    code, text = serve(store_url, client)
    assert code == 552
    assert text.startswith(b"5.3.4 ")


def test_data_over_the_limit_is_refused_and_nothing_stored(
    served: Database, store_url: str
) -> None:
    big = message(body=b"x" * 998 + b"\r\n") * (MAX_SIZE // 1000 + 1)

    def client(server: Server) -> tuple[tuple[int, bytes], str]:
        with connect(server) as smtp:
            smtp.ehlo()
            smtp.mail("carol@sender.test")
            smtp.rcpt("alice@example.test")
            refused = smtp.data(big)
            smtp.rset()
            smtp.mail("carol@sender.test")
            smtp.rcpt("alice@example.test")
            return refused, queued_id(smtp.data(message()))

    (code, text), queue_id = serve(store_url, client)
    assert code == 552
    assert text.startswith(b"5.3.4 ")
    assert [m["queue_id"] for m in stored(served)] == [queue_id]


@pytest.mark.parametrize(("hops", "code"), [(25, 250), (26, 554)])
def test_too_many_received_headers_is_a_loop(
    served: Database, store_url: str, hops: int, code: int
) -> None:
    def client(server: Server) -> tuple[int, bytes]:
        with connect(server) as smtp:
            smtp.ehlo()
            smtp.mail("carol@sender.test")
            smtp.rcpt("alice@example.test")
            return smtp.data(message(received=hops))

    reply = serve(store_url, client)
    assert reply[0] == code
    if code == 554:
        assert reply[1].startswith(b"5.4.6 ")
        assert stored(served) == []


def test_sender_that_cannot_be_rewritten_is_refused_at_mail(
    served: Database, store_url: str
) -> None:
    def client(server: Server) -> tuple[tuple[int, bytes], tuple[int, bytes]]:
        with connect(server) as smtp:
            smtp.ehlo()
            bad = smtp.mail("carol@sender=test")
            smtp.rset()
            return bad, smtp.mail("nodomain")

    bad, no_domain = serve(store_url, client)
    assert bad[0] == 501 and bad[1].startswith(b"5.1.7 "), bad
    assert no_domain[0] == 501 and no_domain[1].startswith(b"5.1.7 "), no_domain


# -- failures -------------------------------------------------------------------


def test_store_failure_gives_451_and_the_client_can_retry(served: Database, store_url: str) -> None:
    def client(server: Server) -> tuple[tuple[int, bytes], str, int]:
        with connect(server) as smtp:
            smtp.ehlo()
            smtp.mail("carol@sender.test")
            smtp.rcpt("alice@example.test")
            served.execute("ALTER TABLE deliveries RENAME TO deliveries_away")
            try:
                failed = smtp.data(message())
            finally:
                served.execute("ALTER TABLE deliveries_away RENAME TO deliveries")
            # The same session, the same message, once the store is back.
            smtp.rset()
            smtp.mail("carol@sender.test")
            smtp.rcpt("alice@example.test")
            return failed, queued_id(smtp.data(message())), len(server.queued)

    failed, queue_id, notified = serve(store_url, client)
    assert failed == (451, b"4.3.0 Temporary failure, please try again later")
    assert [m["queue_id"] for m in stored(served)] == [queue_id]  # nothing half-written
    assert notified == 1


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
def test_store_connection_lost_gives_451_then_recovers(served: Database, store_url: str) -> None:
    def client(server: Server) -> tuple[tuple[int, bytes], str]:
        with connect(server) as smtp:
            smtp.ehlo()
            smtp.mail("carol@sender.test")
            smtp.rcpt("alice@example.test")
            # The server drops the store thread's connection (a restart, a failover).
            served.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            failed = smtp.data(message())
            smtp.rset()
            smtp.mail("carol@sender.test")
            smtp.rcpt("alice@example.test")
            return failed, queued_id(smtp.data(message()))

    failed, queue_id = serve(store_url, client)
    assert failed[0] == 451
    assert [m["queue_id"] for m in stored(served)] == [queue_id]


# -- hostile input --------------------------------------------------------------


def test_smtp_smuggling_bare_line_endings_do_not_end_data(served: Database, store_url: str) -> None:
    smuggled = (
        b"MAIL FROM:<admin@bank.test>\r\nRCPT TO:<team@example.test>\r\nDATA\r\n"
        b"Subject: smuggled\r\n\r\nsmuggled body\r\n"
    )
    payload = (
        message()
        + b"part 1\n.\n"
        + smuggled
        + b"part 2\r.\r"
        + smuggled
        + b"part 3\n.\r\n"
        + smuggled
        + b"part 4\r\n.\n"
        + smuggled
        + b"the end\r\n.\r\n"
    )

    async def session(raw: Raw) -> list[str]:
        await raw.command(b"EHLO client.test")
        await raw.command(b"MAIL FROM:<carol@sender.test>")
        await raw.command(b"RCPT TO:<alice@example.test>")
        await raw.command(b"DATA")
        await raw.send(payload)
        replies = await raw.reply()
        replies += await raw.command(b"QUIT")  # the next reply is QUIT's: nothing in between
        return replies

    replies = raw_session(store_url, session)
    assert replies[0].startswith("250 2.0.0 Ok: queued as ")
    assert replies[1:] == ["221 2.0.0 Bye"]
    [msg] = stored(served)
    assert [d["recipient"] for d in msg["deliveries"]] == ["alice@dest.test"]
    data = msg["data"]
    assert msg["sender"] == "carol@sender.test"
    assert data.count(b"smuggled body") == 4
    assert data.endswith(b"the end\r\n")
    # Stored as it will be sent and signed: every line ends in CRLF.
    assert re.search(rb"\r(?!\n)|(?<!\r)\n", data) is None
    assert b"part 1\r\n.\r\nMAIL FROM:<admin@bank.test>\r\n" in data
    assert b"part 2\r\n.\r\nMAIL FROM:<admin@bank.test>\r\n" in data
    # After "part 4\r\n" the client wrote the line ".\nMAIL FROM:…\r\n": its
    # leading dot goes (RFC 5321 §4.5.2 transparency), its bare LF becomes CRLF.
    assert b"part 4\r\n\r\nMAIL FROM:<admin@bank.test>\r\n" in data


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        (b"a\r\nb\r\n", b"a\r\nb\r\n"),
        (b"a\nb\n", b"a\r\nb\r\n"),
        (b"a\rb\r\n", b"a\r\nb\r\n"),
        (b"a\r\r\nb\n\r\n", b"a\r\n\r\nb\r\n\r\n"),
        (b"\n.\n", b"\r\n.\r\n"),
        (b"", b""),
    ],
)
def test_crlf_line_endings(sent: bytes, kept: bytes) -> None:
    assert crlf_line_endings(sent) == kept


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\x00\x00",
        b"MAIL\x00FROM:<carol@sender.test>",
        b"\xff\xfe\xfd",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello
        b"GET / HTTP/1.1",
        b"X" * 10_000,
        b"MAIL FROM:<" + b"a" * 10_000 + b"@sender.test>",
        b"RCPT TO:<" + b"a" * 2_000 + b"@example.test>",
    ],
)
def test_garbage_gets_5xx_and_the_server_keeps_serving(
    served: Database, store_url: str, garbage: bytes
) -> None:
    async def session(raw: Raw) -> list[str]:
        await raw.command(b"EHLO client.test")
        await raw.command(b"MAIL FROM:<carol@sender.test>")
        replies = await raw.command(garbage)
        replies += await raw.command(b"NOOP")
        replies += await raw.command(b"RSET")
        replies += await raw.command(b"MAIL FROM:<carol@sender.test>")
        replies += await raw.command(b"RCPT TO:<alice@example.test>")
        replies += await raw.command(b"DATA")
        replies += await raw.command(message() + b".")
        return replies

    replies = raw_session(store_url, session)
    assert len(replies) == 7, replies
    assert re.match(r"5\d\d 5\.\d\.\d+ ", replies[0]), replies[0]
    assert all(c.isprintable() for c in replies[0]), replies[0]
    assert len(replies[0]) < 600
    assert [r[:3] for r in replies[1:]] == ["250", "250", "250", "250", "354", "250"]
    assert len(stored(served)) == 1


def test_other_sessions_are_unaffected_by_a_hostile_one(served: Database, store_url: str) -> None:
    async def scenario() -> None:
        async with smtp_server(store_url) as server:
            hostile, _ = await Raw.open(server)
            await hostile.send(b"EHLO x\r\nMAIL FROM:<a@b.test>\r\nDATA\r\n")
            await hostile.send(b"\x00" * 5000)  # and it never finishes
            polite, _ = await Raw.open(server)
            assert (await polite.command(b"EHLO client.test"))[0].startswith("250-")
            assert (await polite.command(b"NOOP")) == ["250 2.0.0 OK"]
            await polite.close()
            await hostile.close()

    asyncio.run(scenario())


# -- STARTTLS -------------------------------------------------------------------


def _server_tls(tmp_path: Path) -> ssl.SSLContext:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOSTNAME)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(HOSTNAME)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context


def test_starttls_and_the_received_header_says_so(
    served: Database, store_url: str, tmp_path: Path
) -> None:
    client_tls = ssl.create_default_context()
    client_tls.check_hostname = False
    client_tls.verify_mode = ssl.CERT_NONE

    def client(server: Server) -> tuple[dict[str, str], tuple[int, bytes], dict[str, str]]:
        with connect(server) as smtp:
            smtp.ehlo()
            before = dict(smtp.esmtp_features)
            reply = smtp.starttls(context=client_tls)
            smtp.ehlo()
            after = dict(smtp.esmtp_features)
            smtp.sendmail("carol@sender.test", ["alice@example.test"], message())
        return before, reply, after

    before, reply, after = serve(store_url, client, tls=_server_tls(tmp_path))
    assert "starttls" in before
    assert reply == (220, b"2.0.0 Ready to start TLS")
    assert "starttls" not in after
    assert "auth" not in after  # no logins after TLS either
    [msg] = stored(served)
    header = msg["data"].split(b"\r\nFrom:")[0]
    assert re.search(
        rb"\tby mx\.forwarder\.test \(smtpy\) with ESMTPS \(version=TLSv1\.[23] cipher=[A-Z0-9_-]+\) id ",
        header,
    ), header


# -- MAIL FROM / RCPT TO paths ------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[SmtpServer]:
    """A server object, for its address parsing only (on a loop of its own, closed after)."""
    loop = asyncio.new_event_loop()
    try:
        yield SmtpServer(Handler.__new__(Handler), hostname=HOSTNAME, loop=loop)
    finally:
        loop.close()


_PATH_PIECES = st.sampled_from(
    [
        "<",
        ">",
        "@",
        ".",
        "a",
        "Z",
        "9",
        "-",
        "+",
        "=",
        "_",
        "'",
        '"',
        "\\",
        " ",
        "[",
        "]",
        ":",
        ",",
        "(",
        ")",
        "é",
        "example",
        "test",
        " SIZE=100",
        "\t",
    ]
)


@given(st.lists(_PATH_PIECES, max_size=14).map("".join))
@example("<a.b+c@example.test> SIZE=100")
@example("<a..b@example.test>")
@example("<.a@example.test>")
@example("<a@-example.test>")
@example("<aaaaaaaaa@example.test>")  # over the limit of 8 set below
@example("<a@example.test.>")
@example("<a@example.test> (comment) SIZE=1")
@settings(max_examples=500, deadline=None)
def test_fast_address_parsing_agrees_with_aiosmtpd(server: SmtpServer, arg: str) -> None:
    """The fast path for plain `<local@domain>` gives what aiosmtpd's parser gives."""
    server.local_part_limit = 8

    def parsed(parse: Callable[[str], object]) -> object:
        try:
            return parse(arg)
        except Exception as exc:  # aiosmtpd's parser fails on some inputs: the same way
            return type(exc)

    assert parsed(server._getaddr) == parsed(lambda a: SMTP._getaddr(server, a))


def test_plain_paths_take_the_fast_path(server: SmtpServer) -> None:
    server.local_part_limit = 64
    assert server._getaddr("<bob.smith+tag@mail.example-1.test>  SIZE=10") == (
        "bob.smith+tag@mail.example-1.test",
        "SIZE=10",
    )
    assert server._getaddr("<" + "x" * 65 + "@example.test>") == (None, None)  # RFC 5321 limit
