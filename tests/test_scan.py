"""Scanner hooks (smtpy.checks.scanners) against a real clamd and a real spamd from Debian.

clamd runs in the foreground on a UNIX socket with one signature, EICAR's (no
signature download); spamd listens on loopback TCP with the rules Debian ships
(GTUBE scores 1000). Both start once per test session. The verdicts are then
checked through smtpy's real SMTP server and store: a virus gets 554 and is
not stored, spam is refused or marked as configured, and a scanner that is down
or hangs gives 451 — nothing passes unscanned.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import shutil
import smtplib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from inbound import Running, scenario, serve_example
from smtpy.checks.scanners import (
    ScanError,
    Scanner,
    Verdict,
    parse_clamd_reply,
    parse_spamd_reply,
)
from smtpy.smtp.replies import SCAN_FAILED, SPAM, VIRUS
from smtpy.store.db import Database

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
HEADER = (
    b"From: Carol <carol@sender.test>\r\nTo: alice@example.test\r\n"
    b"Subject: lunch\r\nDate: Thu, 26 Nov 2026 10:00:00 +0000\r\n"
    b"Message-ID: <lunch-1@sender.test>\r\n"
)
CLEAN = HEADER + b"\r\nShall we have lunch tomorrow?\r\n"
SPAMMY = HEADER + b"\r\n" + GTUBE + b"\r\n"
INFECTED = (
    HEADER + b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
    b"--b\r\nContent-Type: text/plain\r\n\r\nThe menu is attached.\r\n"
    b"--b\r\nContent-Type: application/octet-stream; name=menu.com\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.b64encode(EICAR) + b"\r\n--b--\r\n"
)


# -- replies, without a scanner --------------------------------------------------------


def test_clamd_replies() -> None:
    assert parse_clamd_reply("stream: OK") is None
    assert parse_clamd_reply("stream: Eicar-Test-Signature FOUND") == "Eicar-Test-Signature"
    with pytest.raises(ScanError, match="size limit exceeded"):
        parse_clamd_reply("INSTREAM size limit exceeded. ERROR")


def test_spamd_replies() -> None:
    reply = b"SPAMD/1.1 0 EX_OK\r\nContent-length: 0\r\nSpam: True ; 1000.5 / 5.0\r\n\r\n"
    assert parse_spamd_reply(reply) == 1000.5
    assert parse_spamd_reply(reply.replace(b"True ; 1000.5", b"False ; -0.2")) == -0.2
    with pytest.raises(ScanError, match="EX_UNAVAILABLE"):
        parse_spamd_reply(b"SPAMD/1.0 69 EX_UNAVAILABLE\r\n\r\n")
    with pytest.raises(ScanError, match="no Spam: header"):
        parse_spamd_reply(b"SPAMD/1.1 0 EX_OK\r\n\r\n")


def test_scanner_from_settings() -> None:
    from smtpy.checks.scanners import scanner_from_settings
    from smtpy.config import Settings

    base = {"state_dir": Path("/tmp"), "database_url": "sqlite:///x", "hostname": "mx.test"}
    assert scanner_from_settings(Settings(**base)) is None  # off unless configured
    scanner = scanner_from_settings(
        Settings(**base, clamd_socket="/run/clamd.sock", spam_action="reject", scan_timeout=3)
    )
    assert scanner == Scanner(clamd="/run/clamd.sock", spam_action="reject", timeout=3)


# -- the real scanners ------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@pytest.fixture(scope="session")
def clamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A clamd on a UNIX socket that knows one virus, EICAR; its socket path."""
    if shutil.which("clamd") is None:
        pytest.skip("clamd is not installed (scripts/test.sh installs clamav-daemon)")
    work = tmp_path_factory.mktemp("clamd")
    (work / "db").mkdir()
    (work / "db" / "eicar.ndb").write_text(f"Eicar-Test-Signature:0:*:{EICAR.hex()}\n")
    sock = work / "clamd.sock"
    (work / "clamd.conf").write_text(
        f"LocalSocket {sock}\nDatabaseDirectory {work / 'db'}\nForeground yes\n"
        f"LogFile {work / 'clamd.log'}\nStreamMaxLength 50M\n"
    )
    proc = subprocess.Popen(
        ["clamd", "-c", str(work / "clamd.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not _answers(sock, b"zPING\0", b"PONG"):
            if proc.poll() is not None or time.monotonic() > deadline:
                log = (work / "clamd.log").read_text(errors="replace")[-2000:]
                pytest.fail(f"clamd did not start:\n{log}")
            time.sleep(0.2)
        yield str(sock)
    finally:
        _stop(proc)


def _answers(path: Path, request: bytes, expected: bytes) -> bool:
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(request)
        return sock.recv(100).startswith(expected)
    return False


@pytest.fixture(scope="session")
def spamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A spamd on loopback TCP with Debian's rules; its host:port."""
    if shutil.which("spamd") is None:
        pytest.skip("spamd is not installed (scripts/test.sh installs spamassassin and spamd)")
    work = tmp_path_factory.mktemp("spamd")
    port = _free_port()
    log = work / "spamd.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["spamd", "-x", "-i", "127.0.0.1", "-p", str(port), "-A", "127.0.0.1",
             "--max-children=2", "-s", "stderr", "-u", "nobody"],
            stdout=out,
            stderr=out,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while b"server started" not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"spamd did not start:\n{log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        _stop(proc)


@pytest.fixture
def served(store_url: str) -> str:
    return serve_example(store_url)


def deliver(store_url: str, scanner: Scanner, *messages: bytes) -> list[tuple[int, bytes]]:
    """Send each message to alice@example.test through a server with `scanner`; the replies."""

    def client(port: int) -> list[tuple[int, bytes]]:
        replies = []
        with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=60) as smtp:
            smtp.ehlo()
            for message in messages:
                smtp.mail("carol@sender.test")
                smtp.rcpt("alice@example.test")
                replies.append(smtp.data(message))
        return replies

    async def body(server: Running) -> list[tuple[int, bytes]]:
        return await asyncio.to_thread(client, server.port)

    result: list[tuple[int, bytes]] = scenario(store_url, body, scanner=scanner)
    return result


def stored(store_url: str) -> list[bytes]:
    db = Database(store_url)
    try:
        return [bytes(row["data"]) for row in db.all("SELECT data FROM messages ORDER BY id")]
    finally:
        db.close()


def _text(reply: tuple[int, bytes]) -> str:
    return f"{reply[0]} {reply[1].decode()}"


pytestmark = pytest.mark.timeout(180)


@pytest.mark.slow
def test_clamd_refuses_a_virus_and_passes_clean_mail(served: str, clamd: str) -> None:
    replies = deliver(served, Scanner(clamd=clamd), INFECTED, CLEAN)
    assert _text(replies[0]) == VIRUS
    assert replies[1][0] == 250
    [message] = stored(served)
    assert message.endswith(CLEAN), "only the clean message was queued, unchanged"


@pytest.mark.slow
def test_spamd_marks_spam_with_a_header(served: str, spamd: str) -> None:
    replies = deliver(served, Scanner(spamd=spamd, spam_threshold=5.0), SPAMMY, CLEAN)
    assert [code for code, _ in replies] == [250, 250]
    spam, clean = stored(served)
    assert b"\r\nX-Spam-Status: Yes, score=1" in spam  # GTUBE: 1000 and some
    assert spam.endswith(SPAMMY)
    assert b"\r\nX-Spam-Status: No, score=" in clean
    assert clean.endswith(CLEAN)


@pytest.mark.slow
def test_spamd_refuses_spam_when_configured(served: str, spamd: str, clamd: str) -> None:
    scanner = Scanner(clamd=clamd, spamd=spamd, spam_action="reject")
    replies = deliver(served, scanner, SPAMMY, INFECTED, CLEAN)
    assert [_text(r) for r in replies[:2]] == [SPAM, VIRUS]
    assert replies[2][0] == 250
    assert len(stored(served)) == 1


def test_scanner_down_gives_451_and_nothing_passes(served: str, tmp_path: Path) -> None:
    gone = str(tmp_path / "no-such-clamd.sock")
    replies = deliver(served, Scanner(clamd=gone, spamd=f"127.0.0.1:{_free_port()}"), CLEAN)
    assert [_text(r) for r in replies] == [SCAN_FAILED]
    assert stored(served) == []


def test_scanner_that_hangs_times_out_with_451(served: str) -> None:
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        replies = deliver(served, Scanner(spamd=address, timeout=0.5), CLEAN)
    assert [_text(r) for r in replies] == [SCAN_FAILED]
    assert stored(served) == []


def test_scan_error_reply_gives_451(tmp_path: Path) -> None:
    """A clamd that answers with an error (here: over its size limit) is a failed scan."""

    async def fake_clamd(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b"INSTREAM size limit exceeded. ERROR\0")
        await writer.drain()
        writer.close()

    path = str(tmp_path / "clamd.sock")

    async def main() -> Verdict:
        async with await asyncio.start_unix_server(fake_clamd, path):
            return await Scanner(clamd=path).scan(CLEAN)

    verdict = asyncio.run(main())
    assert (verdict.reply, verdict.reason) == (SCAN_FAILED, "scan_failed")
    assert "size limit exceeded" in verdict.detail
