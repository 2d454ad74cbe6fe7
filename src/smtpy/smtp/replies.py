"""Every SMTP reply smtpy sends, generic and tagged with an enhanced status code (RFC 3463).

A reply says what the client can act on; the details (which zone listed the
client, which virus, what the store said) go to the log, keyed by queue id.
The few replies with a variable part are functions; the variable part is the
client's own address, the sender's domain, or text the domain's owner wrote.

The checks (`smtpy.checks`) return these replies, so this module imports
nothing of smtpy: the layers contract keeps it at the bottom.
"""

from __future__ import annotations

import re

# -- 2xx: accepted -------------------------------------------------------------------

OK_SENDER = "250 2.1.0 Sender OK"
OK_RECIPIENT = "250 2.1.5 Recipient OK"
QUEUED_PREFIX = "250 2.0.0 Ok: queued as "


def queued(queue_id: str) -> str:
    """250 after DATA, once the message is durable in the store."""
    return QUEUED_PREFIX + queue_id


# -- session and connection ------------------------------------------------------------

TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections, try again later"
TOO_MANY_FROM_IP = "421 4.7.0 Too many connections from your address, try again later"
SHUTTING_DOWN = "421 4.3.2 Service shutting down, closing the connection"
EARLY_TALKER = "554 5.5.1 Protocol error: you talked before the greeting"
COMMAND_TOO_LONG = "500 5.5.6 Command line too long"
NEED_RCPT = "503 5.5.1 Error: need RCPT command"
DATA_SYNTAX = "501 5.5.4 Syntax: DATA"
START_DATA = "354 End data with <CR><LF>.<CR><LF>"
DATA_TOO_BIG = "552 5.3.4 Error: Too much mail data"
LINE_TOO_LONG = "500 5.5.2 Line too long (see RFC5321 4.5.3.1.6)"
OK = "250 2.0.0 OK"


def blocklisted(ip: str, zone: str) -> str:
    """A client listed by a DNS blocklist (RFC 5782): refused instead of the banner."""
    return f"554 5.7.1 Service unavailable; client [{ip}] blocked using {zone}"


# -- MAIL FROM and RCPT TO ---------------------------------------------------------------

BAD_SENDER = "501 5.1.7 Bad sender address syntax"
BAD_RECIPIENT = "501 5.1.3 Bad recipient address syntax"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
OTHER_POLICY = (
    "452 4.5.3 This recipient's domain has another policy: send it in another transaction"
)
RATE_IP = "450 4.7.1 Too much mail from your address, try again later"
RATE_SENDER_DOMAIN = "450 4.7.1 Too much mail from this sender domain, try again later"
RATE_RECIPIENT_DOMAIN = "450 4.7.1 Too much mail for this domain, try again later"
SRS_INVALID = "550 5.1.1 Invalid or expired SRS address"
RELAY_DENIED = "550 5.7.1 Relaying denied: this server does not serve that domain"
UNKNOWN_USER = "550 5.1.1 Recipient address rejected: no such user here"
MAILBOX_DISABLED = "550 5.2.1 Recipient address rejected: mailbox disabled"
ALIAS_REJECTED = "550 5.7.1 Recipient address rejected"
ROUTING_LOOP = "554 5.4.6 Routing loop detected"
NO_DESTINATION = "550 5.1.1 Recipient address rejected: no valid destination"
AWAITING_CONFIRMATION = (
    "450 4.2.1 Recipient address deferred: destination awaiting confirmation, try again later"
)


def alias_rejected(text: str | None) -> str:
    """An alias in reject mode: its owner's message, or the generic one."""
    return f"550 5.7.1 {text}" if text else ALIAS_REJECTED


# -- end of DATA -------------------------------------------------------------------------

TOO_BIG = "552 5.3.4 Message size exceeds fixed limit"
LOOP = "554 5.4.6 Too many Received headers: mail loop detected"
BAD_HEADER = "554 5.6.0 Malformed message header: a line is not a header field"
VIRUS = "554 5.7.1 Message refused: it contains a virus"
SPAM = "554 5.7.1 Message refused as spam"
SCAN_FAILED = "451 4.3.0 The message could not be scanned, please try again later"
DMARC_INCOMPLETE = "451 4.7.5 DMARC check incomplete (a DNS lookup failed), please try again later"


def dmarc_rejected(from_domain: str, reason: str) -> str:
    """A DMARC failure under the From domain's p=reject (RFC 7489 §6.6.3)."""
    return f"550 5.7.1 Rejected by the DMARC policy of {from_domain} (p=reject): {reason}"


# -- failures of our own: the client keeps the message and retries -----------------------

TEMPORARY = "451 4.3.0 Temporary failure, please try again later"
STORAGE_FULL = "452 4.3.1 Insufficient system storage, please try again later"

# -- aiosmtpd's own replies, which carry no enhanced code (RFC 2034) ---------------------

_ENHANCED_BY_CODE = {
    "220": "2.0.0",
    "221": "2.0.0",
    "250": "2.0.0",
    "251": "2.1.5",
    "252": "2.5.0",
    "421": "4.3.2",
    "451": "4.3.0",
    "452": "4.5.3",
    "454": "4.7.0",
    "500": "5.5.2",
    "501": "5.5.4",
    "502": "5.5.1",
    "503": "5.5.1",
    "504": "5.5.4",
    "530": "5.7.0",
    "550": "5.0.0",
    "552": "5.3.4",
    "553": "5.1.3",
    "554": "5.0.0",
    "555": "5.5.4",
}
_HAS_ENHANCED = re.compile(r"^[245]\d\d[ -][245]\.\d{1,3}\.\d{1,3}\b")


def with_enhanced_code(reply: str) -> str:
    """Add an RFC 3463 code to a reply that lacks one (greeting and EHLO excluded by the caller)."""
    if len(reply) < 4 or _HAS_ENHANCED.match(reply):
        return reply
    code, sep = reply[:3], reply[3]
    enhanced = _ENHANCED_BY_CODE.get(code)
    if enhanced is None or sep not in " -":
        return reply
    return f"{code}{sep}{enhanced} {reply[4:]}"


# Billing (smtpy.checks.quota): temporary, so the sender retries once the plan is raised.
QUOTA_REACHED = "452 4.2.2 The recipient's monthly message quota is used up; try again later"
TOO_BIG_FOR_PLAN = "552 5.3.4 Message too big for the recipient's plan"
