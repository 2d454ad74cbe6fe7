"""Webhook delivery from the outbox (smtpy.runtime.webhooks) to a real HTTPS receiver.

Everything is real: the store (SQLite, and PostgreSQL where SMTPY_TEST_POSTGRES_URL
is set) with its writer and reader threads, the worker, the HTTPS client, and the
receiver on loopback with a test CA, which checks every signature with the
`standardwebhooks` library. Waiting is bounded and on what the store or the
receiver holds, never on a timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from smtpy.accounts import members, users
from smtpy.admin import webhooks
from smtpy.admin.organizations import resolve_organization
from smtpy.config import Settings
from smtpy.errors import InvalidInput
from smtpy.events import outbox
from smtpy.events.types import DomainData
from smtpy.queue.writer import StoreThread
from smtpy.runtime.webhooks import WebhookSettings, WebhookWorker
from smtpy.store.db import Database
from webhook_receiver import Reply, WebhookReceiver

DOMAIN = "example.test"


@pytest.fixture
def db(store_url: str) -> Iterator[Database]:
    database = Database(store_url)
    yield database
    database.close()


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[WebhookReceiver]:
    with WebhookReceiver(tmp_path) as r:
        yield r


def org_of(db: Database) -> int:
    return resolve_organization(db=db).id


def add_hook(
    db: Database, receiver: WebhookReceiver, events: list[str] | None = None
) -> webhooks.WebhookCreated:
    hook = webhooks.create_webhook(
        db=db, org=org_of(db), url=receiver.url(), events=events, allow_private=True
    )
    receiver.secrets.append(hook.secret)
    return hook


def emit(db: Database, n: int = 1) -> list[str]:
    ids = []
    for i in range(n):
        with db.transaction():
            event = outbox.emit(
                db, org=org_of(db), type_="domain.verified", data=DomainData(domain=f"d{i}.test")
            )
        assert event is not None
        ids.append(event)
    return ids


@contextlib.asynccontextmanager
async def running(
    store_url: str,
    receiver: WebhookReceiver,
    *,
    node: str = "node-a",
    clock: Callable[[], float] = time.time,
    **overrides: Any,
) -> AsyncIterator[WebhookWorker]:
    writer = StoreThread(store_url, name=f"writer-{node}")
    reader = StoreThread(store_url, name=f"reader-{node}")
    writer.start()
    reader.start()
    options: dict[str, Any] = {
        "node": node,
        "schedule": (0, 1, 1),
        "timeout": 5.0,
        "allow_private": True,
        "ca_file": receiver.ca_file,
        "poll_seconds": 0.05,
        **overrides,
    }
    on_disabled = options.pop("on_disabled", None)
    worker = WebhookWorker(
        settings=WebhookSettings(**options),
        store=writer,
        reader=reader,
        on_disabled=on_disabled,
        clock=clock,
    )
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        await worker.stop(5)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        writer.stop()
        reader.stop()


async def settled(db: Database, hook_id: str, *, count: int = 1, within: float = 30.0) -> list[Any]:
    """The endpoint's deliveries once `count` of them are no longer pending."""
    deadline = time.monotonic() + within
    while True:
        page = webhooks.page_deliveries(db=db, org=org_of(db), webhook_id=hook_id, limit=200)
        done = [d for d in page.data if d.status != "pending"]
        if len(done) >= count:
            return page.data
        assert time.monotonic() < deadline, f"deliveries still pending: {page.data}"
        await asyncio.sleep(0.05)


def test_500_twice_then_200_is_delivered_on_the_third_attempt(
    db: Database, store_url: str, receiver: WebhookReceiver
) -> None:
    hook = add_hook(db, receiver)
    receiver.script(Reply(500, body="boom"), Reply(500, body="boom again"))
    [event_id] = emit(db)

    async def main() -> list[Any]:
        async with running(store_url, receiver):
            return await settled(db, hook.id)

    [delivery] = asyncio.run(main())
    assert delivery.status == "delivered"
    assert [t.status_code for t in delivery.tries] == [500, 500, 200]
    assert delivery.tries[0].response_body == "boom"
    hits = receiver.received()
    assert [h.status for h in hits] == [500, 500, 200]
    assert {h.id for h in hits} == {event_id}  # the same webhook-id at every attempt
    assert all(h.verified_by == (0,) for h in hits)  # standardwebhooks verifies each
    assert hits[-1].json == {
        "type": "domain.verified",
        "timestamp": hits[-1].json["timestamp"],
        "data": {"domain": "d0.test"},
    }
    assert webhooks.get_webhook(db=db, org=org_of(db), webhook_id=hook.id).failing_since is None


def test_410_disables_the_endpoint(db: Database, store_url: str, receiver: WebhookReceiver) -> None:
    hook = add_hook(db, receiver)
    receiver.script(Reply(410))
    emit(db)

    async def main() -> list[Any]:
        async with running(store_url, receiver):
            return await settled(db, hook.id)

    [delivery] = asyncio.run(main())
    assert delivery.status == "failed"
    assert [t.status_code for t in delivery.tries] == [410]
    after = webhooks.get_webhook(db=db, org=org_of(db), webhook_id=hook.id)
    assert not after.enabled
    assert "410" in (after.disabled_reason or "")
    outbox.invalidate()
    assert emit_nothing(db)  # a disabled endpoint gets no new events
    assert len(receiver.received()) == 1


def emit_nothing(db: Database) -> bool:
    with db.transaction():
        return (
            outbox.emit(db, org=org_of(db), type_="domain.verified", data={"domain": "x.test"})
            is None
        )


def test_429_with_retry_after_is_retried_when_it_says(
    db: Database, store_url: str, receiver: WebhookReceiver
) -> None:
    hook = add_hook(db, receiver)
    receiver.script(Reply(429, headers={"Retry-After": "1"}))
    emit(db)

    async def main() -> list[Any]:
        # The schedule alone would wait an hour: Retry-After says one second.
        async with running(store_url, receiver, schedule=(0, 3600)):
            return await settled(db, hook.id)

    [delivery] = asyncio.run(main())
    assert delivery.status == "delivered"
    assert [t.status_code for t in delivery.tries] == [429, 200]


def test_a_slow_answer_past_the_timeout_is_an_error_and_retried(
    db: Database, store_url: str, receiver: WebhookReceiver
) -> None:
    hook = add_hook(db, receiver)
    receiver.script(Reply(200, delay=3.0))
    emit(db)

    async def main() -> list[Any]:
        async with running(store_url, receiver, timeout=1.0):
            return await settled(db, hook.id)

    [delivery] = asyncio.run(main())
    assert delivery.status == "delivered"
    first, second = delivery.tries
    assert first.status_code is None
    assert "no answer within 1 s" in (first.error or "")
    assert second.status_code == 200


def test_a_url_resolving_to_loopback_is_refused_without_the_setting(
    db: Database, store_url: str, receiver: WebhookReceiver
) -> None:
    org = org_of(db)
    for url in (
        f"https://localhost:{receiver.port}/hook",
        f"https://127.0.0.1:{receiver.port}/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/hook",
        "http://hooks.example.net/hook",  # plain http
    ):
        with pytest.raises(InvalidInput):
            webhooks.create_webhook(db=db, org=org, url=url)
    # Made while private addresses were allowed: the daemon without the setting refuses
    # it at delivery, after resolving the name itself, and never connects.
    hook = webhooks.create_webhook(
        db=db, org=org, url=f"https://localhost:{receiver.port}/hook", allow_private=True
    )
    emit(db)

    async def main() -> list[Any]:
        async with running(store_url, receiver, allow_private=False, schedule=(0,)):
            return await settled(db, hook.id)

    [delivery] = asyncio.run(main())
    assert delivery.status == "failed"
    assert "loopback" in (delivery.tries[0].error or "")
    assert receiver.received() == []


def test_a_rotated_secret_signs_with_both_during_the_overlap(
    db: Database, store_url: str, receiver: WebhookReceiver
) -> None:
    hook = add_hook(db, receiver)
    rotated = webhooks.rotate_secret(db=db, org=org_of(db), webhook_id=hook.id)
    assert rotated.secret != hook.secret
    receiver.secrets.append(rotated.secret)
    emit(db)

    async def main() -> None:
        async with running(store_url, receiver):
            await settled(db, hook.id)

    asyncio.run(main())
    [hit] = receiver.received()
    assert hit.verified_by == (0, 1)  # the old secret and the new one
    assert len(hit.headers["webhook-signature"].split(" ")) == 2

    # Once the overlap is over, only the new secret signs.
    webhooks.rotate_secret(db=db, org=org_of(db), webhook_id=hook.id, overlap=0)
    newest = db.scalar("SELECT secret FROM webhooks WHERE id = :id", {"id": hook.id})
    receiver.secrets.append(newest)
    emit(db)

    async def again() -> None:
        async with running(store_url, receiver):
            await settled(db, hook.id, count=2)

    asyncio.run(again())
    assert receiver.received()[-1].verified_by == (2,)


def test_two_workers_deliver_each_event_once_to_each_endpoint(
    db: Database, store_url: str, receiver: WebhookReceiver
) -> None:
    first = add_hook(db, receiver)
    second = webhooks.create_webhook(
        db=db, org=org_of(db), url=receiver.url("/other"), allow_private=True
    )
    receiver.secrets.append(second.secret)
    ids = emit(db, 30)

    async def main() -> None:
        # A generous timeout: an answer that came too late would be sent again (at least
        # once is the rule), and this test is about the claims.
        async with (
            running(store_url, receiver, node="node-a", timeout=30.0),
            running(store_url, receiver, node="node-b", timeout=30.0),
        ):
            await settled(db, first.id, count=30)
            await settled(db, second.id, count=30)

    asyncio.run(main())
    hits = receiver.received()
    for path in ("/hook", "/other"):
        got = sorted(h.id for h in hits if h.path == path)
        assert got == sorted(ids)  # each once: no event lost, none twice


def test_an_endpoint_failing_for_days_is_disabled_and_its_owners_told(
    db: Database, store_url: str, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    org = org_of(db)
    owner = users.create_user(db=db, email="owner@example.test", password=None)
    members.add_member(db=db, org=org, user_id=owner.id, role="owner")
    hook = add_hook(db, receiver)
    receiver.script(*[Reply(503)] * 10)
    emit(db)
    settings = Settings(state_dir=tmp_path, database_url=store_url, hostname="mx.forwarder.test")
    day = 86400.0
    start = time.time()

    def clock() -> float:  # a day passes with each request the endpoint answers
        return start + len(receiver.received()) * day

    def on_disabled(db: Database, webhook_id: str, reason: str) -> None:
        webhooks.notify_disabled(db, settings=settings, webhook_id=webhook_id, reason=reason)

    async def main() -> webhooks.WebhookPublic:
        async with running(
            store_url,
            receiver,
            schedule=(0,) * 20,
            disable_after=3 * day,
            clock=clock,
            on_disabled=on_disabled,
        ):
            deadline = time.monotonic() + 30
            while (now := webhooks.get_webhook(db=db, org=org, webhook_id=hook.id)).enabled:
                assert time.monotonic() < deadline, "the endpoint was never disabled"
                await asyncio.sleep(0.05)
            return now

    after = asyncio.run(main())
    [delivery] = webhooks.page_deliveries(db=db, org=org, webhook_id=hook.id).data
    assert delivery.status == "pending"  # kept for when the endpoint is enabled again
    assert "failed for" in (after.disabled_reason or "")
    rows = db.all(
        "SELECT d.recipient, m.data FROM deliveries d JOIN messages m ON m.id = d.message_id"
    )
    assert [r["recipient"] for r in rows] == ["owner@example.test"]
    text = bytes(rows[0]["data"]).decode()
    assert "A webhook was disabled" in text and hook.id in text
    assert 3 <= len(receiver.received()) < 10


def test_deliveries_retry_by_hand_and_test_events(
    db: Database, store_url: str, receiver: WebhookReceiver
) -> None:
    org = org_of(db)
    hook = add_hook(db, receiver)
    receiver.script(Reply(500))
    tested = webhooks.send_test(
        db=db, org=org, webhook_id=hook.id, allow_private=True, ca_file=receiver.ca_file
    )
    assert tested.status == "failed" and tested.tries[0].status_code == 500
    [hit] = receiver.received()
    assert hit.type == "webhook.test" and hit.verified_by == (0,)
    retried = webhooks.retry_delivery(db=db, org=org, webhook_id=hook.id, delivery_id=tested.id)
    assert retried.status == "pending"

    async def main() -> list[Any]:
        async with running(store_url, receiver):
            return await settled(db, hook.id)

    [delivery] = asyncio.run(main())
    assert delivery.status == "delivered"
    assert [t.status_code for t in delivery.tries] == [500, 200]
    assert json.loads(receiver.received()[-1].body)["data"]["webhook_id"] == hook.id
