"""End-to-end: every line `smtpy serve` writes to stderr is one JSON object, whatever happens.

Two serving processes forward a bounded load while, among the destinations,
one MX refuses a recipient with 550, one is unreachable and one offers
STARTTLS with a certificate no TLS client accepts (so delivery falls back to
clear text, as opportunistic TLS does), and a client sends control characters
and garbage commands. The daemon's stderr must stay one JSON object per line
with its event, level and timestamp; the standard library's lines (the
delivery code's, aiosmtpd's) among them; never the client's raw bytes.
"""

from __future__ import annotations

import datetime
import json
import smtplib
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa
from cryptography.x509.oid import NameOID

from conftest import Cli
from dnsserver import DNSServer
from mailpeers import (
    DOMAIN,
    SENDER,
    SENDER_MX,
    Forwarder,
    forwarding_world,
    make_message,
    smtp_client,
)
from waiting import wait_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.parametrize("store_url", ["sqlite"], indirect=True),
]

MESSAGES = 200
TLS_HOST, TLS_ADDRESS = "mx.tls.test", "127.0.0.5"
GONE_HOST, GONE_ADDRESS = "mx.unreachable.test", "127.0.0.6"  # nothing listens there
REFUSED = "nobody@dest1.test"
# What the rude client sends, line by line: control characters, terminal escapes, garbage.
RUDE_LINES = [
    b"EHLO evil\x1b[2J\x1b]0;pwned\x07.test",
    b"XYZZY \x00\x01\x7f\x1b[31mred",
    b"MAIL FROM:<x\x1b[2J@sender.test>",
    b"NOOP \xff\xfe\xc3\x28 not utf-8",
    b"RCPT TO:<a\rforged: line@example.test>",
    b"\x1b[A\x1b[A\x08\x08\x08",
    b"QUIT",
]
MARKERS = [b"\x1b", b"\x00", b"\x07", b"\x7f", b"\x08", b"\r", b"\xff"]


class Recorder:
    """aiosmtpd handler: the messages an MX took."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self._lock = threading.Lock()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.content
        assert isinstance(content, bytes)
        with self._lock:
            self.received.append(content)
        return "250 2.0.0 Ok"

    def count(self) -> int:
        with self._lock:
            return len(self.received)


def dsa_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate on a DSA key: TLS clients share no cipher with it, the handshake fails."""
    key = dsa.generate_private_key(2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, TLS_HOST)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "dsa-cert.pem", folder / "dsa-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def forwarder(
    cli: Cli, cli_env: dict[str, str], dns_server: DNSServer, tmp_path: Path
) -> Iterator[Forwarder]:
    with forwarding_world(cli, cli_env, dns_server, tmp_path) as world:
        yield world


@pytest.fixture
def tls_mx(forwarder: Forwarder, dns_server: DNSServer, tmp_path: Path) -> Iterator[Recorder]:
    """An MX for tls.test offering STARTTLS with a certificate no client accepts."""
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*dsa_certificate(tmp_path))
    recorder = Recorder()
    controller = Controller(
        recorder,
        hostname=TLS_ADDRESS,
        port=forwarder.peers.port,  # smtpy delivers to one port on every MX
        server_hostname=TLS_HOST,
        tls_context=context,
        require_starttls=False,
    )
    controller.start()
    dns_server.add("tls.test", "MX", f"10 {TLS_HOST}.")
    dns_server.add(TLS_HOST, "A", TLS_ADDRESS)
    dns_server.add("unreachable.test", "MX", f"10 {GONE_HOST}.")
    dns_server.add(GONE_HOST, "A", GONE_ADDRESS)
    try:
        yield recorder
    finally:
        controller.stop()


def send_one(port: int, recipient: str, message_id: str) -> None:
    data = make_message(message_id=message_id, to=recipient)
    for _attempt in range(20):
        try:
            with smtp_client(port, timeout=20) as client:
                client.sendmail(SENDER, [recipient], data)
            return
        except (OSError, smtplib.SMTPServerDisconnected, smtplib.SMTPResponseException):
            time.sleep(0.1)
    raise AssertionError(f"{message_id} was never accepted")


def rude_client(port: int) -> list[bytes]:
    """Send RUDE_LINES one at a time; the daemon's replies."""
    replies = []
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        stream = sock.makefile("rb")
        replies.append(stream.readline())
        for line in RUDE_LINES:
            sock.sendall(line + b"\r\n")
            while True:  # a multi-line reply ends with "NNN " (EHLO's)
                reply = stream.readline()
                replies.append(reply)
                if not reply or reply[3:4] != b"-":
                    break
            if not reply:
                break
    return replies


def test_stderr_is_json_lines_under_load_failures_and_a_rude_client(
    forwarder: Forwarder, tls_mx: Recorder
) -> None:
    forwarder.alias(f"team@{DOMAIN}", "bob@dest1.test", "carol@dest2.test")
    forwarder.alias(f"secure@{DOMAIN}", "dan@tls.test")
    forwarder.alias(f"refused@{DOMAIN}", REFUSED)
    forwarder.alias(f"gone@{DOMAIN}", "erin@unreachable.test")
    forwarder.peers.script(REFUSED, "550 5.1.1 No such user here", repeat=True)
    daemon = forwarder.start(processes="2", retry_schedule="3600")

    token = uuid.uuid4().hex[:8]
    special = {7: f"secure@{DOMAIN}", 8: f"refused@{DOMAIN}", 9: f"gone@{DOMAIN}"}
    plan = [
        (special.get(n % 20, f"team@{DOMAIN}"), f"<load-{n}-{token}@sender.test>")
        for n in range(MESSAGES)
    ]
    with ThreadPoolExecutor(8) as pool:
        rude = pool.submit(rude_client, daemon.port)
        for result in [pool.submit(send_one, daemon.port, to, mid) for to, mid in plan]:
            result.result()
        replies = rude.result()
    assert replies[0].startswith(b"220 ")
    assert replies[-1].startswith(b"221 ")  # it stayed to the end and was answered throughout

    per_kind = MESSAGES // 20
    team_ids = [mid for to, mid in plan if to == f"team@{DOMAIN}"]
    forwarder.peers.wait_for_ids(team_ids, timeout=180)
    wait_until(lambda: tls_mx.count() >= per_kind, "the TLS MX got its mail in clear", timeout=120)
    bounces = forwarder.peers.wait_for(
        lambda got: [r for r in got if r.host == SENDER_MX][per_kind - 1 :], timeout=120
    )
    assert bounces

    def deferred() -> int:
        queued = json.loads(forwarder.run("queue", "list", "--json"))
        return sum(1 for m in queued if m["state"] == "deferred")

    wait_until(
        lambda: deferred() == per_kind,
        "every message for the unreachable MX deferred",
        timeout=120,
    )
    assert daemon.stop() == 0

    raw = daemon.log_path.read_bytes()
    for marker in MARKERS:  # JSON escapes every control character a client sent
        assert marker not in raw, f"raw {marker!r} in the daemon's stderr"
    lines = [json.loads(line) for line in raw.decode("utf-8").splitlines()]
    for line in lines:
        assert isinstance(line, dict)
        assert {"event", "level", "timestamp"} <= line.keys(), line
        datetime.datetime.fromisoformat(line["timestamp"])
        assert "exception" not in line, line  # nothing here may crash
    # aiosmtpd's INFO lines echo every command a client sends: held back.
    assert not [e for e in lines if e.get("logger") == "mail.log" and e["level"] == "info"]
    assert {e.get("process") for e in lines if e["event"] == "received"} == {1, 2}
    assert len([e for e in lines if e["event"] == "received"]) == MESSAGES

    failed = [e for e in lines if e["event"] == "failed"]
    assert [(e["recipient"], e["code"]) for e in failed] == [(REFUSED, 550)] * per_kind
    assert len([e for e in lines if e["event"] == "bounced"]) == per_kind

    # The delivery code's own lines (no queue id: the scheduler's results carry one), which
    # went nowhere before: the unreachable MX, the TLS fallback.
    delivery = [
        json.dumps(e)
        for e in lines
        if str(e.get("logger")).startswith("smtpy.outbound.") and "queue_id" not in e
    ]
    assert [line for line in delivery if GONE_HOST in line]
    assert [line for line in delivery if TLS_HOST in line and "TLS" in line]
