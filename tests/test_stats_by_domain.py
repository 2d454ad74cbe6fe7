"""The per-domain counts the dashboard's statistics page shows: from the hourly rollup
and the open hours alike, one organization's domains only."""

from __future__ import annotations

import time

from resourceworld import log, served_domain
from smtpy.admin import stats
from smtpy.admin.organizations import add_organization
from smtpy.queue.message_log import LogEvent
from smtpy.store.db import Database


def event(at: float, kind: str, domain: str) -> LogEvent:
    return LogEvent(at=at, event=kind, queue_id="Q1", alias=f"a@{domain}", domain=domain)


def test_counts_per_domain_sum_sealed_and_open_hours_of_one_organization(store_url: str) -> None:
    with Database(store_url) as db:
        acme = add_organization(db=db, name="acme").id
        other = add_organization(db=db, name="globex").id
    served_domain(store_url, acme, "acme.test")
    served_domain(store_url, acme, "side.test")
    served_domain(store_url, other, "globex.test")
    now = time.time()
    old = now - 5 * 3600  # rolled up into message_log_hourly
    log(
        store_url,
        [
            event(old, "received", "acme.test"),
            event(old, "delivered", "acme.test"),
            event(old, "bounced", "side.test"),
            event(now - 60, "received", "acme.test"),  # the open hour, counted from the log
            event(now - 60, "rejected", "side.test"),
            event(now - 60, "deferred", "side.test"),
            event(old, "received", "globex.test"),
            event(now - 60, "received", "globex.test"),
        ],
    )
    with Database(store_url) as db:
        rows = stats.by_domain(db=db, org=acme, since=now - 86400, until=now + 1)
        rolled = db.scalar("SELECT count(*) FROM message_log_hourly")
    assert rolled  # the older hour really came from the rollup
    assert [r.model_dump() for r in rows] == [
        {
            "domain": "acme.test",
            "received": 2,
            "forwarded": 1,
            "bounced": 0,
            "rejected": 0,
            "deferred": 0,
        },
        {
            "domain": "side.test",
            "received": 0,
            "forwarded": 0,
            "bounced": 1,
            "rejected": 1,
            "deferred": 1,
        },
    ]
