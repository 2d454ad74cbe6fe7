"""The tables, as SQLModel classes: the schema of record.

The migrations in `smtpy/store/migrations` create exactly these tables (a test
compares them); the store's queries in `smtpy/store/*.py` are plain SQL over
them so that the CLI starts fast and the queue's hot path stays lean. The HTTP
API builds its public models on these classes.

Times are Unix timestamps (float seconds, UTC) throughout: they compare fast in
the queue's indexes and mean the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    Text,
    UniqueConstraint,
    text,
)
from sqlmodel import Field, SQLModel


class Organization(SQLModel, table=True):
    __tablename__ = "organizations"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200, unique=True)
    created_at: float
    # Billing: the plan the operator put it on (None: the default plan), the operator's
    # limit overrides (JSON {"domains": 50, …}), its Stripe customer (made once).
    plan: str | None = Field(default=None, max_length=40)
    limit_overrides: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    stripe_customer_id: str | None = Field(default=None, max_length=100, index=True)


class Domain(SQLModel, table=True):
    __tablename__ = "domains"

    id: int | None = Field(default=None, primary_key=True)
    organization_id: int = Field(foreign_key="organizations.id", index=True)
    name: str = Field(max_length=253, unique=True)  # IDNA A-label, lower case
    verification_token: str = Field(max_length=64)
    verified_at: float | None = None
    # Refuse DMARC p=reject failures for this domain's mail; None: SMTPY_DMARC_REJECT.
    dmarc_reject: bool | None = None
    # Added through the API and not yet verified: receives no mail (its aliases can be set up).
    pending: bool = False
    created_at: float


class Alias(SQLModel, table=True):
    __tablename__ = "aliases"
    __table_args__ = (UniqueConstraint("domain_id", "kind", "local_key"),)

    id: int | None = Field(default=None, primary_key=True)
    domain_id: int = Field(foreign_key="domains.id", index=True)
    kind: str = Field(max_length=16)  # exact | regex | catchall
    local_part: str = Field(max_length=500)  # as given; the pattern for regex; "*" for catch-all
    local_key: str = Field(max_length=500)  # case-folded local part / pattern
    destinations: str  # JSON list of addresses
    # JSON list, in order: where mail goes when the destinations fail for good.
    fallbacks: str = Field(default="[]", sa_column_kwargs={"server_default": "[]"})
    mode: str = Field(default="forward", max_length=16)  # forward | reject | discard
    reject_message: str | None = Field(default=None, max_length=500)
    enabled: bool = True
    created_at: float


class Destination(SQLModel, table=True):
    """A mail address or https URL an organization forwards to.

    One added through the API or dashboard receives no mail until it is confirmed
    (`confirmed_at`): a mail address by following the link mailed to it, within 24 h.
    An address no row names (aliases made with the CLI, before this table) is the
    operator's own and counts as confirmed. A URL signs what it receives with `secret`.
    """

    __tablename__ = "destinations"
    __table_args__ = (UniqueConstraint("organization_id", "address_key"),)

    id: int | None = Field(default=None, primary_key=True)
    organization_id: int = Field(foreign_key="organizations.id")
    kind: str = Field(max_length=8)  # address | url
    address: str = Field(max_length=2000)  # as given
    address_key: str = Field(max_length=2000)  # the address case-folded; the URL as given
    secret: str | None = Field(default=None, max_length=100)  # whsec_… for a URL
    confirmed_at: float | None = None
    confirmation_sent_at: float | None = None
    created_at: float


class DkimKey(SQLModel, table=True):
    __tablename__ = "dkim_keys"
    __table_args__ = (UniqueConstraint("domain_id", "selector"),)

    id: int | None = Field(default=None, primary_key=True)
    domain_id: int = Field(foreign_key="domains.id", index=True)
    selector: str = Field(max_length=63)
    algorithm: str = Field(max_length=16)  # rsa | ed25519
    bits: int | None = None
    private_key: str  # PEM; never logged or listed
    public_record: str  # the TXT value to publish
    active: bool = True  # signs new mail; inactive keys stay published until removed
    created_at: float


class Secret(SQLModel, table=True):
    """Generated secrets the nodes share (the SRS secret when SMTPY_SRS_SECRET is unset)."""

    __tablename__ = "secrets"

    name: str = Field(primary_key=True, max_length=64)
    value: str
    created_at: float


class Message(SQLModel, table=True):
    """One accepted message, stored once whatever the number of recipients."""

    __tablename__ = "messages"

    id: int | None = Field(default=None, primary_key=True)
    queue_id: str = Field(max_length=32, unique=True)
    sender: str = Field(max_length=600)  # the original envelope sender ("" for bounces)
    client_ip: str | None = Field(default=None, max_length=64)
    client_helo: str | None = Field(default=None, max_length=255)
    smtputf8: bool = False
    size: int
    received_at: float
    # The Authentication-Results value the receiving node computed (RFC 8601, unfolded);
    # the ARC seal copies it, whichever node delivers. NULL when the checks were off.
    auth_results: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    data: bytes = Field(sa_column=Column(LargeBinary, nullable=False))  # headers and body, CRLF
    # JSON {fallback address: queued | delivered | failed}: the fallbacks this message was
    # handed to (`smtpy.queue.fallbacks`), each at most once; NULL while none.
    fallbacks_tried: str | None = None


class Delivery(SQLModel, table=True):
    """One destination of a message, with its queue state.

    status: queued (waiting or due), held (by an admin), delivered, failed
    (bounced or given up), discarded. A row is in flight while `lease_until` is
    in the future; the lease expires if its node dies.
    """

    __tablename__ = "deliveries"
    __table_args__ = (
        Index("ix_deliveries_due", "status", "next_attempt_at"),
        Index("ix_deliveries_lease", "lease_owner"),
    )

    id: int | None = Field(default=None, primary_key=True)
    message_id: int = Field(foreign_key="messages.id", index=True)
    original_recipient: str = Field(max_length=600)  # the address the sender used
    recipient: str = Field(max_length=600)  # where it goes
    domain: str = Field(max_length=253)  # recipient's domain, A-label
    envelope_sender: str = Field(max_length=600)  # SRS-rewritten sender for this delivery
    status: str = Field(default="queued", max_length=16)
    attempts: int = 0
    next_attempt_at: float
    lease_owner: str | None = Field(default=None, max_length=100)
    lease_until: float | None = None
    last_code: int | None = None
    last_error: str | None = Field(default=None, max_length=1000)
    # JSON list, in order: the fallbacks of the alias this delivery came from, tried when
    # a destination of that alias fails for good (`smtpy.queue.fallbacks`).
    fallbacks: str = Field(default="[]", sa_column_kwargs={"server_default": "[]"})
    created_at: float  # when this destination was first queued: its lifetime starts here
    updated_at: float


class Attempt(SQLModel, table=True):
    """One delivery attempt and the remote's exact reply."""

    __tablename__ = "attempts"

    id: int | None = Field(default=None, primary_key=True)
    delivery_id: int = Field(foreign_key="deliveries.id", index=True)
    at: float
    remote_host: str | None = Field(default=None, max_length=300)
    code: int | None = None
    reply: str = Field(max_length=1000)
    result: str = Field(max_length=16)  # delivered | deferred | failed


class LogEvent(SQLModel, table=True):
    """One decision about a message or a recipient: the message log (never the body).

    event: received | rejected | delivered | deferred | bounced | discarded.
    `alias` is the address the sender used, `recipient` where it goes; `domain`
    is the served domain the event belongs to (A-label). `reason` says why a
    recipient or message was rejected (unknown_recipient, relay_denied, too_big,
    loop, …) or why a delivery bounced; `code` and `reply` are the SMTP reply we
    gave (rejected) or the remote gave (delivered, deferred, bounced). `delay`
    is seconds from reception to the final outcome. Old rows are pruned after
    SMTPY_LOG_RETENTION.
    """

    __tablename__ = "message_log"
    __table_args__ = (
        Index("ix_message_log_at", "at"),
        # Covering indexes: the stats read them without touching the table.
        Index("ix_message_log_event", "event", "at", "reason", "delay"),
        Index("ix_message_log_domain", "domain", "at", "event", "reason", "delay"),
        Index("ix_message_log_alias", "alias", "at"),
        Index("ix_message_log_queue_id", "queue_id"),
        # The webhook feed's order on PostgreSQL (`smtpy.queue.event_feed`); SQLite leaves
        # `txid` empty and reads by id, so its rows are not in this index.
        Index(
            "ix_message_log_feed",
            "txid",
            "id",
            sqlite_where=text("txid IS NOT NULL"),
            postgresql_where=text("txid IS NOT NULL"),
        ),
    )

    # 64-bit on PostgreSQL: a busy provider writes billions of events over the years.
    id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    )
    at: float
    event: str = Field(max_length=16)
    queue_id: str | None = Field(default=None, max_length=32)
    client_ip: str | None = Field(default=None, max_length=64)
    sender: str | None = Field(default=None, max_length=600)
    alias: str | None = Field(default=None, max_length=600)
    recipient: str | None = Field(default=None, max_length=600)
    domain: str | None = Field(default=None, max_length=253)
    size: int | None = None
    reason: str | None = Field(default=None, max_length=32)
    code: int | None = None
    reply: str | None = Field(default=None, max_length=1000)
    remote_host: str | None = Field(default=None, max_length=300)
    delay: float | None = None
    # PostgreSQL: the transaction that wrote the row (a column default, 0014), so that the
    # webhook feed reads rows in commit order across nodes; SQLite: empty.
    txid: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))


class LogHourly(SQLModel, table=True):
    """The message log counted per closed UTC hour and domain, by event (the API's stats).

    Filled from `message_log` once an hour has ended (`smtpy.admin.stats.seal`), so a
    month of figures sums a few thousand rows instead of counting a million; hours
    still open are counted from the log itself. `domain` is "" for events of no domain.
    """

    __tablename__ = "message_log_hourly"

    hour: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    domain: str = Field(primary_key=True, max_length=253)
    received: int
    delivered: int
    deferred: int
    bounced: int
    rejected: int
    discarded: int


class LogRollup(SQLModel, table=True):
    """How far `message_log_hourly` is filled: every hour before `sealed_until`."""

    __tablename__ = "message_log_rollup"

    name: str = Field(primary_key=True, max_length=32)
    sealed_until: float


class Node(SQLModel, table=True):
    """An `smtpy serve` node and its heartbeat, for `smtpy status` (one row per node name)."""

    __tablename__ = "nodes"

    name: str = Field(primary_key=True, max_length=100)
    hostname: str = Field(max_length=255)
    pid: int
    version: str = Field(max_length=32)
    started_at: float
    seen_at: float  # the last heartbeat
    stopped_at: float | None = None  # set when the node stopped cleanly
    instance: str | None = Field(default=None, max_length=32)  # the start that holds the name
    process: str | None = Field(default=None, max_length=200)  # where its pid is meaningful
    heartbeat_seconds: float | None = None  # its heartbeat interval: stale after three


class RateLimit(SQLModel, table=True):
    """A message-rate bucket shared by the nodes (`smtpy.checks.limits.RateSync`).

    `key` is "KIND:VALUE" (ip:192.0.2.1, sender_domain:example.org, …); `used`
    is how many tokens are spent as of `updated_at`, draining at the kind's
    rate. Nodes add what they spent in batches, never once per message.
    """

    __tablename__ = "rate_limits"
    __table_args__ = (Index("ix_rate_limits_updated_at", "updated_at"),)

    key: str = Field(primary_key=True, max_length=300)
    used: float
    updated_at: float


# -- accounts (the HTTP API and the dashboard) ---------------------------------


class User(SQLModel, table=True):
    """A person who signs in to the API or the dashboard."""

    __tablename__ = "users"

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(max_length=320, unique=True)  # lower-cased
    name: str = Field(default="", max_length=200)
    password_hash: str | None = Field(default=None, max_length=300)  # argon2id; None: no password
    email_confirmed_at: float | None = None
    totp_secret: str | None = Field(default=None, max_length=64)  # base32; None: no 2FA
    totp_enabled_at: float | None = None  # None while enrolment waits for its first code
    totp_last_step: int | None = None  # the last TOTP time step used: a code works once
    created_at: float


class Membership(SQLModel, table=True):
    """A user's role in an organization: owner, admin or member."""

    __tablename__ = "memberships"
    __table_args__ = (UniqueConstraint("organization_id", "user_id"),)

    id: int | None = Field(default=None, primary_key=True)
    organization_id: int = Field(foreign_key="organizations.id", index=True)
    user_id: int = Field(foreign_key="users.id", index=True)
    role: str = Field(max_length=16)
    created_at: float


class WebSession(SQLModel, table=True):
    """A signed-in browser: only the SHA-256 of its cookie's value is kept."""

    __tablename__ = "sessions"

    id: int | None = Field(default=None, primary_key=True)
    token_hash: str = Field(max_length=64, unique=True)
    user_id: int = Field(foreign_key="users.id", index=True)
    organization_id: int | None = Field(default=None, foreign_key="organizations.id")
    mfa_passed: bool = False  # False while a 2FA user has not given a code yet
    created_at: float
    last_seen_at: float
    expires_at: float  # the absolute end; the idle end is last_seen_at + the idle time-out
    client_ip: str | None = Field(default=None, max_length=64)
    user_agent: str | None = Field(default=None, max_length=300)


class RecoveryCode(SQLModel, table=True):
    """A single-use 2FA recovery code, stored hashed."""

    __tablename__ = "recovery_codes"

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", index=True)
    code_hash: str = Field(max_length=64)
    used_at: float | None = None


class ApiKey(SQLModel, table=True):
    """An organization's API key `smtpy_<id>_<secret>`: only the secret's SHA-256 is kept."""

    __tablename__ = "api_keys"

    id: str = Field(primary_key=True, max_length=32)
    organization_id: int = Field(foreign_key="organizations.id", index=True)
    name: str = Field(max_length=200)
    secret_hash: str = Field(max_length=64)
    created_by: int | None = Field(default=None, foreign_key="users.id")
    created_at: float
    expires_at: float | None = None
    last_used_at: float | None = None
    revoked_at: float | None = None


class LoginFailure(SQLModel, table=True):
    """A failed sign-in, counted per account and per client address (`account:…`, `ip:…`)."""

    __tablename__ = "login_failures"
    __table_args__ = (Index("ix_login_failures_key_at", "key", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=400)
    at: float


class AccountToken(SQLModel, table=True):
    """A link sent by mail (confirm, reset, invite): works once, until it expires."""

    __tablename__ = "account_tokens"

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=16)  # confirm | reset | invite
    token_hash: str = Field(max_length=64, unique=True)
    email: str = Field(max_length=320)
    user_id: int | None = Field(default=None, foreign_key="users.id")
    organization_id: int | None = Field(default=None, foreign_key="organizations.id")
    role: str | None = Field(default=None, max_length=16)  # of an invitation
    created_at: float
    expires_at: float
    used_at: float | None = None


class AuditEvent(SQLModel, table=True):
    """One change: who, what, when, from which address, through which shell."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_org_at", "organization_id", "at"),)

    id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    )
    at: float
    organization_id: int | None = Field(default=None)  # None: not an organization's change
    actor: str = Field(max_length=400)  # user e-mail, "key NAME (ID)", or the Unix user
    via: str = Field(max_length=16)  # cli | api_key | session | system
    action: str = Field(max_length=64)  # domain.create, alias.update, user.login, …
    target: str | None = Field(default=None, max_length=600)
    detail: str | None = Field(default=None, sa_column=Column(Text, nullable=True))  # JSON
    client_ip: str | None = Field(default=None, max_length=64)


class IdempotencyKey(SQLModel, table=True):
    """The first answer to a create sent with an `Idempotency-Key`, kept 24 hours."""

    __tablename__ = "idempotency_keys"

    principal: str = Field(primary_key=True, max_length=100)  # who sent it
    key: str = Field(primary_key=True, max_length=200)
    request_hash: str = Field(max_length=64)  # method, path and body
    status: int
    body: str = Field(sa_column=Column(Text, nullable=False))
    created_at: float


# -- billing (plans, Stripe, message quotas) ------------------------------------


class Subscription(SQLModel, table=True):
    """An organization's Stripe subscription, as last fetched from Stripe (never from an event)."""

    __tablename__ = "subscriptions"

    id: str = Field(primary_key=True, max_length=100)  # Stripe's sub_…
    organization_id: int = Field(foreign_key="organizations.id", index=True)
    status: str = Field(max_length=32)  # active, trialing, past_due, canceled, incomplete, …
    plan: str | None = Field(default=None, max_length=40)  # the [plans.ID] of its price
    price: str | None = Field(default=None, max_length=200)  # the price's lookup key
    current_period_end: float | None = None
    cancel_at_period_end: bool = False
    past_due_since: float | None = None  # when smtpy first saw it past_due (the grace period)
    created_at: float
    updated_at: float


# -- events and webhooks ---------------------------------------------------------


class Webhook(SQLModel, table=True):
    """An organization's webhook endpoint: the events it wants, signed with its own secret.

    During a rotation the previous secret signs too, until `previous_secret_until`.
    `failing_since` is set by the first failed attempt and cleared by a success;
    an endpoint failing for days, or answering 410, is disabled with a reason.
    """

    __tablename__ = "webhooks"

    id: str = Field(primary_key=True, max_length=32)
    organization_id: int = Field(foreign_key="organizations.id", index=True)
    url: str = Field(max_length=2000)
    events: str  # JSON list of event types
    secret: str = Field(max_length=100)  # whsec_…
    previous_secret: str | None = Field(default=None, max_length=100)
    previous_secret_until: float | None = None
    enabled: bool = True
    disabled_reason: str | None = Field(default=None, max_length=500)
    failing_since: float | None = None
    created_at: float
    updated_at: float


class StripeEvent(SQLModel, table=True):
    """A Stripe event id already handled: a replayed delivery has no second effect."""

    __tablename__ = "stripe_events"

    id: str = Field(primary_key=True, max_length=100)
    type: str = Field(max_length=100)
    received_at: float


class UsageMonth(SQLModel, table=True):
    """Messages an organization received in a month (UTC, "2026-12"), and the notices sent."""

    __tablename__ = "usage_months"

    organization_id: int = Field(foreign_key="organizations.id", primary_key=True)
    month: str = Field(primary_key=True, max_length=7)
    messages: int = Field(sa_column=Column(BigInteger, nullable=False))
    notified_80: bool = False
    notified_100: bool = False
    updated_at: float


class WebhookFeed(SQLModel, table=True):
    """How far the message log has been made into webhook events: one row (`id` 1).

    `log_id` is the last row read; on PostgreSQL the cursor is (`txid`, `log_id`), the
    order of commits (`smtpy.queue.event_feed`). `updated_at`: when it last moved.
    """

    __tablename__ = "webhook_feed"

    id: int = Field(primary_key=True)
    log_id: int = Field(sa_column=Column(BigInteger, nullable=False))
    txid: int = Field(sa_column=Column(BigInteger, nullable=False))
    updated_at: float


class WebhookEvent(SQLModel, table=True):
    """The outbox: one event, its body as sent (`{"type","timestamp","data"}`)."""

    __tablename__ = "webhook_events"

    # Found by their id only (from a delivery's `event_id`): no other index, so that an
    # event is written into two B-trees, its row and its key.
    id: str = Field(primary_key=True, max_length=40)  # the `webhook-id` header
    organization_id: int
    type: str = Field(max_length=40)
    created_at: float
    body: str = Field(sa_column=Column(Text, nullable=False))


class WebhookDelivery(SQLModel, table=True):
    """One event for one endpoint, with its queue state (leased like the mail queue).

    status: pending (due or waiting), delivered, failed (retries exhausted,
    refused, or the endpoint gone).
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_webhook", "webhook_id", "created_at"),
        # Only leased deliveries: a new one (not leased) is written without touching it.
        Index(
            "ix_webhook_deliveries_lease",
            "lease_owner",
            sqlite_where=text("lease_owner IS NOT NULL"),
            postgresql_where=text("lease_owner IS NOT NULL"),
        ),
    )

    id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    )
    event_id: str = Field(foreign_key="webhook_events.id", max_length=40, index=True)
    webhook_id: str = Field(foreign_key="webhooks.id", max_length=32)
    status: str = Field(default="pending", max_length=16)
    attempts: int = 0
    next_attempt_at: float
    lease_owner: str | None = Field(default=None, max_length=100)
    last_status_code: int | None = None
    last_error: str | None = Field(default=None, max_length=500)
    created_at: float
    updated_at: float


class WebhookAttempt(SQLModel, table=True):
    """One POST of a delivery: the answer's status, how long it took, its body cut short."""

    __tablename__ = "webhook_attempts"

    id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    )
    delivery_id: int = Field(
        sa_column=Column(
            BigInteger().with_variant(Integer(), "sqlite"),
            ForeignKey("webhook_deliveries.id"),
            nullable=False,
            index=True,
        )
    )
    at: float
    status_code: int | None = None
    duration_ms: int
    response_body: str | None = Field(default=None, max_length=2000)
    error: str | None = Field(default=None, max_length=500)
