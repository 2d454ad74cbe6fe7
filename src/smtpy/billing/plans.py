"""An organization's plan and limits, what it uses, and the check before each create.

The effective plan of an organization, first that applies:

1. its Stripe subscription, when Stripe says `active` or `trialing` (a subscription
   that is `incomplete` — payment not confirmed yet — lifts nothing);
2. the same while `past_due`, for `billing_grace_days` after smtpy first saw it so;
3. the plan the operator put it on (`smtpy plan set ORG PLAN`);
4. the default plan (`default = true`); with none, nothing is limited.

The operator's overrides (`smtpy org limits ORG --domains 50`) apply on top of any
of them. A cancelled subscription stays `active` in Stripe until the end of the
paid period, so the plan lasts until then; a period end that passed while the
subscription still reads active (a missed webhook) counts as ended.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from smtpy.accounts import audit
from smtpy.config import LIMIT_KEYS, Plan
from smtpy.errors import InvalidInput, NotFound, PlanLimit
from smtpy.store.db import Database

if TYPE_CHECKING:
    from smtpy.config import Settings

Kind = Literal[
    "domains", "aliases", "destinations", "webhooks", "messages_per_month", "max_message_size"
]
LIVE = frozenset({"active", "trialing"})  # Stripe confirmed payment (or a trial it runs)
DAY = 86400.0

# How each limit reads in a sentence.
_NOUNS: dict[str, str] = {
    "domains": "domains",
    "aliases": "aliases",
    "destinations": "destination addresses",
    "webhooks": "webhooks",
    "messages_per_month": "messages a month",
    "max_message_size": "bytes a message",
}
UNLIMITED_ID = "unlimited"


@dataclass(frozen=True)
class Catalog:
    """The configured plans and the grace period of a failed payment."""

    plans: Mapping[str, Plan] = field(default_factory=dict)
    grace_days: int = 7

    @classmethod
    def of(cls, settings: Settings) -> Catalog:
        return cls(settings.plans, settings.billing_grace_days)

    @property
    def default_id(self) -> str | None:
        return next((pid for pid, plan in self.plans.items() if plan.default), None)

    def by_price(self, lookup_key: str | None) -> str | None:
        """The plan sold through the Stripe price with this lookup key."""
        if lookup_key is None:
            return None
        return next(
            (pid for pid, plan in self.plans.items() if plan.stripe_price == lookup_key), None
        )

    def get(self, plan_id: str) -> Plan:
        plan = self.plans.get(plan_id)
        if plan is None:
            known = ", ".join(self.plans) or "none are configured"
            raise NotFound(f"no plan {plan_id!r}; the plans are: {known} (smtpy plan list)")
        return plan


# -- public shapes --------------------------------------------------------------


class PlanPublic(BaseModel):
    id: str
    name: str
    price: str | None
    default: bool
    stripe_price: str | None
    limits: dict[str, int | None]


class SubscriptionPublic(BaseModel):
    id: str
    status: str
    plan: str | None
    current_period_end: str | None  # RFC 3339
    cancel_at_period_end: bool
    past_due_since: str | None
    grace_ends: str | None  # past_due: when the plan falls back to the default one


class EffectivePlan(BaseModel):
    plan: PlanPublic
    source: Literal["subscription", "grace", "operator", "default", "none"]
    limits: dict[str, int | None]  # the plan's, with the operator's overrides
    overrides: dict[str, int | None]


class BillingOverview(BaseModel):
    plan: PlanPublic
    source: str
    limits: dict[str, int | None]
    overrides: dict[str, int | None]
    usage: dict[str, int | None]
    subscription: SubscriptionPublic | None
    billing: bool  # checkout and portal available (a Stripe key is set)


def plan_public(plan_id: str, plan: Plan) -> PlanPublic:
    return PlanPublic(
        id=plan_id,
        name=plan.name,
        price=plan.price,
        default=plan.default,
        stripe_price=plan.stripe_price,
        limits={key: getattr(plan.limits, key) for key in LIMIT_KEYS},
    )


_UNLIMITED = PlanPublic(
    id=UNLIMITED_ID,
    name="Unlimited",
    price=None,
    default=True,
    stripe_price=None,
    limits=dict.fromkeys(LIMIT_KEYS),
)


def list_plans(catalog: Catalog) -> list[PlanPublic]:
    """The configured plans, as written in the file."""
    return [plan_public(pid, plan) for pid, plan in catalog.plans.items()]


def _rfc3339(at: float | None) -> str | None:
    if at is None:
        return None
    return datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")


def month_of(now: float) -> str:
    """The usage month of a moment: "2026-12" (UTC)."""
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m")


# -- the effective plan ------------------------------------------------------------


def _org_row(db: Database, org: int) -> dict[str, Any]:
    row = db.one(
        "SELECT id, name, plan, limit_overrides, stripe_customer_id FROM organizations"
        " WHERE id = :org",
        {"org": org},
    )
    if row is None:
        raise NotFound(f"no organization with id {org}")
    return dict(row)


def overrides_of(text: str | None) -> dict[str, int | None]:
    if not text:
        return {}
    loaded = json.loads(text)
    return {k: (None if v is None else int(v)) for k, v in loaded.items() if k in LIMIT_KEYS}


_SUBSCRIPTIONS = (
    "SELECT id, organization_id, status, plan, current_period_end, cancel_at_period_end,"
    " past_due_since, updated_at FROM subscriptions"
)


def _rank(row: Mapping[str, Any]) -> tuple[bool, bool, float]:
    return (row["status"] in LIVE, row["status"] == "past_due", float(row["updated_at"]))


def subscription_row(db: Database, org: int) -> dict[str, Any] | None:
    """The organization's subscription that matters: a live one first, then the newest."""
    rows = db.all(_SUBSCRIPTIONS + " WHERE organization_id = :org", {"org": org})
    return max((dict(r) for r in rows), key=_rank, default=None)


def _paid_plan(
    sub: Mapping[str, Any] | None, catalog: Catalog, now: float
) -> tuple[str, str] | None:
    """(plan id, source) from a subscription that holds one now, else None."""
    if sub is None or sub["plan"] not in catalog.plans:
        return None
    end = sub["current_period_end"]
    if sub["cancel_at_period_end"] and end is not None and end < now:
        return None  # cancelled and the paid period is over (whatever the last event said)
    if sub["status"] in LIVE:
        return str(sub["plan"]), "subscription"
    if sub["status"] == "past_due":
        since = sub["past_due_since"] if sub["past_due_since"] is not None else now
        if now < since + catalog.grace_days * DAY:
            return str(sub["plan"]), "grace"
    return None


def compute(
    org_row: Mapping[str, Any], sub: Mapping[str, Any] | None, catalog: Catalog, now: float
) -> EffectivePlan:
    """The effective plan from an organization's row and its subscription (no store access)."""
    overrides = overrides_of(org_row["limit_overrides"])
    chosen = _paid_plan(sub, catalog, now)
    if chosen is None and org_row["plan"] in catalog.plans:
        chosen = (str(org_row["plan"]), "operator")
    if chosen is None and catalog.default_id is not None:
        chosen = (catalog.default_id, "default")
    if chosen is None:
        plan, source = _UNLIMITED, "none"
    else:
        plan, source = plan_public(chosen[0], catalog.plans[chosen[0]]), chosen[1]
    limits = {**plan.limits, **overrides}
    return EffectivePlan(plan=plan, source=source, limits=limits, overrides=overrides)  # type: ignore[arg-type]


def effective_plan(
    *, db: Database, org: int, catalog: Catalog, now: float | None = None
) -> EffectivePlan:
    """The plan and limits that hold for `org` now."""
    now = time.time() if now is None else now
    return compute(_org_row(db, org), subscription_row(db, org), catalog, now)


def effective_plans(db: Database, catalog: Catalog, now: float) -> dict[int, EffectivePlan]:
    """Every organization's effective plan, in two queries (the daemon's quota refresh)."""
    orgs = db.all("SELECT id, plan, limit_overrides FROM organizations")
    subs: dict[int, dict[str, Any]] = {}
    for row in db.all(_SUBSCRIPTIONS):
        org = int(row["organization_id"])
        if org not in subs or _rank(row) > _rank(subs[org]):
            subs[org] = dict(row)
    return {int(o["id"]): compute(o, subs.get(int(o["id"])), catalog, now) for o in orgs}


# -- usage ---------------------------------------------------------------------------

_COUNTS: dict[str, str] = {
    "domains": "SELECT count(*) FROM domains WHERE organization_id = :org",
    "aliases": "SELECT count(*) FROM aliases a JOIN domains d ON d.id = a.domain_id"
    " WHERE d.organization_id = :org",
}


def destinations_of(db: Database, org: int) -> set[str]:
    """The distinct destination addresses of the organization's aliases, their fallbacks
    included (lower case)."""
    rows = db.all(
        "SELECT a.destinations, a.fallbacks FROM aliases a JOIN domains d ON d.id = a.domain_id"
        " WHERE d.organization_id = :org",
        {"org": org},
    )
    found: set[str] = set()
    for row in rows:
        found.update(str(d).lower() for d in json.loads(row["destinations"] or "[]"))
        found.update(str(d).lower() for d in json.loads(row["fallbacks"] or "[]"))
    return found


def messages_this_month(db: Database, org: int, now: float | None = None) -> int:
    now = time.time() if now is None else now
    value = db.scalar(
        "SELECT messages FROM usage_months WHERE organization_id = :org AND month = :m",
        {"org": org, "m": month_of(now)},
    )
    return int(value or 0)


def count(db: Database, org: int, kind: str) -> int | None:
    """How much of `kind` the organization uses now (None: smtpy does not count it here)."""
    if kind in _COUNTS:
        return int(db.scalar(_COUNTS[kind], {"org": org}) or 0)
    if kind == "destinations":
        return len(destinations_of(db, org))
    if kind == "messages_per_month":
        return messages_this_month(db, org)
    return None  # webhooks: counted by their own module; max_message_size: no count


def usage(*, db: Database, org: int) -> dict[str, int | None]:
    return {kind: count(db, org, kind) for kind in LIMIT_KEYS if kind != "max_message_size"}


def limit_message(kind: str, limit: int, plan: PlanPublic, used: int | None = None) -> str:
    noun = _NOUNS.get(kind, kind)
    has = f" and this organization has {used}" if used is not None else ""
    return (
        f"limit of {noun} reached: the {plan.name} plan allows {limit}{has}; upgrade the "
        f"plan (billing page, POST /api/v1/billing/checkout) or ask the operator to raise it "
        f"(smtpy plan limits ORG --{kind.replace('_', '-')} N)"
    )


def hold_organization(db: Database, org: int) -> None:
    """Make what counts against `org`'s limits wait for the caller's transaction: on
    PostgreSQL its row is locked until that transaction ends (two creates at once would
    each count one below the limit, and both pass); SQLite's write transaction holds the
    whole store already. Call it before counting."""
    if db.dialect == "postgresql":
        db.execute("SELECT id FROM organizations WHERE id = :org FOR UPDATE", {"org": org})


def check_limit(
    db: Database,
    org: int,
    kind: Kind,
    *,
    catalog: Catalog | None,
    adding: int = 1,
    used: int | None = None,
) -> None:
    """Raise PlanLimit when `adding` more of `kind` would pass the organization's limit.

    `used`: the current count when the caller has it (webhooks are counted by their
    own module). Nothing is checked with no catalog (a shell that has no settings).
    For `max_message_size`, `adding` is the message's size.
    """
    if catalog is None or adding <= 0:
        return
    if not catalog.plans and _no_overrides(db, org):
        return  # billing off: nothing is limited (and no query beyond this one)
    effective = effective_plan(db=db, org=org, catalog=catalog)
    limit = effective.limits.get(kind)
    if limit is None:
        return
    if kind == "max_message_size":
        if adding > limit:
            raise PlanLimit(
                limit_message(kind, limit, effective.plan), limit=kind, plan=effective.plan.id
            )
        return
    if used is None:
        hold_organization(db, org)
    current = used if used is not None else count(db, org, kind)
    if current is None:
        return
    if current + adding > limit:
        raise PlanLimit(
            limit_message(kind, limit, effective.plan, current),
            limit=kind,
            plan=effective.plan.id,
        )


def check_destinations(
    db: Database, org: int, destinations: Iterable[str], *, catalog: Catalog | None
) -> None:
    """The destination addresses limit, for an alias that adds `destinations`."""
    if catalog is None:
        return
    wanted = {d.lower() for d in destinations}
    if not wanted:
        return
    hold_organization(db, org)
    existing = destinations_of(db, org)
    new = wanted - existing
    check_limit(db, org, "destinations", catalog=catalog, adding=len(new), used=len(existing))


def _no_overrides(db: Database, org: int) -> bool:
    return not db.scalar("SELECT limit_overrides FROM organizations WHERE id = :org", {"org": org})


# -- what the operator sets -----------------------------------------------------------


def set_plan(*, db: Database, org: int, plan: str | None, catalog: Catalog) -> EffectivePlan:
    """Put the organization on `plan` (None: back to the default plan). A live Stripe
    subscription still wins while it lasts."""
    if plan is not None:
        catalog.get(plan)
    with db.transaction():
        _org_row(db, org)
        db.execute("UPDATE organizations SET plan = :p WHERE id = :org", {"p": plan, "org": org})
        audit.record(db, org=org, action="billing.plan", target=plan or "default")
    return effective_plan(db=db, org=org, catalog=catalog)


def set_overrides(
    *,
    db: Database,
    org: int,
    changes: Mapping[str, int | Literal["plan"] | None],
    catalog: Catalog,
    reset: bool = False,
) -> EffectivePlan:
    """Override some limits: a number, None for no limit, "plan" to use the plan's again."""
    for key, value in changes.items():
        if key not in LIMIT_KEYS:
            raise InvalidInput(f"{key!r} is no limit; the limits are {', '.join(LIMIT_KEYS)}")
        if isinstance(value, int) and value < 0:
            raise InvalidInput(f"the {key} limit must be 0 or more")
    with db.transaction():
        current = {} if reset else overrides_of(_org_row(db, org)["limit_overrides"])
        for key, value in changes.items():
            if value == "plan":
                current.pop(key, None)
            else:
                current[key] = value
        text = json.dumps(current, sort_keys=True) if current else None
        db.execute(
            "UPDATE organizations SET limit_overrides = :o WHERE id = :org", {"o": text, "org": org}
        )
        audit.record(db, org=org, action="billing.limits", detail=current)
    return effective_plan(db=db, org=org, catalog=catalog)


def overview(*, db: Database, org: int, settings: Settings) -> BillingOverview:
    """GET /billing: plan, limits, usage, subscription."""
    catalog = Catalog.of(settings)
    now = time.time()
    effective = effective_plan(db=db, org=org, catalog=catalog, now=now)
    sub = subscription_row(db, org)
    public = None
    if sub is not None:
        since = sub["past_due_since"]
        public = SubscriptionPublic(
            id=sub["id"],
            status=sub["status"],
            plan=sub["plan"],
            current_period_end=_rfc3339(sub["current_period_end"]),
            cancel_at_period_end=bool(sub["cancel_at_period_end"]),
            past_due_since=_rfc3339(since),
            grace_ends=_rfc3339(since + catalog.grace_days * DAY)
            if sub["status"] == "past_due" and since is not None
            else None,
        )
    return BillingOverview(
        plan=effective.plan,
        source=effective.source,
        limits=effective.limits,
        overrides=effective.overrides,
        usage=usage(db=db, org=org),
        subscription=public,
        billing=settings.stripe_secret_key is not None,
    )
