"""Tests of smtpy.outbound.smtp_target against real SMTP servers and a real DNS server on loopback.

Destination "MX hosts" are aiosmtpd servers (or tiny raw asyncio servers for
misbehaving peers) bound on their own loopback addresses (127.0.0.2,
127.0.0.3, ...) and sharing one port, since an SmtpTarget uses one port for every
MX. DNS answers come from tests/dnsserver.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import errno
import ipaddress
import ssl
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dnsserver import DNSServer
from smtpy.dns import Lookups, make_resolver
from smtpy.outbound.mx import Route
from smtpy.outbound.smtp_target import SmtpTarget
from smtpy.outbound.target import Outcome
from smtpy.outbound.tls_policy import TlsPolicies

T = TypeVar("T")

HOSTNAME = "forwarder.test"
SENDER = "SRS0=abcd=XY=sender.test=alice@forwarder.test"
MESSAGE = (
    b"From: Alice <alice@sender.test>\r\n"
    b"To: bob@example.test\r\n"
    b"Subject: hello\r\n"
    b"Message-ID: <1@sender.test>\r\n"
    b"\r\n"
    b"Hello Bob.\r\n"
    b".A line that starts with a dot.\r\n"
)
MESSAGE_8BIT = MESSAGE.replace(b"Hello Bob.", "Grüße, Bob.".encode())

ProtocolFactory = Callable[[], asyncio.BaseProtocol]


def run(coro: Coroutine[Any, Any, T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, 30)

    return asyncio.run(bounded())


# -- peers ---------------------------------------------------------------------


@dataclass
class Received:
    """One message an MX host accepted, and how the session looked."""

    host: str
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    mail_options: list[str]
    helo: str | None
    tls: bool
    authenticated: bool


@dataclass
class Sink:
    """An aiosmtpd handler that records messages; replies can be scripted."""

    rcpt_replies: dict[str, str] = field(default_factory=dict)
    data_reply: str = "250 2.0.0 Ok: queued as 42"
    data_gate: asyncio.Event | None = None
    received: list[Received] = field(default_factory=list)
    sessions: int = 0
    in_data: int = 0
    data_entered: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        self.sessions += 1
        return responses

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        reply = self.rcpt_replies.get(address)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.in_data += 1
        self.data_entered.set()
        try:
            if self.data_gate is not None:
                await self.data_gate.wait()
        finally:
            self.in_data -= 1
        assert isinstance(envelope.content, bytes)
        assert envelope.mail_from is not None
        self.received.append(
            Received(
                host=server.hostname,
                mail_from=envelope.mail_from,
                rcpt_tos=list(envelope.rcpt_tos),
                data=envelope.content,
                mail_options=list(envelope.mail_options),
                helo=session.host_name,
                tls=session.ssl is not None
                or (
                    server.transport is not None
                    and server.transport.get_extra_info("ssl_object") is not None
                ),
                authenticated=bool(session.authenticated),
            )
        )
        return self.data_reply


def smtp_server(handler: Sink, name: str, **kwargs: Any) -> ProtocolFactory:
    return lambda: SMTP(handler, hostname=name, **kwargs)


class Greeter(asyncio.Protocol):
    """A peer that greets with a fixed line and hangs up (e.g. 421 busy)."""

    def __init__(self, line: bytes) -> None:
        self.line = line

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(self.line)
        transport.close()


class Silent(asyncio.Protocol):
    """A peer that accepts the connection and never says a word."""


class BrokenTLS(SMTP):
    """Offers STARTTLS, says 220, then answers the handshake with garbage."""

    async def smtp_STARTTLS(self, arg: str) -> None:
        await self.push("220 2.0.0 Ready to start TLS")
        assert isinstance(self.transport, asyncio.Transport)
        self.transport.write(b"this is not TLS\r\n")
        self.transport.close()


class HeloOnly(SMTP):
    """An old server that knows HELO but not EHLO."""

    async def smtp_EHLO(self, arg: str) -> None:
        await self.push("500 5.5.1 Error: command not recognized")


@contextlib.asynccontextmanager
async def serving(
    servers: dict[str, ProtocolFactory], *, port: int = 0, tls: ssl.SSLContext | None = None
) -> AsyncIterator[int]:
    """Bind every server on its loopback address, all on one free port; yield it.

    With `port`, bind that one (skip the test if that is not allowed); with
    `tls`, the servers speak implicit TLS.
    """
    loop = asyncio.get_running_loop()
    started: list[asyncio.Server] = []
    fixed = port
    for _attempt in range(50):
        port = fixed
        try:
            for host, factory in servers.items():
                try:
                    server = await loop.create_server(factory, host, port, ssl=tls)
                except PermissionError:
                    pytest.skip(f"may not bind port {port}")
                started.append(server)
                port = server.sockets[0].getsockname()[1]
            break
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            if fixed:
                pytest.skip(f"port {fixed} is in use")
            for server in started:
                server.close()
            started.clear()
    else:
        raise OSError(errno.EADDRINUSE, "no common free port")
    try:
        yield port
    finally:
        for server in started:
            server.close()
        for server in started:
            await server.wait_closed()


# -- fixtures ------------------------------------------------------------------


@pytest.fixture
def dns_server() -> Iterator[DNSServer]:
    with DNSServer() as server:
        yield server


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for the test MX hosts and relay: (cert, key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay.example.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("relay.example.test"),
                    x509.DNSName("mx1.example.test"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.2")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_path = folder / "cert.pem"
    key_path = folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def server_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    return context


def deliverer(dns_server: DNSServer, port: int, **kwargs: Any) -> SmtpTarget:
    lookups = Lookups(make_resolver([("127.0.0.1", dns_server.port)], timeout=2.0))
    options: dict[str, Any] = {"connect_timeout": 2.0, "command_timeout": 5.0}
    options.update(kwargs)
    return SmtpTarget(hostname=HOSTNAME, lookups=lookups, port=port, **options)


def two_mx(dns_server: DNSServer, domain: str = "example.test") -> None:
    dns_server.add(domain, "MX", "10 mx1.example.test.")
    dns_server.add(domain, "MX", "20 mx2.example.test.")
    dns_server.add("mx1.example.test", "A", "127.0.0.2")
    dns_server.add("mx2.example.test", "A", "127.0.0.3")


def by_recipient(outcomes: list[Outcome]) -> dict[str, Outcome]:
    return {o.recipient: o for o in outcomes}


# -- direct MX delivery ----------------------------------------------------------


def test_many_recipients_share_one_transaction(dns_server: DNSServer) -> None:
    two_mx(dns_server)
    sink = Sink()
    recipients = ["bob@example.test", "carol@example.test", "dave@Example.TEST"]

    async def scenario() -> list[Outcome]:
        async with serving({"127.0.0.2": smtp_server(sink, "mx1.example.test")}) as port:
            return await deliverer(dns_server, port).deliver(
                sender=SENDER, recipients=recipients, message=MESSAGE
            )

    outcomes = run(scenario())
    assert [o.recipient for o in outcomes] == recipients
    for outcome in outcomes:
        assert outcome.status == "delivered"
        assert outcome.code == 250
        assert outcome.reply == "2.0.0 Ok: queued as 42"
        assert outcome.remote_host == "mx1.example.test[127.0.0.2]"
        assert outcome.enhanced == "2.0.0"
    assert sink.sessions == 1
    [received] = sink.received
    assert received.rcpt_tos == recipients
    assert received.mail_from == SENDER
    assert received.helo == HOSTNAME
    assert received.data.rstrip(b"\r\n") == MESSAGE.rstrip(b"\r\n")  # dot-stuffing undone
    assert "BODY=8BITMIME" not in received.mail_options
    assert "SMTPUTF8" not in received.mail_options
    assert any(option.startswith("SIZE=") for option in received.mail_options)


def test_null_sender_and_8bit_body(dns_server: DNSServer) -> None:
    two_mx(dns_server)
    sink = Sink()

    async def scenario() -> list[Outcome]:
        async with serving({"127.0.0.2": smtp_server(sink, "mx1.example.test")}) as port:
            return await deliverer(dns_server, port).deliver(
                sender="", recipients=["bob@example.test"], message=MESSAGE_8BIT
            )

    [outcome] = run(scenario())
    assert outcome.status == "delivered"
    [received] = sink.received
    assert received.mail_from == "<>"
    assert "BODY=8BITMIME" in received.mail_options
    assert "Grüße".encode() in received.data


def test_first_mx_down_second_used(dns_server: DNSServer) -> None:
    two_mx(dns_server)
    sink = Sink()

    async def scenario() -> list[Outcome]:
        async with serving({"127.0.0.3": smtp_server(sink, "mx2.example.test")}) as port:
            return await deliverer(dns_server, port).deliver(
                sender=SENDER, recipients=["bob@example.test"], message=MESSAGE
            )

    [outcome] = run(scenario())
    assert outcome.status == "delivered"
    assert outcome.remote_host == "mx2.example.test[127.0.0.3]"
    assert len(sink.received) == 1


def test_mx_host_with_several_addresses(dns_server: DNSServer) -> None:
    dns_server.add("example.test", "MX", "10 mx1.example.test.")
    dns_server.add("mx1.example.test", "A", "127.0.0.2")
    dns_server.add("mx1.example.test", "A", "127.0.0.3")
    sink = Sink()

    async def scenario() -> list[Outcome]:
        async with serving({"127.0.0.3": smtp_server(sink, "mx1.example.test")}) as port:
            return await deliverer(dns_server, port).deliver(
                sender=SENDER, recipients=["bob@example.test"], message=MESSAGE
            )

    [outcome] = run(scenario())
    assert outcome.status == "delivered"
    assert outcome.remote_host == "mx1.example.test[127.0.0.3]"


def test_421_greeting_and_silent_host_are_skipped(dns_server: DNSServer) -> None:
    dns_server.add("example.test", "MX", "10 mx1.example.test.")
    dns_server.add("example.test", "MX", "20 mx2.example.test.")
    dns_server.add("example.test", "MX", "30 mx3.example.test.")
    dns_server.add("mx1.example.test", "A", "127.0.0.2")
    dns_server.add("mx2.example.test", "A", "127.0.0.3")
    dns_server.add("mx3.example.test", "A", "127.0.0.4")
    sink = Sink()
    servers: dict[str, ProtocolFactory] = {
        "127.0.0.2": lambda: Greeter(b"421 4.3.2 mx1.example.test busy, try later\r\n"),
        "127.0.0.3": Silent,
        "127.0.0.4": smtp_server(sink, "mx3.example.test"),
    }

    async def scenario() -> list[Outcome]:
        async with serving(servers) as port:
            return await deliverer(dns_server, port, connect_timeout=0.5).deliver(
                sender=SENDER, recipients=["bob@example.test"], message=MESSAGE
            )

    [outcome] = run(scenario())
    assert outcome.status == "delivered"
    assert outcome.remote_host == "mx3.example.test[127.0.0.4]"


def test_helo_fallback(dns_server: DNSServer) -> None:
    two_mx(dns_server)
    sink = Sink()

    def factory() -> asyncio.BaseProtocol:
        return HeloOnly(sink, hostname="mx1.example.test")

    async def scenario() -> list[Outcome]:
        async with serving({"127.0.0.2": factory}) as port:
            return await deliverer(dns_server, port).deliver(
                sender=SENDER, recipients=["bob@example.test"], message=MESSAGE_8BIT
            )

    [outcome] = run(scenario())
    assert outcome.status == "delivered"
    [received] = sink.received
    assert received.mail_options == []  # no ESMTP parameters without EHLO
    assert "Grüße".encode() in received.data


def test_unexpected_error_defers(dns_server: DNSServer) -> None:
    two_mx(dns_server)
    sink = Sink()

    async def scenario() -> list[Outcome]:
        async with serving({"127.0.0.2": smtp_server(sink, "mx1.example.test")}) as port:
            lookups = Lookups(make_resolver([("127.0.0.1", dns_server.port)], timeout=2.0))
            # A hostname aiosmtplib refuses to send: a local bug, not the remote's doing.
            d = SmtpTarget(hostname="bad host", lookups=lookups, port=port)
            return await d.deliver(sender=SENDER, recipients=["bob@example.test"], message=MESSAGE)

    [outcome] = run(scenario())
    assert (outcome.status, outcome.code, outcome.enhanced) == ("deferred", None, "4.3.0")
    assert outcome.reply.startswith("internal error: ValueError")
    assert sink.received == []


def test_per_recipient_replies(dns_server: DNSServer) -> None:
    two_mx(dns_server)
    sink = Sink(
        rcpt_replies={
            "gone@example.test": "550 5.1.1 <gone@example.test>: user unknown",
            "grey@example.test": "451 4.7.1 greylisted, come back later",
            "old@example.test": "553 mailbox name not allowed",
        }
    )
    recipients = ["bob@example.test", "gone@example.test", "grey@example.test", "old@example.test"]

    async def scenario() -> list[Outcome]:
        async with serving({"127.0.0.2": smtp_server(sink, "mx1.example.test")}) as port:
            return await deliverer(dns_server, port).deliver(
                sender=SENDER, recipients=recipients, message=MESSAGE
            )

    outcomes = run(scenario())
    assert [o.recipient for o in outcomes] == recipients
    got = by_recipient(outcomes)
    assert got["bob@example.test"].status == "delivered"
    gone = got["gone@example.test"]
    assert (gone.status, gone.code, gone.enhanced) == ("failed", 550, "5.1.1")
    assert gone.reply == "5.1.1 <gone@example.test>: user unknown"
    assert gone.remote_host == "mx1.example.test[127.0.0.2]"
    grey = got["grey@example.test"]
    assert (grey.status, grey.code, grey.enhanced) == ("deferred", 451, "4.7.1")
    old = got["old@example.test"]
    assert (old.status, old.code, old.enhanced) == ("failed", 553, "5.0.0")
    [received] = sink.received
    assert received.rcpt_tos == ["bob@example.test"]


def test_every_recipient_refused_sends_no_data(dns_server: DNSServer) -> None:
    two_mx(dns_server)
    sink = Sink(rcpt_replies={"gone@example.test": "550 5.1.1 user unknown"})

    async def scenario() -> list[Outcome]:
        async with serving({"127.0.0.2": smtp_server(sink, "mx1.example.test")}) as port:
            return await deliverer(dns_server, port).deliver(
                sender=SENDER, recipients=["gone@example.test"], message=MESSAGE
            )

    [outcome] = run(scenario())
    assert (outcome.status, outcome.code) == ("failed", 550)
    assert sink.received == []


@pytest.mark.parametrize(
    ("reply", "status", "code", "enhanced"),
    [
        ("451 4.3.0 try again later", "deferred", 451, "4.3.0"),
        ("554 5.7.1 message refused as spam", "failed", 554, "5.7.1"),
    ],
)
def test_data_reply_applies_to_accepted_recipients(
    dns_server: DNSServer, reply: str, status: str, code: int, enhanced: str
) -> None:
    two_mx(dns_server)
    sink = Sink(
        rcpt_replies={"gone@example.test": "550 5.1.1 user unknown"},
        data_reply=reply,
    )
    recipients = ["bob@example.test", "carol@example.test", "gone@example.test"]

    async def scenario() -> list[Outcome]:
        async with serving({"127.0.0.2": smtp_server(sink, "mx1.example.test")}) as port:
            return await deliverer(dns_server, port).deliver(
                sender=SENDER, recipients=recipients, message=MESSAGE
            )

    got = by_recipient(run(scenario()))
    for address in ("bob@example.test", "carol@example.test"):
        assert (got[address].status, got[address].code) == (status, code)
        assert got[address].enhanced == enhanced
        assert got[address].reply == reply[4:]
    assert got["gone@example.test"].status == "failed"


def test_all_hosts_down_defers(dns_server: DNSServer) -> None:
    two_mx(dns_server)
    placeholder = Sink()  # holds the port on an address that is not an MX

    async def scenario() -> list[Outcome]:
        async with serving({"127.0.0.9": smtp_server(placeholder, "other.test")}) as port:
            return await deliverer(dns_server, port).deliver(
                sender=SENDER,
                recipients=["bob@example.test", "carol@example.test"],
                message=MESSAGE,
            )

    outcomes = run(scenario())
    assert len(outcomes) == 2
    for outcome in outcomes:
        assert outcome.status == "deferred"
        assert outcome.code is None
        assert outcome.enhanced == "4.4.1"
        # the last host tried is the one reported
        assert outcome.remote_host == "mx2.example.test[127.0.0.3]"
        assert outcome.reply.startswith("connection refused by mx2.example.test[127.0.0.3]")
    assert placeholder.received == []


def test_null_mx_fails(dns_server: DNSServer) -> None:
    dns_server.add("example.test", "MX", "0 .")
    [outcome] = run(
        deliverer(dns_server, 25).deliver(
            sender=SENDER, recipients=["bob@example.test"], message=MESSAGE
        )
    )
    assert (outcome.status, outcome.code, outcome.enhanced) == ("failed", None, "5.1.10")
    assert "null MX" in outcome.reply
    assert outcome.remote_host is None


def test_nxdomain_fails(dns_server: DNSServer) -> None:
    dns_server.add("other.test", "A", "127.0.0.2")
    [outcome] = run(
        deliverer(dns_server, 25).deliver(
            sender=SENDER, recipients=["bob@nowhere.test"], message=MESSAGE
        )
    )
    assert (outcome.status, outcome.code, outcome.enhanced) == ("failed", None, "5.1.2")
    assert outcome.reply == "domain nowhere.test does not exist"


def test_servfail_defers(dns_server: DNSServer) -> None:
    dns_server.fail("example.test", "SERVFAIL")
    [outcome] = run(
        deliverer(dns_server, 25).deliver(
            sender=SENDER, recipients=["bob@example.test"], message=MESSAGE
        )
    )
    assert (outcome.status, outcome.code, outcome.enhanced) == ("deferred", None, "4.4.3")
    assert outcome.reply.startswith("temporary DNS failure")


def test_mx_host_servfail_defers_with_dns_status(dns_server: DNSServer) -> None:
    dns_server.add("example.test", "MX", "10 mx1.example.test.")
    dns_server.fail("mx1.example.test", "SERVFAIL")
    [outcome] = run(
        deliverer(dns_server, 25).deliver(
            sender=SENDER, recipients=["bob@example.test"], message=MESSAGE
        )
    )
    assert (outcome.status, outcome.enhanced) == ("deferred", "4.4.3")


def test_implicit_mx(dns_server: DNSServer) -> None:
    dns_server.add("example.test", "A", "127.0.0.2")
    sink = Sink()

    async def scenario() -> list[Outcome]:
        async with serving({"127.0.0.2": smtp_server(sink, "example.test")}) as port:
            return await deliverer(dns_server, port).deliver(
                sender=SENDER, recipients=["bob@example.test"], message=MESSAGE
            )

    [outcome] = run(scenario())
    assert outcome.status == "delivered"
    assert outcome.remote_host == "example.test[127.0.0.2]"


def test_mx_pointing_at_ourselves_loops(dns_server: DNSServer) -> None:
    dns_server.add("example.test", "MX", f"10 {HOSTNAME}.")
    dns_server.add("example.test", "MX", "20 mx2.example.test.")
    [outcome] = run(
        deliverer(dns_server, 25).deliver(
            sender=SENDER, recipients=["bob@example.test"], message=MESSAGE
        )
    )
    assert (outcome.status, outcome.enhanced) == ("failed", "5.4.6")


def test_route(dns_server: DNSServer) -> None:
    two_mx(dns_server)
    d = deliverer(dns_server, 2525)
    assert run(d.route("example.test")) == Route(
        [("mx1.example.test", 2525), ("mx2.example.test", 2525)]
    )
    assert run(d.route("[127.0.0.2]")) == Route([("127.0.0.2", 2525)])
    assert run(d.route("[IPv6:::1]")) == Route([("::1", 2525)])


def test_domain_literal(dns_server: DNSServer) -> None:
    sink = Sink()

    async def scenario() -> list[Outcome]:
        async with serving({"127.0.0.2": smtp_server(sink, "mx1.example.test")}) as port:
            return await deliverer(dns_server, port).deliver(
                sender=SENDER, recipients=["bob@[127.0.0.2]"], message=MESSAGE
            )

    [outcome] = run(scenario())
    assert outcome.status == "delivered"
    assert outcome.remote_host == "127.0.0.2[127.0.0.2]"
    assert dns_server.queries == []


def test_recipients_of_several_domains_are_a_bug(dns_server: DNSServer) -> None:
    with pytest.raises(ValueError, match="several domains"):
        run(
            deliverer(dns_server, 25).deliver(
                sender=SENDER, recipients=["a@one.test", "b@two.test"], message=MESSAGE
            )
        )
    assert run(deliverer(dns_server, 25).deliver(sender=SENDER, recipients=[], message=b"")) == []


# -- TLS -------------------------------------------------------------------------


def test_starttls_used_when_offered(dns_server: DNSServer, certificate: tuple[Path, Path]) -> None:
    two_mx(dns_server)
    sink = Sink()
    factory = smtp_server(sink, "mx1.example.test", tls_context=server_tls(certificate))

    async def scenario() -> list[Outcome]:
        async with serving({"127.0.0.2": factory}) as port:
            return await deliverer(dns_server, port).deliver(
                sender=SENDER, recipients=["bob@example.test"], message=MESSAGE
            )

    [outcome] = run(scenario())
    assert outcome.status == "delivered"
    [received] = sink.received
    assert received.tls
    assert sink.sessions == 2  # EHLO again after STARTTLS


def test_failed_tls_handshake_is_retried_in_clear(
    dns_server: DNSServer, certificate: tuple[Path, Path]
) -> None:
    two_mx(dns_server)
    sink = Sink()
    context = server_tls(certificate)

    def factory() -> asyncio.BaseProtocol:
        return BrokenTLS(sink, hostname="mx1.example.test", tls_context=context)

    async def scenario() -> list[Outcome]:
        async with serving({"127.0.0.2": factory}) as port:
            return await deliverer(dns_server, port).deliver(
                sender=SENDER, recipients=["bob@example.test"], message=MESSAGE
            )

    [outcome] = run(scenario())
    assert outcome.status == "delivered"
    assert outcome.remote_host == "mx1.example.test[127.0.0.2]"
    [received] = sink.received
    assert not received.tls
    assert sink.sessions == 2  # the broken TLS session, then the clear one


# -- relay -----------------------------------------------------------------------


def authenticator(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and auth_data == (b"smtpy", b"s3cret")
    # handled=False makes aiosmtpd send the 535 itself; its default (True) sends nothing.
    return AuthResult(success=ok, handled=False)


def test_relay_with_auth(dns_server: DNSServer) -> None:
    sink = Sink()
    factory = smtp_server(
        sink, "relay.example.test", authenticator=authenticator, auth_require_tls=False
    )

    async def scenario(password: str) -> list[Outcome]:
        async with serving({"127.0.0.5": factory}) as port:
            d = deliverer(
                dns_server,
                25,
                relay=("127.0.0.5", port),
                relay_username="smtpy",
                relay_password=password,
            )
            return await d.deliver(
                sender=SENDER, recipients=["bob@example.test", "eve@example.test"], message=MESSAGE
            )

    outcomes = run(scenario("s3cret"))
    assert [o.status for o in outcomes] == ["delivered", "delivered"]
    assert outcomes[0].remote_host == "127.0.0.5[127.0.0.5]"
    [received] = sink.received
    assert received.authenticated
    assert received.rcpt_tos == ["bob@example.test", "eve@example.test"]
    assert dns_server.queries == []  # no MX lookup in relay mode

    # Wrong credentials are the operator's problem: defer, never bounce.
    outcomes = run(scenario("wrong"))
    for outcome in outcomes:
        assert (outcome.status, outcome.code, outcome.enhanced) == ("deferred", 535, "4.7.8"), (
            outcome
        )
    assert len(sink.received) == 1


def test_relay_tls_verifies_certificate(
    dns_server: DNSServer, certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    cert_path, _key = certificate
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_path))
    dns_server.add("relay.example.test", "A", "127.0.0.5")
    sink = Sink()
    factory = smtp_server(
        sink, "relay.example.test", tls_context=server_tls(certificate), authenticator=authenticator
    )

    async def scenario() -> list[Outcome]:
        async with serving({"127.0.0.5": factory}) as port:
            d = deliverer(
                dns_server,
                25,
                relay=("relay.example.test", port),
                relay_username="smtpy",
                relay_password="s3cret",
                relay_tls=True,
            )
            return await d.deliver(sender=SENDER, recipients=["bob@example.test"], message=MESSAGE)

    [outcome] = run(scenario())
    assert outcome.status == "delivered", outcome
    assert outcome.remote_host == "relay.example.test[127.0.0.5]"
    [received] = sink.received
    assert received.tls and received.authenticated

    # A certificate the system does not trust: deferred, never sent in clear.
    monkeypatch.delenv("SSL_CERT_FILE")
    monkeypatch.setenv("SSL_CERT_DIR", str(cert_path.parent / "nothing-here"))
    [outcome] = run(scenario())
    assert (outcome.status, outcome.code) == ("deferred", None), outcome
    assert "certificate" in outcome.reply.lower(), outcome
    assert len(sink.received) == 1


def test_relay_implicit_tls_on_port_465(
    dns_server: DNSServer, certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    cert_path, _key = certificate
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_path))
    dns_server.add("relay.example.test", "A", "127.0.0.6")
    sink = Sink()
    factory = smtp_server(
        sink, "relay.example.test", authenticator=authenticator, auth_require_tls=False
    )

    async def scenario() -> list[Outcome]:
        async with serving({"127.0.0.6": factory}, port=465, tls=server_tls(certificate)):
            d = deliverer(
                dns_server,
                25,
                relay=("relay.example.test", 465),
                relay_username="smtpy",
                relay_password="s3cret",
                relay_tls=True,
            )
            return await d.deliver(sender=SENDER, recipients=["bob@example.test"], message=MESSAGE)

    [outcome] = run(scenario())
    assert outcome.status == "delivered", outcome
    [received] = sink.received
    assert received.tls and received.authenticated


def test_relay_tls_required_but_not_offered(dns_server: DNSServer) -> None:
    sink = Sink()
    factory = smtp_server(
        sink, "relay.example.test", authenticator=authenticator, auth_require_tls=False
    )

    async def scenario() -> list[Outcome]:
        async with serving({"127.0.0.5": factory}) as port:
            d = deliverer(
                dns_server,
                25,
                relay=("127.0.0.5", port),
                relay_username="smtpy",
                relay_password="s3cret",
                relay_tls=True,
            )
            return await d.deliver(sender=SENDER, recipients=["bob@example.test"], message=MESSAGE)

    [outcome] = run(scenario())
    assert (outcome.status, outcome.enhanced) == ("deferred", "4.7.4")
    assert sink.received == []


# -- SMTPUTF8 ----------------------------------------------------------------------


def test_smtputf8_required_but_unsupported_fails(dns_server: DNSServer) -> None:
    two_mx(dns_server)
    sink = Sink()

    async def scenario() -> list[Outcome]:
        async with serving({"127.0.0.2": smtp_server(sink, "mx1.example.test")}) as port:
            return await deliverer(dns_server, port).deliver(
                sender=SENDER,
                recipients=["bob@example.test", "carol@example.test"],
                message=MESSAGE,
                smtputf8=True,
            )

    outcomes = run(scenario())
    for outcome in outcomes:
        assert (outcome.status, outcome.code, outcome.enhanced) == ("failed", None, "5.6.7")
        assert outcome.remote_host == "mx1.example.test[127.0.0.2]"
        assert "SMTPUTF8" in outcome.reply
    assert sink.received == []


def test_utf8_address_uses_smtputf8(dns_server: DNSServer) -> None:
    two_mx(dns_server)
    sink = Sink()
    factory = smtp_server(sink, "mx1.example.test", enable_SMTPUTF8=True)

    async def scenario() -> list[Outcome]:
        async with serving({"127.0.0.2": factory}) as port:
            return await deliverer(dns_server, port).deliver(
                sender=SENDER, recipients=["jörg@example.test"], message=MESSAGE_8BIT
            )

    [outcome] = run(scenario())
    assert outcome.status == "delivered"
    [received] = sink.received
    assert received.rcpt_tos == ["jörg@example.test"]
    assert "SMTPUTF8" in received.mail_options
    assert "BODY=8BITMIME" in received.mail_options


# -- concurrency -------------------------------------------------------------------


def test_per_domain_limit_does_not_stall_other_domains(dns_server: DNSServer) -> None:
    for domain in ("slow.test", "fast.test"):
        dns_server.add(domain, "MX", "10 mx1.example.test.")
    dns_server.add("mx1.example.test", "A", "127.0.0.2")

    async def scenario() -> None:
        gate = asyncio.Event()
        sink = Sink(data_gate=gate)
        async with serving({"127.0.0.2": smtp_server(sink, "mx1.example.test")}) as port:
            d = deliverer(dns_server, port, per_domain_limit=1)
            slow = [
                asyncio.create_task(
                    d.deliver(sender=SENDER, recipients=[f"{n}@slow.test"], message=MESSAGE)
                )
                for n in ("a", "b")
            ]
            await sink.data_entered.wait()
            await asyncio.sleep(0.2)
            assert sink.sessions == 1  # the second slow.test delivery waits for the slot
            # ... while another domain goes through at once.
            sink.data_gate = None
            fast = await d.deliver(sender=SENDER, recipients=["c@fast.test"], message=MESSAGE)
            assert fast[0].status == "delivered"
            assert [r.rcpt_tos for r in sink.received] == [["c@fast.test"]]
            assert not any(task.done() for task in slow)
            gate.set()
            results = await asyncio.gather(*slow)
            assert [r[0].status for r in results] == ["delivered", "delivered"]
        assert d._limits == {}  # idle domains are forgotten

    run(scenario())


# -- connection reuse -------------------------------------------------------------


async def one_then_another(
    dns_server: DNSServer, sink: Sink, recipient: str, **options: Any
) -> list[Outcome]:
    """Deliver to bob@example.test, then to `recipient` through the same SmtpTarget (and MX)."""
    async with serving({"127.0.0.2": smtp_server(sink, "mx1.example.test")}) as port:
        sender = deliverer(dns_server, port, **options)
        await sender.deliver(sender=SENDER, recipients=["bob@example.test"], message=MESSAGE)
        second = await sender.deliver(sender=SENDER, recipients=[recipient], message=MESSAGE)
        await sender.close()
        return second


class SecondMailRefused(Sink):
    """Answers the second MAIL FROM of a session with 421, as a server closing an idle session."""

    mails: dict[int, int]

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        seen = self.__dict__.setdefault("mails", {})
        seen[id(session)] = seen.get(id(session), 0) + 1
        if seen[id(session)] == 2:
            return "421 4.4.2 mx1.example.test idle too long, closing"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Ok"


def test_next_message_to_the_same_host_reuses_the_connection(dns_server: DNSServer) -> None:
    two_mx(dns_server)
    sink = Sink()

    async def scenario() -> list[list[Outcome]]:
        async with serving({"127.0.0.2": smtp_server(sink, "mx1.example.test")}) as port:
            sender = deliverer(dns_server, port)
            outcomes = []
            for n in range(3):
                message = MESSAGE.replace(b"<1@sender.test>", b"<%d@sender.test>" % n)
                outcomes.append(
                    await sender.deliver(
                        sender=SENDER, recipients=["bob@example.test"], message=message
                    )
                )
            await sender.close()
            return outcomes

    results = run(scenario())
    assert [o.status for [o] in results] == ["delivered"] * 3
    assert sink.sessions == 1  # one EHLO: the second and third message came on the same session
    assert [r.data.count(b"<%d@sender.test>" % n) for n, r in enumerate(sink.received)] == [1] * 3


def test_a_cached_connection_the_server_gave_up_is_replaced(dns_server: DNSServer) -> None:
    two_mx(dns_server)
    sink = SecondMailRefused()

    [outcome] = run(one_then_another(dns_server, sink, "carol@example.test"))
    assert (outcome.status, outcome.code) == ("delivered", 250)
    assert sink.sessions == 2  # the refused session was dropped and a new one opened at once
    assert [r.rcpt_tos for r in sink.received] == [["bob@example.test"], ["carol@example.test"]]


def test_a_clear_text_session_is_not_reused_for_mail_that_requires_tls(
    dns_server: DNSServer,
) -> None:
    two_mx(dns_server)
    dns_server.add("strict.test", "MX", "10 mx1.example.test.")
    sink = Sink()

    lookups = Lookups(make_resolver([("127.0.0.1", dns_server.port)], timeout=2.0))
    policies = TlsPolicies(lookups, required_domains=["strict.test"], mta_sts=False)
    [outcome] = run(one_then_another(dns_server, sink, "bob@strict.test", tls_policies=policies))
    assert (outcome.status, outcome.enhanced) == ("deferred", "4.7.4")
    assert "STARTTLS" in outcome.reply
    assert [r.rcpt_tos for r in sink.received] == [["bob@example.test"]]
