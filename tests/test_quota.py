"""The monthly message quota against the real `smtpy serve`: the message over the quota
is refused at RCPT with a temporary 452, accepted once the plan is raised, nothing is
lost; the owners are told at 80 % and 100 %, once each; the same across two serving
processes, which share their counts through the store."""

from __future__ import annotations

import collections
import json
import smtplib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from apiserver import seed_org
from conftest import Cli
from dnsserver import DNSServer
from mailpeers import (
    DOMAIN,
    SENDER,
    Forwarder,
    Serve,
    forwarding_world,
    make_message,
    message_id_counts,
    send,
    smtp_client,
)
from smtpy.store.db import Database

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

ALIAS = f"team@{DOMAIN}"
OWNER = "owner@dest2.test"  # the default organization's owner: notices reach dest2's MX
PLANS = {
    "free": {"name": "Free", "default": True, "limits": {"messages_per_month": 5}},
    "pro": {"name": "Pro", "stripe_price": "smtpy_pro", "limits": {"messages_per_month": 1000}},
}


@pytest.fixture
def forwarder(
    cli: Cli, cli_env: dict[str, str], dns_server: DNSServer, tmp_path: Path
) -> Iterator[Forwarder]:
    cli_env["SMTPY_PLANS"] = json.dumps(PLANS)
    with forwarding_world(cli, cli_env, dns_server, tmp_path, quota_sync_interval="0.2") as world:
        world.alias(ALIAS, "sink@dest1.test")
        seed_org(world.database_url, org="default", email=OWNER)
        yield world


def used(world: Forwarder) -> int:
    with Database(world.database_url) as db:
        return int(db.scalar("SELECT coalesce(sum(messages), 0) FROM usage_months") or 0)


def wait_used(world: Forwarder, count: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while used(world) < count:
        assert time.monotonic() < deadline, f"usage never reached {count}: {used(world)}"
        time.sleep(0.05)
    assert used(world) == count


def deliver(daemon: Serve, mid: str) -> None:
    refused = send(daemon.port, SENDER, [ALIAS], make_message(message_id=mid, to=ALIAS))
    assert refused == {}


def refused_at_rcpt(daemon: Serve, mid: str) -> tuple[int, bytes]:
    """Send one message; the RCPT reply it got (the message must be refused)."""
    with (
        smtp_client(daemon.port) as client,
        pytest.raises(smtplib.SMTPRecipientsRefused) as refused,
    ):
        client.sendmail(SENDER, [ALIAS], make_message(message_id=mid, to=ALIAS))
    return refused.value.recipients[ALIAS]


def full_in(daemon: Serve, processes: int, name: str = "quota_full", times: int = 1) -> None:
    """Wait until `processes` serving processes logged `name` (`times` each)."""
    deadline = time.monotonic() + 20
    while True:
        seen = collections.Counter(e.get("process") for e in daemon.events(name))
        if sum(1 for n in seen.values() if n >= times) >= processes:
            return
        assert time.monotonic() < deadline, f"{name} in {seen}:\n{daemon.log_tail()}"
        time.sleep(0.05)


def notices(world: Forwarder) -> list[str]:
    return [
        str(r.message["Subject"])
        for r in world.peers.received
        if OWNER in r.rcpt_tos and "quota" in str(r.message["Subject"])
    ]


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_over_the_quota_is_refused_for_now_and_accepted_once_the_plan_is_raised(
    forwarder: Forwarder,
) -> None:
    daemon = forwarder.start()
    sent = [f"<q{i}@sender.test>" for i in range(6)]
    for mid in sent[:4]:
        deliver(daemon, mid)
    wait_used(forwarder, 4)
    forwarder.peers.wait_for(lambda got: [s for s in notices(forwarder) if "80 %" in s] or None)
    deliver(daemon, sent[4])  # the fifth: the last the plan allows

    code, text = refused_at_rcpt(daemon, sent[5])
    assert code == 452 and b"4.2.2" in text and b"quota" in text
    assert refused_at_rcpt(daemon, sent[5])[0] == 452  # the sender retries: still refused
    wait_used(forwarder, 5)
    forwarder.peers.wait_for(lambda got: [s for s in notices(forwarder) if "used up" in s] or None)

    shown = json.loads(forwarder.run("org", "show", "default", "--json"))["billing"]
    assert shown["usage"]["messages_per_month"] == 5
    assert shown["limits"]["messages_per_month"] == 5

    forwarder.run("plan", "set", "default", "pro")
    full_in(daemon, 1, "quota_open")
    deliver(daemon, sent[5])  # the retry goes through

    forwarder.peers.wait_for_ids(sent)
    forwarder.wait_settled()
    counts = message_id_counts(forwarder.peers.received)
    assert {counts[mid] for mid in sent} == {1}  # every message, once: nothing lost
    wait_used(forwarder, 6)
    subjects = notices(forwarder)
    assert len(subjects) == 2, subjects  # 80 % once, 100 % once
    assert daemon.stop() == 0


@pytest.mark.parametrize("store_url", ["sqlite", "postgresql"], indirect=True)
def test_two_serving_processes_share_the_quota(forwarder: Forwarder) -> None:
    daemon = forwarder.start(processes="2")
    sent = [f"<p{i}@sender.test>" for i in range(5)]
    for mid in sent:  # one connection each: the processes take them in turn
        deliver(daemon, mid)
    wait_used(forwarder, 5)
    full_in(daemon, 2)  # both processes learnt, through the store, that it is used up
    for attempt in range(6):  # whichever process takes the connection refuses
        assert refused_at_rcpt(daemon, f"<late{attempt}@sender.test>")[0] == 452
    forwarder.run("plan", "limits", "default", "--messages-per-month", "7")
    full_in(daemon, 2, "quota_open")
    deliver(daemon, "<late0@sender.test>")
    deliver(daemon, "<late1@sender.test>")
    wait_used(forwarder, 7)
    full_in(daemon, 2, times=2)  # used up again, in both
    assert refused_at_rcpt(daemon, "<late2@sender.test>")[0] == 452
    delivered = [*sent, "<late0@sender.test>", "<late1@sender.test>"]
    forwarder.peers.wait_for_ids(delivered)
    forwarder.wait_settled()
    counts = message_id_counts(forwarder.peers.received)
    assert {counts[mid] for mid in delivered} == {1}
    assert "<late2@sender.test>" not in counts
    assert daemon.stop() == 0


# -- the bookkeeping of one process (no daemon) ---------------------------------------


def test_a_message_counts_once_per_organization_and_a_failed_sync_keeps_the_counts() -> None:
    import asyncio

    from smtpy.checks.quota import MessageQuota, QuotaState, QuotaSync

    quota = MessageQuota()
    one = QuotaState(org=1, limit=3, used=1)
    quota.apply({"a.test": one, "b.test": one, "c.test": QuotaState(org=2, limit=None, used=0)})
    quota.count(["a.test", "b.test", "c.test", "unknown.test"])  # two aliases of org 1
    assert not quota.reached("a.test")  # 1 shared + 1 here < 3
    quota.count(["a.test"])
    assert quota.reached("a.test") and quota.reached("b.test")
    assert not quota.reached("c.test") and not quota.reached("unknown.test")

    written: list[dict[int, int]] = []

    async def failing(fn: object) -> dict[str, QuotaState]:
        raise OSError("the store is away")

    async def working(fn: object) -> dict[str, QuotaState]:
        return fn(None)  # type: ignore[operator, no-any-return]

    def store(db: object, counts: dict[int, int], now: float) -> dict[str, QuotaState]:
        written.append(dict(counts))
        total = one.used + counts.get(1, 0)
        return {"a.test": QuotaState(org=1, limit=3, used=total)}

    assert asyncio.run(QuotaSync(quota, failing, store, interval=1).sync()) is False
    assert quota.reached("a.test")  # still counted here
    assert asyncio.run(QuotaSync(quota, working, store, interval=1).sync()) is True
    assert written == [{1: 2, 2: 1}]  # the counts of the failed sync went with this one
    assert quota.reached("a.test") and quota.state("b.test") is None
    assert quota.take_counts() == {}
