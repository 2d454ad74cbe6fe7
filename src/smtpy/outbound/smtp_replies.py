"""What an SMTP reply or a network error means for a recipient (pure).

Replies map to statuses per recipient: 2xx delivered, 5xx failed, anything
else deferred. The RFC 3463 enhanced status comes from the reply text when it
has one of the reply's class, from the reply code otherwise. A failure that
makes the sender move on to the next MX address is a `HostFailed`; its
`enhanced` status is always temporary (4.x.x).
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Sequence

from aiosmtplib import SMTPResponse, SMTPResponseException

from smtpy.outbound.target import Outcome, Status

__all__ = [
    "HostFailed",
    "describe",
    "enhanced_status",
    "error_text",
    "from_reply",
    "network_failure",
    "one_line",
    "outcomes",
    "refused",
    "temporary",
]

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)")


class HostFailed(Exception):
    """This address did not take the transaction; try the next one."""

    def __init__(
        self,
        reply: str,
        *,
        code: int | None = None,
        enhanced: str = "4.4.1",
        remote_host: str | None = None,
        tls: bool = False,
    ) -> None:
        super().__init__(reply)
        self.reply = reply
        self.code = code
        self.enhanced = enhanced
        self.remote_host = remote_host
        self.tls = tls  # the TLS handshake failed: a step down may be allowed


def outcomes(
    recipients: Sequence[str],
    status: Status,
    text: str,
    enhanced: str,
    *,
    code: int | None = None,
    remote_host: str | None = None,
) -> list[Outcome]:
    """The same outcome for every recipient."""
    return [Outcome(r, status, code, text, remote_host, enhanced) for r in recipients]


def from_reply(recipient: str, reply: SMTPResponse, remote: str) -> Outcome:
    """The outcome a reply code means: 2xx delivered, 5xx failed, else deferred."""
    status: Status
    if 200 <= reply.code < 300:
        status = "delivered"
    elif 500 <= reply.code < 600:
        status = "failed"
    else:
        status = "deferred"
    enhanced = enhanced_status(reply.code, reply.message)
    if status == "deferred":
        enhanced = temporary(enhanced)
    return Outcome(recipient, status, reply.code, one_line(reply.message), remote, enhanced)


def enhanced_status(code: int, text: str) -> str:
    """The RFC 3463 status in a reply's text, or `X.0.0` from the reply code."""
    klass = str(code)[:1]
    match = _ENHANCED.match(text.strip())
    if match and match.group(1) == klass:
        return match.group(0)
    return f"{klass}.0.0" if klass in ("2", "4", "5") else "4.0.0"


def temporary(enhanced: str) -> str:
    """The same status detail, as a temporary failure."""
    return "4" + enhanced[1:]


def refused(remote: str, command: str, reply: SMTPResponseException | SMTPResponse) -> HostFailed:
    """The remote refused `command` in a way that sends us to the next address."""
    code, message = (reply.code, reply.message)
    return HostFailed(
        f"{remote} refused {command}: {code} {one_line(message)}",
        code=code,
        enhanced=temporary(enhanced_status(code, message)),
        remote_host=remote,
    )


def network_failure(
    exc: BaseException, remote: str, *, connected: bool, tls_mandatory: bool = False
) -> HostFailed:
    """What a network or protocol error means: 4.4.1 no answer, 4.4.2 bad connection.

    A failed TLS handshake is 4.7.4 when TLS was mandatory (no step down to
    clear text), 4.4.2 otherwise.
    """
    if isinstance(exc, ssl.SSLError) or isinstance(exc.__cause__, ssl.SSLError):
        return HostFailed(
            f"TLS with {remote} failed: {error_text(exc)}",
            enhanced="4.7.4" if tls_mandatory else "4.4.2",
            remote_host=remote,
            tls=True,
        )
    return HostFailed(
        describe(exc, remote),
        enhanced="4.4.2" if connected else "4.4.1",
        remote_host=remote,
    )


def one_line(text: str) -> str:
    """A reply's lines joined by spaces, undecodable bytes replaced."""
    clean = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return " ".join(line.strip() for line in clean.splitlines() if line.strip())


def describe(exc: BaseException, remote: str) -> str:
    """A short description of a network error, naming the remote host."""
    causes = (exc, exc.__cause__)
    if any(isinstance(e, ConnectionRefusedError) for e in causes):
        return f"connection refused by {remote}"
    if any(isinstance(e, TimeoutError) for e in causes):
        return f"no answer from {remote} (timed out)"
    if any(isinstance(e, ConnectionResetError) for e in causes):
        return f"connection reset by {remote}"
    return f"{remote}: {error_text(exc)}"


def error_text(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return one_line(str(text))
