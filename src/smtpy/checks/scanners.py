"""Optional content scanners at the end of DATA: ClamAV's clamd and SpamAssassin's spamd.

Both are off unless their socket is configured (`SMTPY_CLAMD_SOCKET`,
`SMTPY_SPAMD_SOCKET`: a UNIX socket path, or host:port). Every message that is
about to be queued goes to each configured scanner at once:

    clamd  INSTREAM: the message in length-prefixed chunks, then "stream: OK"
           or "stream: NAME FOUND"                          virus → 554 5.7.1
    spamd  SPAMC/1.5 CHECK: the reply's "Spam: True ; 7.1 / 5.0" gives the score;
           at or above `spam_threshold`: 554 5.7.1 when `spam_action` is
           "reject", else an `X-Spam-Status: Yes, score=…` header. Mail below
           the threshold gets `X-Spam-Status: No, score=…`.

A scanner that cannot be reached, answers with an error or takes longer than
`timeout` seconds makes the message wait: the client gets 451 and retries.
Mail is never passed on unscanned. Make clamd's StreamMaxLength at least
SMTPY_MAX_MESSAGE_SIZE, or big messages wait forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import struct
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from smtpy.checks.stages import Client, Message, Refusal, Transaction
from smtpy.config import parse_host_port
from smtpy.smtp.replies import SCAN_FAILED, SPAM, VIRUS

if TYPE_CHECKING:
    from smtpy.config import Settings

_CHUNK = 64 * 1024
_CONNECT_TIMEOUT = 10.0
_MAX_REPLY = 64 * 1024
_SPAM_LINE = re.compile(
    rb"^Spam:\s*(True|False|Yes|No)\s*;\s*(-?[0-9.]+)\s*/\s*(-?[0-9.]+)\s*$",
    re.IGNORECASE | re.MULTILINE,
)


class ScanError(Exception):
    """A scanner could not give a verdict (unreachable, error reply, timeout)."""


@dataclass(frozen=True)
class Verdict:
    """What the scanners decided: a refusal to send, or headers to prepend to the message."""

    reply: str | None = None
    headers: bytes = b""
    reason: Literal["clean", "virus", "spam", "scan_failed"] = "clean"
    detail: str = ""  # for the log: the virus, the score, what failed


async def _open(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if address.startswith("/"):
        opening: Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.open_unix_connection(address)
        )
    else:
        host, port = parse_host_port(address)
        opening = asyncio.open_connection(host, port)
    return await asyncio.wait_for(opening, _CONNECT_TIMEOUT)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def clamd_scan(address: str, data: bytes) -> str | None:
    """The virus clamd finds in `data`, or None; ScanError if it gives no answer."""
    try:
        reader, writer = await _open(address)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ScanError(f"cannot connect to clamd at {address}: {exc}") from None
    try:
        writer.write(b"zINSTREAM\0")
        view = memoryview(data)
        for start in range(0, len(view), _CHUNK):
            chunk = view[start : start + _CHUNK]
            writer.write(struct.pack(">I", len(chunk)))
            writer.write(chunk)
            await writer.drain()
        writer.write(struct.pack(">I", 0))
        await writer.drain()
        reply = await reader.readuntil(b"\0")
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        raise ScanError(f"clamd at {address} failed: {exc}") from None
    finally:
        await _close(writer)
    text = reply.rstrip(b"\0").decode("utf-8", "replace").strip()
    return parse_clamd_reply(text)


def parse_clamd_reply(text: str) -> str | None:
    """`stream: OK` → None; `stream: NAME FOUND` → NAME; anything else is a ScanError."""
    _, _, result = text.partition(": ")
    if result == "OK":
        return None
    if result.endswith(" FOUND"):
        return result.removesuffix(" FOUND")
    raise ScanError(f"clamd: {text[:200]}")


async def spamd_score(address: str, data: bytes) -> float:
    """The SpamAssassin score of `data`; ScanError if spamd gives none."""
    try:
        reader, writer = await _open(address)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ScanError(f"cannot connect to spamd at {address}: {exc}") from None
    try:
        writer.write(b"CHECK SPAMC/1.5\r\nContent-length: %d\r\n\r\n" % len(data))
        writer.write(data)
        await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        reply = b""
        while len(reply) < _MAX_REPLY:
            chunk = await reader.read(_MAX_REPLY)
            if not chunk:
                break
            reply += chunk
    except OSError as exc:
        raise ScanError(f"spamd at {address} failed: {exc}") from None
    finally:
        await _close(writer)
    return parse_spamd_reply(reply)


def parse_spamd_reply(reply: bytes) -> float:
    """The score from a spamd reply (`SPAMD/1.1 0 EX_OK` … `Spam: True ; 7.1 / 5.0`)."""
    status = reply.split(b"\r\n", 1)[0]
    parts = status.split()
    if len(parts) < 2 or not parts[0].startswith(b"SPAMD/") or parts[1] != b"0":
        raise ScanError(f"spamd: {status[:200].decode('utf-8', 'replace')}")
    match = _SPAM_LINE.search(reply)
    if match is None:
        raise ScanError("spamd: no Spam: header in the reply")
    return float(match.group(2))


@dataclass(frozen=True)
class Scanner:
    """The configured scanners; `scan` gives the verdict on one message."""

    clamd: str | None = None
    spamd: str | None = None
    spam_threshold: float = 5.0
    spam_action: Literal["reject", "header"] = "header"
    timeout: float = 30.0

    @property
    def enabled(self) -> bool:
        return bool(self.clamd or self.spamd)

    async def scan(self, data: bytes) -> Verdict:
        try:
            async with asyncio.timeout(self.timeout):
                virus, score = await asyncio.gather(
                    clamd_scan(self.clamd, data) if self.clamd else _none(),
                    spamd_score(self.spamd, data) if self.spamd else _none(),
                )
        except ScanError as exc:
            return Verdict(SCAN_FAILED, reason="scan_failed", detail=str(exc))
        except TimeoutError:
            detail = f"scan took longer than {self.timeout:g}s"
            return Verdict(SCAN_FAILED, reason="scan_failed", detail=detail)
        if isinstance(virus, str):
            return Verdict(VIRUS, reason="virus", detail=f"virus {virus}")
        if score is None:
            return Verdict()
        assert isinstance(score, float)
        spam = score >= self.spam_threshold
        if spam and self.spam_action == "reject":
            return Verdict(SPAM, reason="spam", detail=f"spam score {score:g}")
        header = "X-Spam-Status: {}, score={:.1f} required={:.1f}\r\n".format(
            "Yes" if spam else "No", score, self.spam_threshold
        )
        return Verdict(headers=header.encode(), detail=f"spam score {score:g}")


@dataclass(frozen=True)
class Scan:
    """The end-of-DATA check: a refusal, or the scanners' header fields on top of the message."""

    scanner: Scanner

    async def check_data(
        self, client: Client, txn: Transaction, message: Message
    ) -> Refusal | None:
        verdict = await self.scanner.scan(message.content)
        if verdict.reply is not None:
            return Refusal(verdict.reply, verdict.reason, verdict.detail)
        message.content = verdict.headers + message.content
        return None


async def _none() -> None:
    return None


def scanner_from_settings(settings: Settings) -> Scanner | None:
    """The configured scanners, or None when neither clamd nor spamd is set."""
    if not settings.clamd_socket and not settings.spamd_socket:
        return None
    return Scanner(
        clamd=settings.clamd_socket,
        spamd=settings.spamd_socket,
        spam_threshold=settings.spam_threshold,
        spam_action="reject" if settings.spam_action == "reject" else "header",
        timeout=settings.scan_timeout,
    )
