"""SMTP smuggling (CVE-2023-51764 and its kin) against the real `smtpy serve`.

Each session sends one message whose body hides a second transaction behind a
fake end of data — `<LF>.<LF>`, `<CR>.<CR>`, `<LF>.<CR><LF>`, `<CR><LF>.<LF>`
and the other variants published by SEC Consult (Dec 2023) — then the real
`<CR><LF>.<CR><LF>`. A vulnerable server answers the hidden MAIL, RCPT and DATA
and queues a forged message. smtpy must answer exactly one 250 for the DATA and
the destination MX host must get exactly that message, and nothing for the
smuggled recipient.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Cli
from dnsserver import DNSServer
from mailpeers import DOMAIN, Forwarder, forwarding_world, message_id_counts

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

# Fake ends of data, as published, and a few more of the same family.
FAKE_ENDS = {
    "LF.LF": b"\n.\n",
    "CR.CR": b"\r.\r",
    "LF.CRLF": b"\n.\r\n",
    "CRLF.LF": b"\r\n.\n",
    "CR.CRLF": b"\r.\r\n",
    "CRLF.CR": b"\r\n.\r",
    "LF.CR": b"\n.\r",
    "CR.LF": b"\r.\n",
    "CRLF.NUL.CRLF": b"\r\n.\x00\r\n",
    "CRLF.SP.CRLF": b"\r\n. \r\n",
    # (Not `\r\r\n.\r\n`: it contains the real `\r\n.\r\n`, and ends the data everywhere.)
    "CRLF.CRCRLF": b"\r\n.\r\r\n",
    "LFLF.LFLF": b"\n\n.\n\n",
}


@pytest.fixture
def forwarder(
    cli: Cli, cli_env: dict[str, str], dns_server: DNSServer, tmp_path: Path
) -> Iterator[Forwarder]:
    with forwarding_world(cli, cli_env, dns_server, tmp_path) as world:
        yield world


def session(port: int, payload: bytes) -> list[bytes]:
    """EHLO, one transaction with `payload` as DATA, QUIT; every reply line the server sent."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(
            b"EHLO client.sender.test\r\nMAIL FROM:<alice@sender.test>\r\n"
            b"RCPT TO:<team@" + DOMAIN.encode() + b">\r\nDATA\r\n"
        )
        replies = b""
        while replies.count(b"\r\n354 ") == 0:
            chunk = sock.recv(65536)
            assert chunk, replies
            replies += chunk
        sock.sendall(payload + b"\r\n.\r\nQUIT\r\n")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            replies += chunk
    return [line for line in replies.split(b"\r\n") if line]


def smuggling_payload(message_id: str, forged_id: str, fake_end: bytes) -> bytes:
    forged = (
        b"MAIL FROM:<ceo@victim.test>\r\n"
        b"RCPT TO:<victim@" + DOMAIN.encode() + b">\r\n"
        b"DATA\r\n"
        b"From: CEO <ceo@victim.test>\r\n"
        b"To: victim@" + DOMAIN.encode() + b"\r\n"
        b"Subject: forged\r\n"
        b"Message-ID: " + forged_id.encode() + b"\r\n"
        b"\r\n"
        b"Please wire the money."
    )
    return (
        b"From: Alice <alice@sender.test>\r\n"
        b"To: team@" + DOMAIN.encode() + b"\r\n"
        b"Subject: legitimate\r\n"
        b"Message-ID: " + message_id.encode() + b"\r\n"
        b"\r\n"
        b"Hello." + fake_end + forged
    )


def test_no_smuggled_message_ever_reaches_the_mx(forwarder: Forwarder) -> None:
    forwarder.alias(f"team@{DOMAIN}", "team@dest1.test")
    forwarder.alias(f"victim@{DOMAIN}", "victim@dest2.test")
    daemon = forwarder.start()

    legit: dict[str, str] = {}
    forged: dict[str, str] = {}
    for name, fake_end in FAKE_ENDS.items():
        message_id, forged_id = f"<{uuid.uuid4().hex}@sender.test>", f"<forged-{name}@victim.test>"
        legit[name], forged[name] = message_id, forged_id
        replies = session(daemon.port, smuggling_payload(message_id, forged_id, fake_end))
        final = [r for r in replies if not r.startswith(b"250-")][-4:]
        # RCPT, 354, the one DATA reply, QUIT: the hidden commands were never read as commands.
        assert [r[:3] for r in final] == [b"250", b"354", b"250", b"221"], (name, replies)
        assert b"queued as" in final[2], (name, replies)

    counts = forwarder.peers.wait_for_ids(legit.values())
    # Anything forged that was queued would be in the store or delivered by now.
    forwarder.wait_settled()
    received = forwarder.peers.received
    counts = message_id_counts(received)
    assert all(counts[message_id] == 1 for message_id in legit.values()), counts
    assert not set(forged.values()) & counts.keys(), [
        r for r in received if r.message_id in forged.values()
    ]
    assert all(r.rcpt_tos == ("team@dest1.test",) for r in received), "mail for the victim"
    assert len(received) == len(FAKE_ENDS)
    for r in received:
        # The smuggled text stays inside the one message, as data.
        assert b"Please wire the money." in r.data
        assert b"MAIL FROM:<ceo@victim.test>" in r.data
