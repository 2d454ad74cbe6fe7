"""The errors smtpy's core raises, and what each edge makes of them.

Every error a user can cause or meet in normal operation is a subclass of
`SmtpyError` and carries a one-line message that says what went wrong and,
where it helps, what to do next. The shells translate them once:

    SmtpyError
    ├── InvalidInput          bad address, domain, pattern, option   CLI exit 2, HTTP 422
    │   ├── NotFound          unknown domain, alias, key, queue id    CLI exit 2, HTTP 404
    │   ├── Conflict          duplicate domain, alias, selector       CLI exit 2, HTTP 409
    │   │   └── BillingDisabled  no Stripe key: no checkout or portal  CLI exit 2, HTTP 409
    │   └── BadSignature      a webhook's signature is wrong or old   HTTP 400
    ├── PlanLimit             the plan allows no more of something    CLI exit 2, HTTP 402
    ├── Unauthorized          no or bad credentials, expired session  CLI exit 2, HTTP 401
    ├── Forbidden             the role does not allow it              CLI exit 2, HTTP 403
    ├── TooManyRequests       throttled: retry after some seconds     CLI exit 1, HTTP 429
    ├── ConfigError           a setting is invalid                    CLI exit 2
    ├── StoreError            the database failed or is unreachable   CLI exit 1, SMTP 451
    │   ├── SchemaOutdated    the schema needs `smtpy db upgrade`     CLI exit 2
    │   └── StoreMissing      no store where the settings point       CLI exit 2
    └── CheckFailed           a check ran and found problems          CLI exit 1

Anything that is not an `SmtpyError` is a bug: the daemon treats it as a
temporary failure (4xx, never a bounce) and logs it without local variables.
"""

from __future__ import annotations


class SmtpyError(Exception):
    """Base class of every error smtpy reports to a user."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidInput(SmtpyError):
    """The input is malformed or not allowed; nothing was changed."""

    exit_code = 2


class NotFound(InvalidInput):
    """The named domain, alias, key or queue entry does not exist."""


class Conflict(InvalidInput):
    """The object already exists or the change contradicts the store."""


class BadSignature(InvalidInput):
    """A signed request (Stripe's webhook) whose signature is wrong or too old."""


class BillingDisabled(Conflict):
    """Billing through Stripe is off (no SMTPY_STRIPE_SECRET_KEY): nothing to pay or manage."""


class PlanLimit(SmtpyError):
    """The organization's plan allows no more of something (`limit`: domains, aliases, …)."""

    exit_code = 2

    def __init__(self, message: str, *, limit: str, plan: str) -> None:
        super().__init__(message)
        self.limit = limit
        self.plan = plan


class Unauthorized(SmtpyError):
    """No credentials, or credentials that are wrong, expired or revoked."""

    exit_code = 2


class Forbidden(SmtpyError):
    """The caller is known but may not do this (its role, or a missing CSRF token)."""

    exit_code = 2


class TooManyRequests(SmtpyError):
    """Too many attempts: try again after `retry_after` seconds."""

    exit_code = 1

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = max(1, retry_after)


class ConfigError(SmtpyError):
    """A setting is invalid."""

    exit_code = 2


class StoreError(SmtpyError):
    """The store could not be read or written."""

    exit_code = 1


class StorageFull(StoreError):
    """The store has no room left (a full disk or quota): retry once space is freed."""


class SchemaOutdated(StoreError):
    """The database schema is older than this version of smtpy."""

    exit_code = 2


class StoreMissing(StoreError):
    """No store exists where the settings point, and this command does not create one."""

    exit_code = 2


class CheckFailed(SmtpyError):
    """A check ran and found problems (for example missing DNS records)."""

    exit_code = 1
