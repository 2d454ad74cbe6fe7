"""The events smtpy emits, as pydantic models: one per type, and the body that is sent.

Every webhook receives `{"type": TYPE, "timestamp": RFC 3339, "data": {…}}`.
The message events carry what the message log records (never the body).
"""

from __future__ import annotations

import json
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict

EventType = Literal[
    "message.received",
    "message.forwarded",
    "message.deferred",
    "message.bounced",
    "message.rejected",
    "domain.verified",
    "destination.verified",
    "quota.reached",
    "subscription.updated",
]
EVENT_TYPES: tuple[EventType, ...] = (
    "message.received",
    "message.forwarded",
    "message.deferred",
    "message.bounced",
    "message.rejected",
    "domain.verified",
    "destination.verified",
    "quota.reached",
    "subscription.updated",
)
TEST_TYPE = "webhook.test"  # what `smtpy webhook test` sends; no endpoint subscribes to it

# message-log event → the event type it is told as (`discarded` is not told)
FROM_LOG: dict[str, EventType] = {
    "received": "message.received",
    "delivered": "message.forwarded",
    "deferred": "message.deferred",
    "bounced": "message.bounced",
    "rejected": "message.rejected",
}


class _Data(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MessageData(_Data):
    """What one message-log row says of a message and one of its recipients."""

    queue_id: str | None = None
    sender: str | None = None  # the envelope sender ("" for a bounce)
    alias: str | None = None  # the address the sender used
    recipient: str | None = None  # where it goes (destinations, comma-separated, when received)
    domain: str | None = None  # the served domain (A-label)
    client_ip: str | None = None
    size: int | None = None
    reason: str | None = None  # why it was rejected or bounced
    code: int | None = None  # the SMTP reply code we gave (rejected) or the remote gave
    reply: str | None = None
    remote_host: str | None = None
    delay: float | None = None  # seconds from reception to this outcome


class DomainData(_Data):
    domain: str  # as shown (U-label)


class DestinationData(_Data):
    destination: str  # an address or URL


class QuotaData(_Data):
    limit: str  # the plan's limit key (messages_per_month, aliases, …)
    value: int  # the limit
    usage: int


class SubscriptionData(_Data):
    plan: str
    status: str


class TestData(_Data):
    webhook_id: str
    message: str


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True)

    timestamp: str  # RFC 3339 UTC, when it happened


class MessageReceived(_Event):
    type: Literal["message.received"] = "message.received"
    data: MessageData


class MessageForwarded(_Event):
    type: Literal["message.forwarded"] = "message.forwarded"
    data: MessageData


class MessageDeferred(_Event):
    type: Literal["message.deferred"] = "message.deferred"
    data: MessageData


class MessageBounced(_Event):
    type: Literal["message.bounced"] = "message.bounced"
    data: MessageData


class MessageRejected(_Event):
    type: Literal["message.rejected"] = "message.rejected"
    data: MessageData


class DomainVerified(_Event):
    type: Literal["domain.verified"] = "domain.verified"
    data: DomainData


class DestinationVerified(_Event):
    type: Literal["destination.verified"] = "destination.verified"
    data: DestinationData


class QuotaReached(_Event):
    type: Literal["quota.reached"] = "quota.reached"
    data: QuotaData


class SubscriptionUpdated(_Event):
    type: Literal["subscription.updated"] = "subscription.updated"
    data: SubscriptionData


class WebhookTest(_Event):
    type: Literal["webhook.test"] = "webhook.test"
    data: TestData


Event = (
    MessageReceived
    | MessageForwarded
    | MessageDeferred
    | MessageBounced
    | MessageRejected
    | DomainVerified
    | DestinationVerified
    | QuotaReached
    | SubscriptionUpdated
    | WebhookTest
)

MODELS: dict[str, type[Event]] = {
    "message.received": MessageReceived,
    "message.forwarded": MessageForwarded,
    "message.deferred": MessageDeferred,
    "message.bounced": MessageBounced,
    "message.rejected": MessageRejected,
    "domain.verified": DomainVerified,
    "destination.verified": DestinationVerified,
    "quota.reached": QuotaReached,
    "subscription.updated": SubscriptionUpdated,
    TEST_TYPE: WebhookTest,
}


DATA_MODELS: dict[str, type[_Data]] = {
    type_: model.model_fields["data"].annotation  # type: ignore[misc]
    for type_, model in MODELS.items()
}


def rfc3339(at: float) -> str:
    """`at` (Unix seconds) as RFC 3339 UTC with milliseconds: 2027-01-15T08:00:00.250Z."""
    us = round(at * 1_000_000)  # to the microsecond first, as datetime does; then cut
    seconds, us = divmod(us, 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{us // 1000:03d}Z"


def make_event(type_: str, data: BaseModel | dict[str, object], *, at: float) -> Event:
    """The event of `type_` with `data` (validated against that type's model)."""
    model = MODELS[type_]
    payload = data.model_dump() if isinstance(data, BaseModel) else data
    return model.model_validate({"timestamp": rfc3339(at), "data": payload})


def body_of(event: Event) -> str:
    """The JSON body sent: `{"type","timestamp","data"}`, compact, None fields left out."""
    return _dumps(event.type, event.timestamp, event.data)


def render(type_: str, data: BaseModel | dict[str, object], *, at: float) -> str:
    """The body of an event of `type_` (what `body_of(make_event(…))` gives), validating
    `data` once: data already of that type's model (`MessageData`, …) is not checked again.
    This is what the outbox calls for every event it writes."""
    model = DATA_MODELS[type_]
    if not isinstance(data, model):
        data = model.model_validate(data.model_dump() if isinstance(data, BaseModel) else data)
    return _dumps(type_, rfc3339(at), data)


def _dumps(type_: str, timestamp: str, data: BaseModel) -> str:
    # The data models hold only str, int and float: model_dump's Python mode is JSON already.
    body = {"type": type_, "timestamp": timestamp, "data": data.model_dump(exclude_none=True)}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))
