"""The Target for an alias destination that is an https URL (a webhook destination).

    target = HttpsTarget(Sender(allow_private=False, timeout=10.0), secrets=lookup)
    [outcome] = await target.deliver(sender=srs_sender, recipients=["https://app.example/in"],
                                     message=wire, origin=origin)

The prepared message is taken apart (`smtpy.mail.parsed.message_payload`)
and posted as one `message.received` event, `{"type","timestamp","data"}`,
signed as Standard Webhooks with the destination's own `whsec_` secret (the
`destinations` row of the alias's organization for that URL). The event id
(`webhook-id`) is the same at every attempt of one delivery, so a receiver
can drop a repeat. The POST goes through `smtpy.events.sender.Sender`: the
SSRF rules, the connection to the checked address, no redirects, a timeout.

What the answer means for the queue (the same retry schedule and DSNs as SMTP):

    2xx                          delivered ("HTTP 200")
    408, 429, 5xx, other codes   deferred
    timeout, refused connection  deferred
    400-499 otherwise            failed: the sender gets a DSN (404/410 5.1.1,
                                 401/403 5.7.1, 413 5.3.4, others 5.0.0)
    URL refused by the SSRF rules failed (5.7.1)

A 429 or 503 with a Retry-After sets when the next attempt is (at least a
second, at most a day: `smtpy.events.deliveries.asked_delay`), in place of the
queue's schedule; the queue lifetime still ends the delivery. Each URL gets its
own POST, even when given several.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from smtpy.errors import InvalidInput
from smtpy.events import signing
from smtpy.events.sender import ALLOW_HINT, Sender, parse_url
from smtpy.events.types import rfc3339
from smtpy.mail.addresses import normalize_domain, split_address
from smtpy.mail.parsed import MAX_PAYLOAD, message_payload
from smtpy.outbound.target import Origin, Outcome, Status
from smtpy.store.db import Database

if TYPE_CHECKING:
    from smtpy.config import Settings

__all__ = ["HttpsTarget", "SecretLookup", "destination_secret"]

SecretLookup = Callable[[str, str], Awaitable[str | None]]
"""(alias domain, URL) -> the signing secret of that URL in the domain's organization."""

MAX_REPLY_BODY = 200  # characters of an answer's body kept in the reply (and the DSN)


def destination_secret(db: Database, *, domain: str, url: str) -> str | None:
    """The `whsec_` secret of the URL destination `url` of the organization serving `domain`."""
    value = db.scalar(
        "SELECT t.secret FROM destinations t JOIN domains d"
        " ON d.organization_id = t.organization_id"
        " WHERE d.name = :domain AND t.kind = 'url' AND t.address_key = :url",
        {"domain": domain, "url": url},
    )
    return str(value) if value else None


def event_id(queue_id: str, url: str) -> str:
    """The webhook-id of one message's delivery to one URL: the same at every attempt."""
    return f"msg_{queue_id}_{hashlib.sha256(url.encode()).hexdigest()[:16]}"


def _domain_of(alias: str) -> str:
    domain = split_address(alias)[1]
    try:
        return normalize_domain(domain)
    except InvalidInput:
        return domain


def _cut(text: str | None) -> str:
    words = " ".join((text or "").split())
    return words if len(words) <= MAX_REPLY_BODY else words[:MAX_REPLY_BODY] + "…"


def _failed_status(code: int) -> str:
    if code in (404, 410):
        return "5.1.1"
    if code in (401, 403):
        return "5.7.1"
    if code == 413:
        return "5.3.4"
    return "5.0.0"


def _body(message: bytes, *, origin: Origin, alias: str, at: float) -> str:
    """The JSON body of the `message.received` event a URL destination receives."""
    data = message_payload(
        message,
        mail_from=origin.sender,
        rcpt_to=[alias],
        authentication_results=[origin.auth_results] if origin.auth_results else (),
    )
    return json.dumps(
        {"type": "message.received", "timestamp": rfc3339(at), "data": data},
        ensure_ascii=False,
        separators=(",", ":"),
    )


class HttpsTarget:
    """Posts each message to its URL destinations as a signed `message.received` event."""

    def __init__(
        self,
        sender: Sender,
        *,
        secrets: SecretLookup | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.sender = sender
        self.secrets = secrets
        self._clock = clock

    @classmethod
    def from_settings(cls, settings: Settings, *, secrets: SecretLookup | None) -> HttpsTarget:
        sender = Sender(
            allow_private=settings.webhook_allow_private,
            timeout=settings.webhook_timeout,
            ca_file=settings.tls_ca_file,
            max_body=MAX_PAYLOAD,
        )
        return cls(sender, secrets=secrets)

    async def deliver(
        self,
        *,
        sender: str,
        recipients: Sequence[str],
        message: bytes,
        smtputf8: bool = False,
        origin: Origin | None = None,
    ) -> list[Outcome]:
        """One POST per URL (at once), one outcome each, in order."""
        aliases = origin.aliases if origin is not None else ()
        return list(
            await asyncio.gather(
                *(
                    self._post(url, aliases[n] if n < len(aliases) else "", message, origin)
                    for n, url in enumerate(recipients)
                )
            )
        )

    async def close(self) -> None:
        await self.sender.close()

    async def _post(self, url: str, alias: str, message: bytes, origin: Origin | None) -> Outcome:
        def outcome(status: Status, reply: str, enhanced: str, host: str | None) -> Outcome:
            return Outcome(url, status, None, reply, host, enhanced)

        try:
            target = parse_url(url, allow_private=self.sender.allow_private)
        except InvalidInput as exc:  # e.g. plain http, or a loopback address, while not allowed
            return outcome("failed", f"webhook URL refused: {exc}", "5.7.1", None)
        host = target.host
        if origin is None or not alias:
            return outcome("deferred", "no origin given for the webhook destination", "4.3.0", host)
        try:
            secret = (
                await self.secrets(_domain_of(alias), url) if self.secrets is not None else None
            )
        except Exception as exc:  # the store is away: try again later
            return outcome(
                "deferred", f"cannot read the signing secret: {exc}"[:300], "4.3.0", host
            )
        if secret is None:
            return outcome(
                "deferred",
                f"no signing secret for {url} in the alias's organization:"
                " set the alias's destinations again to create it",
                "4.3.0",
                host,
            )
        now = self._clock()
        body = await asyncio.to_thread(  # parsing a big message must not stall the loop
            _body, message, origin=origin, alias=alias, at=now
        )
        headers = signing.headers(
            [secret], msg_id=event_id(origin.queue_id, url), timestamp=int(now), body=body
        )
        answer = await self.sender.post(url, body=body, headers=headers)
        code = answer.status_code
        if code is None:
            error = answer.error or "no answer"
            if ALLOW_HINT in error:  # resolves to an address a webhook may not reach
                return outcome("failed", f"webhook URL refused: {error}", "5.7.1", host)
            return outcome("deferred", error, "4.4.1", host)
        said = _cut(answer.body)
        reply = f"HTTP {code}" + (f": {said}" if said and not answer.ok else "")
        if answer.ok:
            return outcome("delivered", reply, "2.0.0", host)
        if 400 <= code < 500 and code not in (408, 429):
            return outcome("failed", reply, _failed_status(code), host)
        deferred = outcome("deferred", reply, "4.7.0" if code == 429 else "4.0.0", host)
        return replace(deferred, retry_after=answer.retry_after)  # set on 429 and 503 only
