"""The store side of the monthly message quota (`smtpy.checks.quota` is the daemon's side).

`sync_usage` runs in `smtpy serve`'s store thread every sync interval: it adds
the messages the process accepted per organization to `usage_months` and
answers the quota state of every served domain, computed for all organizations
in a few queries. The 80 % and 100 % notices go out from here, once a month
each, through smtpy's own queue: the UPDATE that marks a notice sent is the
claim, so of several processes and nodes only one sends it.
"""

from __future__ import annotations

from collections.abc import Mapping

from smtpy import log
from smtpy.accounts.mailer import base_url, queue_mail
from smtpy.billing.plans import Catalog, EffectivePlan, effective_plans, month_of
from smtpy.checks.quota import QuotaState
from smtpy.config import Settings
from smtpy.events import outbox
from smtpy.events.types import QuotaData
from smtpy.store.db import Database

logger = log.get(__name__)

_ADD = """
INSERT INTO usage_months (organization_id, month, messages, notified_80, notified_100, updated_at)
VALUES (:org, :month, :n, :no, :no, :now)
ON CONFLICT (organization_id, month) DO UPDATE SET
    messages = usage_months.messages + :n, updated_at = :now
"""


def add_messages(db: Database, counts: Mapping[int, int], *, now: float) -> None:
    """Add accepted messages per organization to this month's usage (one transaction)."""
    if not counts:
        return
    month = month_of(now)
    with db.transaction():
        for org, n in sorted(counts.items()):  # one order: no deadlock between nodes
            db.execute(_ADD, {"org": org, "month": month, "n": n, "no": False, "now": now})


def sync_usage(
    db: Database, counts: Mapping[int, int], now: float, *, settings: Settings
) -> dict[str, QuotaState]:
    """Add `counts`, send the notices due, answer the quota state of every served domain."""
    add_messages(db, counts, now=now)
    catalog = Catalog.of(settings)
    plans = effective_plans(db, catalog, now)
    month = month_of(now)
    used = {
        int(r["organization_id"]): (
            int(r["messages"]),
            bool(r["notified_80"]),
            bool(r["notified_100"]),
        )
        for r in db.all(
            "SELECT organization_id, messages, notified_80, notified_100 FROM usage_months"
            " WHERE month = :m",
            {"m": month},
        )
    }
    states: dict[int, QuotaState] = {}
    for org, effective in plans.items():
        limit = effective.limits.get("messages_per_month")
        messages, sent_80, sent_100 = used.get(org, (0, False, False))
        states[org] = QuotaState(
            org=org,
            limit=limit,
            used=messages,
            max_message_size=effective.limits.get("max_message_size"),
        )
        if limit is not None and limit > 0:
            if messages >= limit and not sent_100:
                _notice(db, settings, org, effective, messages, limit, 100, month)
            elif messages >= 0.8 * limit and not sent_80:
                _notice(db, settings, org, effective, messages, limit, 80, month)
    domains = db.all("SELECT name, organization_id FROM domains WHERE NOT pending")
    return {
        str(row["name"]): states[int(row["organization_id"])]
        for row in domains
        if int(row["organization_id"]) in states
    }


def _owners(db: Database, org: int) -> list[str]:
    rows = db.all(
        "SELECT u.email FROM memberships m JOIN users u ON u.id = m.user_id"
        " WHERE m.organization_id = :org AND m.role = 'owner' ORDER BY u.email",
        {"org": org},
    )
    return [str(r["email"]) for r in rows]


def _notice(
    db: Database,
    settings: Settings,
    org: int,
    effective: EffectivePlan,
    messages: int,
    limit: int,
    percent: int,
    month: str,
) -> None:
    """Claim the notice (one process wins), mail the owners, emit the event; one transaction."""
    column = "notified_100" if percent == 100 else "notified_80"
    with db.transaction():
        claimed = db.execute(
            f"UPDATE usage_months SET {column} = :yes"  # noqa: S608 - a fixed column name
            f" WHERE organization_id = :org AND month = :m AND NOT {column}",
            {"yes": True, "org": org, "m": month},
        )
        if not claimed:
            return
        if percent == 100:  # the 80 % notice is moot once 100 % is reached
            db.execute(
                "UPDATE usage_months SET notified_80 = :yes WHERE organization_id = :org"
                " AND month = :m",
                {"yes": True, "org": org, "m": month},
            )
        name = db.scalar("SELECT name FROM organizations WHERE id = :org", {"org": org})
        for owner in _owners(db, org):
            queue_mail(
                db=db,
                settings=settings,
                to=owner,
                subject=_subject(percent, str(name)),
                body=_body(percent, str(name), effective, messages, limit, settings),
            )
        if percent == 100:
            quota_reached(db, org=org, month=month, messages=messages, limit=limit)
    logger.info("quota_notice", organization=org, percent=percent, messages=messages, limit=limit)


def quota_reached(db: Database, *, org: int, month: str, messages: int, limit: int) -> None:
    """The `quota.reached` event, in the transaction that claimed the 100 % notice."""
    logger.info("quota_reached", organization=org, month=month, messages=messages, limit=limit)
    outbox.emit(
        db,
        org=org,
        type_="quota.reached",
        data=QuotaData(limit="messages_per_month", value=limit, usage=messages),
    )


def _subject(percent: int, org: str) -> str:
    if percent == 100:
        return f"{org}: the monthly message quota is used up"
    return f"{org}: {percent} % of the monthly message quota used"


def _body(
    percent: int, org: str, effective: EffectivePlan, messages: int, limit: int, settings: Settings
) -> str:
    what = (
        "New mail for its domains is now refused for a while (senders retry, and nothing is\n"
        "lost): it is accepted again once the plan is raised or the next month begins.\n"
        if percent == 100
        else "At 100 %, new mail is refused until the plan is raised or the month ends.\n"
    )
    return (
        "Hello,\n\n"
        f"the organization {org} has received {messages} of the {limit} messages its\n"
        f"{effective.plan.name} plan allows this month ({percent} %).\n"
        f"{what}\n"
        f"Plans and usage: {base_url(settings)}/billing\n"
    )
