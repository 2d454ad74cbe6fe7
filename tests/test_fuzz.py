"""Property-based fuzzing of the real `smtpy serve` with hypothesis.

Random SMTP sessions — valid commands, garbage bytes, NUL bytes, invalid
UTF-8, command lines of up to 12 KB, whole transactions whose message is
random bytes (malformed headers and MIME, bare CR and LF, stray dots) — are
sent raw and pipelined to one running daemon. Afterwards:

- the daemon is still running and a normal session still delivers a message;
- every message that got "250 … queued as ID" reached the destination MX host
  or is still in the queue (`smtpy queue list --json`): nothing accepted is lost;
- the daemon logged no traceback.

The number of examples is bounded so the test takes seconds, not minutes.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import Cli
from dnsserver import DNSServer
from mailpeers import DOMAIN, SENDER, Forwarder, forwarding_world, make_message, send

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

QUEUED = re.compile(rb"^250 2\.0\.0 Ok: queued as ([0-9A-Z]{16})$", re.MULTILINE)
RCPT = f"team@{DOMAIN}".encode()

COMMANDS = [
    b"EHLO client.sender.test",
    b"HELO client.sender.test",
    b"NOOP",
    b"RSET",
    b"HELP",
    b"VRFY team",
    b"EXPN team",
    b"STARTTLS",
    b"AUTH PLAIN AHVzZXIAcGFzcw==",
    b"BDAT 10 LAST",
    b"DATA",
    b"MAIL FROM:<alice@sender.test>",
    b"MAIL FROM:<>",
    b"MAIL FROM:<alice@sender.test> SIZE=100 BODY=8BITMIME SMTPUTF8",
    b"MAIL FROM:<\xff\xfe@sender.test>",
    b"MAIL FROM:<a\x00b@sender.test>",
    b"RCPT TO:<" + RCPT + b">",
    b"RCPT TO:<nobody@" + DOMAIN.encode() + b">",
    b"RCPT TO:<\xc3\x28@" + DOMAIN.encode() + b">",
    b"RCPT TO:<someone@elsewhere.test>",
]

command = st.one_of(
    st.sampled_from(COMMANDS),
    st.binary(max_size=300),  # garbage, may hold CR, LF and NUL
    st.integers(min_value=400, max_value=12_000).map(lambda n: b"MAIL FROM:<" + b"a" * n + b">"),
    st.text(max_size=100).map(lambda t: t.encode("utf-8", "surrogatepass")),
)
header = st.sampled_from(
    [
        b"Subject: fuzz\r\n",
        b"Content-Type: multipart/mixed; boundary=\r\n",
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n--b--\r\n',
        b"Content-Transfer-Encoding: base64\r\n",
        b"From: \xff\xfe <>\r\n",
        b"Received: garbage\r\n",
        b": no name\r\n",
        b"X-Long: " + b"x" * 900 + b"\r\n",
        b"\x00\x01\x02\r\n",
    ]
)
message = st.tuples(st.lists(header, max_size=4), st.binary(max_size=3000)).map(
    lambda parts: b"".join(parts[0]) + b"\r\n" + parts[1]
)
step = st.one_of(
    command.map(lambda c: c + b"\r\n"),
    message.map(
        lambda m: (
            b"MAIL FROM:<alice@sender.test>\r\nRCPT TO:<"
            + RCPT
            + b">\r\nDATA\r\n"
            + m
            + b"\r\n.\r\n"
        )
    ),
)
session = st.lists(step, max_size=8).map(
    lambda steps: b"EHLO client.sender.test\r\n" + b"".join(steps)
)


@pytest.fixture
def forwarder(
    cli: Cli, cli_env: dict[str, str], dns_server: DNSServer, tmp_path: Path
) -> Iterator[Forwarder]:
    with forwarding_world(cli, cli_env, dns_server, tmp_path) as world:
        yield world


def raw_session(port: int, payload: bytes) -> bytes:
    """Send `payload`, ".", QUIT (from a thread, so that replies never block it); the replies."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:

        def writer() -> None:
            # The server may hang up first (too many bad commands): that is allowed.
            with contextlib.suppress(OSError):
                # "." ends a DATA the payload may have left open; else it is one more bad command.
                sock.sendall(payload + b"\r\n.\r\nQUIT\r\n")

        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        replies = b""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            replies += chunk
        thread.join(20)
    return replies


def test_random_sessions_never_crash_the_daemon_or_lose_mail(forwarder: Forwarder) -> None:
    forwarder.alias(f"team@{DOMAIN}", "team@dest1.test")
    daemon = forwarder.start()
    accepted: list[str] = []

    @settings(
        max_examples=150,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(payload=session)
    def fuzz(payload: bytes) -> None:
        replies = raw_session(daemon.port, payload)
        assert replies.startswith(b"220 "), replies[:200]
        accepted.extend(m.decode() for m in QUEUED.findall(replies.replace(b"\r\n", b"\n")))
        assert daemon.running, daemon.log_tail()

    fuzz()
    assert accepted, "no session got a message through: the sessions test nothing"

    # A normal session still works.
    message_id = f"<{uuid.uuid4().hex}@sender.test>"
    assert send(daemon.port, SENDER, [f"team@{DOMAIN}"], make_message(message_id=message_id)) == {}
    forwarder.peers.wait_for_ids([message_id])

    # Every accepted message was delivered or is still queued.
    def delivered() -> set[str]:
        return {qid for qid in accepted for r in forwarder.peers.received if qid.encode() in r.data}

    deadline = time.monotonic() + 30
    while delivered() != set(accepted) and time.monotonic() < deadline:
        time.sleep(0.5)
    missing = set(accepted) - delivered()
    if missing:
        queued = {m["queue_id"] for m in json.loads(forwarder.run("queue", "list", "--json"))}
        assert missing <= queued, f"accepted but neither delivered nor queued: {missing - queued}"
    assert daemon.running
    assert "Traceback" not in daemon.log_path.read_text(errors="replace"), daemon.log_tail()
