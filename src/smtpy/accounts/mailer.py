"""Mail that smtpy sends itself: address confirmations, password resets, invitations.

Such a message goes into smtpy's own queue, inserted by the queue's own
`enqueue` exactly as a received message is, with one delivery to its
recipient: the running `smtpy serve` delivers it like any other (MX lookup,
TLS policy, retries, a bounce to the sender if it fails for good), and signs
it with DKIM when the sender's domain has a key. That is why the delivery's
`original_recipient` (the address the worker signs for, as it does for an
alias) is the sender's address: the mail is sent on behalf of smtpy@<domain>.
Nothing is sent when the caller's transaction rolls back.

The sender is SMTPY_MAIL_FROM, by default `smtpy@<SMTPY_HOSTNAME>`. Links start with SMTPY_PUBLIC_URL, or
`http://<SMTPY_API_LISTEN>` when it is not set (fine for a test, wrong for
users: set it).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from urllib.parse import quote

from smtpy.config import Settings
from smtpy.mail.addresses import parse_address
from smtpy.queue.message_log import LogEvent
from smtpy.queue.queries import NewDelivery, NewMessage, enqueue, new_queue_id
from smtpy.store.db import Database

SENDER_LOCAL = "smtpy"
SENDER_NAME = "smtpy"

# The dashboard pages the links open (smtpy.web); each takes ?token=.
CONFIRM_PATH = "/confirm"
RESET_PATH = "/password-reset"
INVITATION_PATH = "/invitation"


def sender(settings: Settings) -> str:
    """The address smtpy's own mail comes from: SMTPY_MAIL_FROM, else smtpy@<SMTPY_HOSTNAME>."""
    if settings.mail_from:
        return settings.mail_from
    return f"{SENDER_LOCAL}@{settings.hostname.strip().rstrip('.').lower()}"


def base_url(settings: Settings) -> str:
    """Where users reach the dashboard: SMTPY_PUBLIC_URL, else http://<SMTPY_API_LISTEN>."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    host, port = settings.api_listen
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def link(settings: Settings, path: str, token: str) -> str:
    """The URL of a mailed link: a dashboard page with the token."""
    return f"{base_url(settings)}{path}?token={quote(token, safe='')}"


def compose(*, settings: Settings, to: str, subject: str, body: str, now: float) -> bytes:
    """A text/plain UTF-8 message with Date and Message-ID, CRLF line endings."""
    from email import policy

    recipient = parse_address(to)
    mail_policy = policy.SMTPUTF8 if recipient.needs_smtputf8 else policy.SMTP
    message = EmailMessage(policy=mail_policy)
    local, _, domain = sender(settings).rpartition("@")
    message["From"] = Address(SENDER_NAME, local, domain)
    message["To"] = str(recipient)
    message["Subject"] = subject
    message["Date"] = format_datetime(datetime.fromtimestamp(now, UTC))
    message["Message-ID"] = make_msgid(domain=domain)
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies, please
    message.set_content(body, charset="utf-8")
    return message.as_bytes()


def queue_mail(
    *, db: Database, settings: Settings, to: str, subject: str, body: str, now: float | None = None
) -> str:
    """Put one message to `to` in smtpy's queue (in the caller's transaction); its queue id."""
    now = time.time() if now is None else now
    recipient = parse_address(to)
    from_address = sender(settings)
    data = compose(settings=settings, to=to, subject=subject, body=body, now=now)
    queue_id = new_queue_id(now)
    from_domain = from_address.rpartition("@")[2]
    enqueue(
        db,
        NewMessage(
            queue_id=queue_id,
            sender=from_address,
            data=data,
            deliveries=[
                NewDelivery(
                    original_recipient=from_address,
                    recipient=str(recipient),
                    domain=recipient.domain,
                    envelope_sender=from_address,
                )
            ],
            smtputf8=recipient.needs_smtputf8,
            received_at=now,
            log=[
                LogEvent(
                    at=now,
                    event="received",
                    queue_id=queue_id,
                    sender=from_address,
                    alias=from_address,
                    recipient=str(recipient),
                    domain=from_domain,
                    size=len(data),
                )
            ],
        ),
    )
    return queue_id


# -- the messages -------------------------------------------------------------------


def send_confirmation(*, db: Database, settings: Settings, to: str, token: str) -> str:
    url = link(settings, CONFIRM_PATH, token)
    body = (
        "Hello,\n\n"
        f"an smtpy account was created for {to}. To confirm that this address is yours,\n"
        "open this link (it works once, within 24 hours):\n\n"
        f"{url}\n\n"
        "If you did not create it, ignore this mail: the account stays unusable.\n"
    )
    return queue_mail(
        db=db, settings=settings, to=to, subject="Confirm your e-mail address", body=body
    )


def send_password_reset(*, db: Database, settings: Settings, to: str, token: str) -> str:
    url = link(settings, RESET_PATH, token)
    body = (
        "Hello,\n\n"
        f"someone asked to choose a new password for the smtpy account {to}.\n"
        "To do so, open this link (it works once, within an hour):\n\n"
        f"{url}\n\n"
        "If it was not you, ignore this mail: your password stays as it is.\n"
    )
    return queue_mail(db=db, settings=settings, to=to, subject="Choose a new password", body=body)


def send_invitation(
    *,
    db: Database,
    settings: Settings,
    to: str,
    token: str,
    organization: str,
    role: str,
    invited_by: str | None,
) -> str:
    url = link(settings, INVITATION_PATH, token)
    who = invited_by or "An administrator"
    body = (
        "Hello,\n\n"
        f"{who} invites you to join the organization {organization} on smtpy as {role}.\n"
        "To accept, open this link (it works once, within 7 days):\n\n"
        f"{url}\n\n"
        "If you do not know what this is about, ignore this mail.\n"
    )
    subject = f"Invitation to {organization} on smtpy"
    return queue_mail(db=db, settings=settings, to=to, subject=subject, body=body)
