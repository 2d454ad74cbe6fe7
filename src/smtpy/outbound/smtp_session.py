"""One SMTP session over aiosmtplib: connect, EHLO, STARTTLS, AUTH, then mail transactions.

- Opportunistic STARTTLS: used whenever offered, certificates not verified
  (RFC 7435: encryption against passive listeners, never worse than clear
  text). With a `TlsPlan` of level "required" the session needs STARTTLS and
  a certificate valid for the MX host name, else the address fails with 4.7.4;
  "verified" checks the certificate too but only logs a missing STARTTLS
  (MTA-STS testing); "none" stays in clear text.
- Relay: with credentials, AUTH after STARTTLS. With `relay_tls`, the relay's
  certificate is verified against the system trust store, with implicit TLS
  on port 465 (RFC 8314) and required STARTTLS otherwise.
- MAIL FROM carries SMTPUTF8 when the envelope needs it; a server without
  SMTPUTF8 then fails the recipients with 5.6.7 (RFC 6531 §3.2; no downgrade).
  BODY=8BITMIME is added when the message has 8-bit bytes and the server
  offers it; a server without 8BITMIME still gets the bytes unchanged
  (converting would break DKIM signatures). SIZE is declared when offered.
- RCPT 2xx then DATA 2xx → delivered, 4xx → deferred, 5xx → failed; a MAIL
  FROM or DATA reply applies to every recipient it covers. A connection lost
  after the message was sent is "deferred": a retry may duplicate, which beats
  losing mail. A 421 anywhere sends the caller on to the next address.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import aiosmtplib
from aiosmtplib import (
    SMTPConnectResponseError,
    SMTPException,
    SMTPHeloError,
    SMTPResponse,
    SMTPResponseException,
    SMTPServerDisconnected,
)

from smtpy import log
from smtpy.mail.framing import data_block
from smtpy.outbound.connections import QUIT_TIMEOUT, quit_politely
from smtpy.outbound.smtp_replies import (
    HostFailed,
    enhanced_status,
    error_text,
    from_reply,
    network_failure,
    one_line,
    outcomes,
    refused,
    temporary,
)
from smtpy.outbound.target import Outcome

__all__ = ["SMTPS_PORT", "Envelope", "SmtpClient", "TlsLevel", "TlsPlan"]

logger = log.get(__name__)

SMTPS_PORT = 465
"""A relay on this port with `relay_tls` speaks implicit TLS (RFC 8314)."""

TlsLevel = Literal["required", "verified", "opportunistic", "none"]
"""required: verified TLS or nothing; verified: checked, failure only logged (MTA-STS
testing); opportunistic: STARTTLS when offered, unchecked; none: clear text."""

_QUOTED_LOCAL = re.compile(r'^"(?:[^"\\]|\\.)*"')
_FORBIDDEN_IN_PATH = re.compile(r"[\x00-\x20\x7f<>]")


@dataclass(frozen=True)
class TlsPlan:
    """The TLS one session tries, and the policy that asks for it (for replies and logs)."""

    level: TlsLevel
    why: str


@dataclass(frozen=True)
class Envelope:
    sender: str
    recipients: Sequence[str]
    message: bytes
    utf8: bool


class SmtpClient:
    """Opens SMTP sessions to one address at a time and runs mail transactions on them."""

    def __init__(
        self,
        *,
        hostname: str,
        connect_timeout: float,
        command_timeout: float,
        login: tuple[str, str] | None = None,
        relay_tls: bool = False,
        verified_tls: ssl.SSLContext | None = None,
    ) -> None:
        self._hostname = hostname
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._login_as = login
        self._relay_tls = relay_tls
        # RFC 7435: opportunistic TLS authenticates nobody, so verifies nothing.
        self._opportunistic_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self._opportunistic_tls.check_hostname = False
        self._opportunistic_tls.verify_mode = ssl.CERT_NONE
        self._verified_tls = verified_tls

    async def open(
        self, host: str, address: str, port: int, server_name: str | None, tls: TlsPlan
    ) -> aiosmtplib.SMTP:
        """A session ready for MAIL FROM; HostFailed (after QUIT) if this address will not do."""
        remote = f"{host}[{address}]"
        implicit_tls = self._relay_tls and port == SMTPS_PORT
        smtp: aiosmtplib.SMTP | None = None
        try:
            try:
                if implicit_tls:
                    # Connect to the address we resolved, but verify the name.
                    sock = await self._open_socket(address, port, remote)
                    smtp = aiosmtplib.SMTP(
                        hostname=server_name or address,
                        sock=sock,
                        local_hostname=self._hostname,
                        timeout=self._command_timeout,
                        use_tls=True,
                        start_tls=False,
                        tls_context=self._verified_tls,
                    )
                else:
                    smtp = aiosmtplib.SMTP(
                        hostname=address,
                        port=port,
                        local_hostname=self._hostname,
                        timeout=self._command_timeout,
                        start_tls=False,
                    )
                await self._connect(smtp, remote)
                await self._hello(smtp, remote)
                if not implicit_tls:
                    await self._starttls(smtp, remote, server_name, tls)
                if self._login_as is not None:
                    await self._login(smtp, remote, *self._login_as)
            except HostFailed:
                raise
            except (SMTPException, OSError) as exc:
                raise self.failure(exc, remote, tls) from None
        except BaseException:
            if smtp is not None:
                await quit_politely(smtp)
            raise
        return smtp

    def failure(self, exc: BaseException, remote: str, tls: TlsPlan) -> HostFailed:
        """What a network or protocol error in an open session means."""
        return network_failure(
            exc,
            remote,
            connected=True,
            tls_mandatory=self._relay_tls or tls.level == "required",
        )

    async def transaction(
        self, smtp: aiosmtplib.SMTP, remote: str, envelope: Envelope
    ) -> list[Outcome]:
        """MAIL FROM, RCPT TO each recipient, DATA; one outcome per recipient, in order.

        Raises HostFailed on a 421 before the message was sent, and aiosmtplib's
        and the network's errors before DATA.
        """
        recipients = envelope.recipients
        message = envelope.message
        if envelope.utf8 and not smtp.supports_extension("smtputf8"):
            text = f"{remote} does not support SMTPUTF8, which this message requires"
            return outcomes(recipients, "failed", text, "5.6.7", remote_host=remote)

        params: list[bytes] = []
        if envelope.utf8:
            params.append(b"SMTPUTF8")
        if not message.isascii() and smtp.supports_extension("8bitmime"):
            params.append(b"BODY=8BITMIME")
        if smtp.supports_extension("size"):
            params.append(b"SIZE=%d" % len(message))
        encoding = "utf-8" if envelope.utf8 else "ascii"

        try:
            sender_path = _path(envelope.sender, encoding)
        except ValueError:
            text = f"bad sender address {envelope.sender!r}"
            return outcomes(recipients, "failed", text, "5.1.7", remote_host=remote)
        reply = await smtp.execute_command(b"MAIL", b"FROM:" + sender_path, *params)
        if reply.code == 421:
            raise refused(remote, "MAIL FROM", reply)
        if reply.code != 250:
            return [from_reply(r, reply, remote) for r in recipients]

        results: list[Outcome | None] = []
        accepted: list[int] = []
        for index, recipient in enumerate(recipients):
            try:
                path = _path(recipient, encoding)
            except ValueError:
                text = f"bad recipient address {recipient!r}"
                results.append(Outcome(recipient, "failed", None, text, remote, "5.1.3"))
                continue
            reply = await smtp.execute_command(b"RCPT", b"TO:" + path)
            if reply.code == 421:
                raise refused(remote, "RCPT TO", reply)
            if reply.code in (250, 251):
                accepted.append(index)
                results.append(None)
            else:
                results.append(from_reply(recipient, reply, remote))

        if not accepted:
            await _rset(smtp)
            return [o for o in results if o is not None]

        try:
            reply = await _data(smtp, message, seconds=self._command_timeout)
        except SMTPResponseException as exc:
            reply = SMTPResponse(exc.code, exc.message)
        except (SMTPException, OSError) as exc:
            # The message may or may not have arrived: retry later (a duplicate
            # at worst), never elsewhere at once. The session is in an unknown state.
            smtp.close()
            text = f"lost connection with {remote} while sending the message: {exc}"
            for index in accepted:
                results[index] = Outcome(recipients[index], "deferred", None, text, remote, "4.4.2")
            return [o for o in results if o is not None]
        for index in accepted:
            results[index] = from_reply(recipients[index], reply, remote)
        logger.debug("smtp_data", remote=remote, code=reply.code, recipients=len(accepted))
        return [o for o in results if o is not None]

    # -- the steps of opening a session ------------------------------------------------

    async def _open_socket(self, address: str, port: int, remote: str) -> socket.socket:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            loop = asyncio.get_running_loop()
            await asyncio.wait_for(loop.sock_connect(sock, (address, port)), self._connect_timeout)
        except BaseException as exc:
            sock.close()
            if isinstance(exc, OSError):
                raise network_failure(
                    exc, remote, connected=False, tls_mandatory=self._relay_tls
                ) from None
            raise
        return sock

    async def _connect(self, smtp: aiosmtplib.SMTP, remote: str) -> None:
        try:
            await smtp.connect(timeout=self._connect_timeout)
        except SMTPConnectResponseError as exc:
            raise HostFailed(
                f"{remote} greeted with: {exc.code} {one_line(exc.message)}",
                code=exc.code,
                enhanced=temporary(enhanced_status(exc.code, exc.message)),
                remote_host=remote,
            ) from None
        except (SMTPException, OSError) as exc:
            raise network_failure(
                exc, remote, connected=False, tls_mandatory=self._relay_tls
            ) from None

    async def _hello(self, smtp: aiosmtplib.SMTP, remote: str) -> None:
        try:
            await smtp.ehlo(hostname=self._hostname)
            return
        except SMTPHeloError as exc:
            if exc.code == 421 or not smtp.is_connected:
                raise refused(remote, "EHLO", exc) from None
        try:
            await smtp.helo(hostname=self._hostname)
        except SMTPHeloError as exc:
            raise refused(remote, "HELO", exc) from None

    async def _starttls(
        self, smtp: aiosmtplib.SMTP, remote: str, server_name: str | None, tls: TlsPlan
    ) -> None:
        offered = smtp.supports_extension("starttls")
        required = tls.level == "required"
        if tls.level == "none":
            return
        if not offered:
            if required:
                raise HostFailed(
                    f"TLS is required ({tls.why}), but {remote} does not offer STARTTLS",
                    enhanced="4.7.4",
                    remote_host=remote,
                )
            if tls.level == "verified":
                logger.warning(
                    "starttls_missing",
                    remote=remote,
                    policy=tls.why,
                    note="would defer under enforce",
                )
            return
        context = self._opportunistic_tls
        if tls.level in ("required", "verified"):
            assert self._verified_tls is not None
            context = self._verified_tls
        try:
            await smtp.starttls(
                tls_context=context, server_hostname=server_name, timeout=self._connect_timeout
            )
        except SMTPResponseException as exc:
            if exc.code != 421 and not required and smtp.is_connected:
                logger.info(
                    "starttls_refused", remote=remote, code=exc.code, note="going on in clear"
                )
                return
            raise refused(remote, "STARTTLS", exc) from None
        except (SMTPException, OSError) as exc:
            reason = f" ({tls.why}); not sent in clear" if required else ""
            raise HostFailed(
                f"TLS with {remote} failed: {error_text(exc)}{reason}",
                enhanced="4.7.4" if required else "4.4.2",
                remote_host=remote,
                tls=True,
            ) from None
        await self._hello(smtp, remote)

    async def _login(
        self, smtp: aiosmtplib.SMTP, remote: str, username: str, password: str
    ) -> None:
        try:
            await smtp.login(username, password)
        except SMTPResponseException as exc:
            raise refused(remote, "AUTH", exc) from None
        except SMTPException as exc:
            if not smtp.is_connected:
                raise
            raise HostFailed(
                f"cannot log in to {remote}: {exc}", enhanced="4.7.0", remote_host=remote
            ) from None


def _path(address: str, encoding: str) -> bytes:
    """`<address>` for MAIL FROM / RCPT TO; ValueError if it cannot be sent safely."""
    unquoted = _QUOTED_LOCAL.sub("", address, count=1)
    if _FORBIDDEN_IN_PATH.search(unquoted) or any(ord(c) < 0x20 for c in address):
        raise ValueError(address)
    return b"<" + address.encode(encoding) + b">"


async def _data(smtp: aiosmtplib.SMTP, message: bytes, *, seconds: float) -> SMTPResponse:
    """DATA, then the message; the reply to the message (2xx, 4xx or 5xx alike).

    aiosmtplib's `data()` rewrites line endings and dot-stuffs with two
    regular expressions over the whole message (1.3 ms for 100 KB), where
    `data_block` counts line endings and makes one replace, the message being
    in CRLF form already. Each reply is awaited at most `seconds`. The session
    belongs to this delivery alone, so the reply read after the write can only
    be the reply to it.
    """
    start = await smtp.execute_command(b"DATA", timeout=seconds)
    if start.code != 354:
        raise SMTPResponseException(start.code, start.message)
    protocol = smtp.protocol
    if protocol is None:
        raise SMTPServerDisconnected("connection lost after DATA")
    protocol.write(data_block(message))
    return await protocol.read_response(timeout=seconds)


async def _rset(smtp: aiosmtplib.SMTP) -> None:
    with contextlib.suppress(SMTPException, OSError):
        await smtp.execute_command(b"RSET", timeout=QUIT_TIMEOUT)
