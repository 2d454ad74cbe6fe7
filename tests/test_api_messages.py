"""/api/v1/messages through the real `smtpy api`, on SQLite and PostgreSQL: the message log
newest first with filters and cursors that stay stable while rows arrive; a message's
detail (envelope, headers, authentication results, deliveries and attempts with the remote
reply); retry and delete of queued mail; another organization's mail is not found."""

from __future__ import annotations

import time
from typing import Any

from resourceworld import API, World, log, problem, queued, rfc3339, served_domain, world
from smtpy.queue.message_log import LogEvent, delivery_events
from smtpy.queue.queries import AttemptResult, claim_due, record_results
from smtpy.store.db import Database

T0 = 1_790_000_000.0  # 2026-09-21, older than any row the API writes itself


def row(n: int, event: str, domain: str = "acme.test", **extra: Any) -> LogEvent:
    fields: dict[str, Any] = {
        "at": T0 + n * 60,
        "event": event,
        "queue_id": f"Q{n:015d}",
        "sender": f"sender{n}@origin.test",
        "alias": f"user{n % 3}@{domain}",
        "recipient": f"box{n}@mailbox.test",
        "domain": domain,
        "size": 100 + n,
    }
    return LogEvent(**(fields | extra))


def ids(page: dict[str, Any]) -> list[str]:
    return [entry["id"] for entry in page["data"]]


def everything(w: World, query: str = "", limit: int = 3) -> list[dict[str, Any]]:
    """Every page of a listing, following the cursors (bounded)."""
    out: list[dict[str, Any]] = []
    cursor = None
    for _ in range(100):
        url = f"{API}/messages?limit={limit}{query}" + (f"&cursor={cursor}" if cursor else "")
        page = w.admin.get(url).json()
        out += page["data"]
        if not page["has_more"]:
            return out
        cursor = page["next_cursor"]
    raise AssertionError("more than 100 pages")


def test_the_log_is_listed_newest_first_with_filters(
    cli_env: dict[str, str], store_url: str
) -> None:
    with world(cli_env, store_url) as w:
        served_domain(store_url, w.org, "acme.test")
        served_domain(store_url, w.org, "acme2.test")
        served_domain(store_url, w.other_org, "globex.test")
        log(
            store_url,
            [
                row(1, "received"),
                row(2, "delivered", remote_host="mx.mailbox.test", code=250, reply="250 ok"),
                row(3, "rejected", queue_id=None, reason="unknown_user", code=550),
                row(4, "bounced", domain="acme2.test", code=550, reply="550 gone"),
                row(5, "received", domain="globex.test"),  # another organization's
                row(6, "deferred", sender="Someone.Special@origin.test"),
            ],
        )
        everything_ = w.admin.get(f"{API}/messages").json()
        assert set(everything_) == {"data", "has_more", "next_cursor"}
        entries = everything_["data"]
        assert [e["sender"] for e in entries] == [
            "Someone.Special@origin.test",
            "sender4@origin.test",
            "sender3@origin.test",
            "sender2@origin.test",
            "sender1@origin.test",
        ]
        newest = entries[0]
        assert isinstance(newest["id"], str) and newest["at"] == rfc3339(T0 + 6 * 60)
        assert (newest["status"], newest["queue_id"]) == ("deferred", "Q000000000000006")
        delivered = entries[3]
        assert (delivered["remote_host"], delivered["code"], delivered["reply"]) == (
            "mx.mailbox.test",
            250,
            "250 ok",
        )

        number = {f"sender{n}@origin.test": n for n in range(6)}
        number["Someone.Special@origin.test"] = 6

        def senders(query: str) -> list[int]:
            page = w.admin.get(f"{API}/messages?{query}")
            assert page.status_code == 200, page.text
            return [number[e["sender"]] for e in page.json()["data"]]

        assert senders("domain=acme2.test") == [4]
        assert senders("domain=ACME.test") == [6, 3, 2, 1]
        assert senders("status=rejected") == [3]
        assert senders("status=forwarded") == [2]  # the stats' name for delivered
        assert senders("status=delivered") == [2]
        assert senders("alias=user1@ACME.test") == [1]
        assert senders("q=special") == [6]  # in the sender, any case
        assert senders("q=box2@") == [2]  # in the recipient
        assert senders("q=q000000000000004") == [4]  # a queue id
        assert senders("q=50%25") == []  # % is text, not a wildcard
        assert senders(f"since={rfc3339(T0 + 2 * 60)}&until={rfc3339(T0 + 4 * 60)}") == [3, 2]
        assert senders("since=2026-09-21T14:15:00%2B02:00") == [6, 4, 3, 2, 1]
        assert senders("domain=globex.test") == []
        globex = w.other.get(f"{API}/messages").json()["data"]
        assert [e["sender"] for e in globex] == ["sender5@origin.test"]


def test_cursors_stay_stable_while_new_rows_arrive(cli_env: dict[str, str], store_url: str) -> None:
    with world(cli_env, store_url) as w:
        served_domain(store_url, w.org, "acme.test")
        # several rows share one time: the id breaks the tie
        log(store_url, [row(n // 2, "received", queue_id=f"QA{n:014d}") for n in range(10)])
        before = everything(w)
        assert len(before) == 10 and len({e["id"] for e in before}) == 10
        first = w.admin.get(f"{API}/messages?limit=4").json()
        assert first["has_more"] is True and ids(first) == [e["id"] for e in before[:4]]
        log(store_url, [row(n, "delivered") for n in range(20, 25)])  # newer rows arrive
        log(store_url, [row(4, "received", queue_id="QSAMETIME000001")])  # and one tied
        second = w.admin.get(f"{API}/messages?limit=4&cursor={first['next_cursor']}").json()
        third = w.admin.get(f"{API}/messages?limit=4&cursor={second['next_cursor']}").json()
        assert ids(second) + ids(third) == [e["id"] for e in before[4:]]
        assert third == {"data": third["data"], "has_more": False, "next_cursor": None}
        assert len(everything(w)) == 16  # a new listing sees them all


def test_a_queued_message_in_detail_then_retried_and_deleted(
    cli_env: dict[str, str], store_url: str
) -> None:
    with world(cli_env, store_url) as w:
        served_domain(store_url, w.org, "acme.test")
        received = time.time() - 600
        queued(
            store_url,
            "01ABCDEFGHJKMNPQ",
            to="info@acme.test",
            received_at=received,
            auth_results="mx.forwarder.test; spf=pass smtp.mailfrom=origin.test",
        )
        with Database(store_url) as db:  # a delivery worker tried once and was told to wait
            [claimed] = claim_due(db, node="n1", limit=10)
            attempt = AttemptResult(
                claimed, "deferred", 451, "451 4.7.1 greylisted", "mx.mailbox.test", "4.7.1"
            )
            with db.transaction():
                record_results(db, [attempt], node="n1", schedule=[3600], lifetime=86400)
                from smtpy.queue.message_log import write_events

                write_events(db, delivery_events([attempt], [], at=time.time()))

        detail = w.admin.get(f"{API}/messages/01abcdefghjkmnpq")
        assert detail.status_code == 200, detail.text
        m = detail.json()
        assert (m["id"], m["queued"], m["status"]) == ("01ABCDEFGHJKMNPQ", True, "deferred")
        assert m["envelope"] == {
            "sender": "sender@origin.test",
            "recipients": ["info@acme.test"],
            "client_ip": "192.0.2.7",
            "size": m["envelope"]["size"],
            "received_at": rfc3339(received),
        }
        assert "Subject: hello" in m["headers"] and "body" not in m["headers"]
        assert m["authentication_results"].startswith("mx.forwarder.test; spf=pass")
        [delivery] = m["deliveries"]
        assert (delivery["original_recipient"], delivery["recipient"], delivery["status"]) == (
            "info@acme.test",
            "box@mailbox.test",
            "deferred",
        )
        [tried] = delivery["attempts"]
        assert (tried["result"], tried["code"], tried["reply"], tried["remote_host"]) == (
            "deferred",
            451,
            "451 4.7.1 greylisted",
            "mx.mailbox.test",
        )
        assert [e["status"] for e in m["events"]] == ["received", "deferred"]
        listed = w.admin.get(f"{API}/messages?q=01ABCDEFGHJKMNPQ").json()["data"]
        assert {e["queue_id"] for e in listed} == {"01ABCDEFGHJKMNPQ"}

        # another organization, or a member, may not touch it
        problem(w.other.get(f"{API}/messages/01ABCDEFGHJKMNPQ"), 404)
        problem(w.other.post(f"{API}/messages/01ABCDEFGHJKMNPQ/retry"), 404)
        problem(w.other.delete(f"{API}/messages/01ABCDEFGHJKMNPQ"), 404)
        member = w.member()
        assert member.get(f"{API}/messages/01ABCDEFGHJKMNPQ").status_code == 200
        problem(member.post(f"{API}/messages/01ABCDEFGHJKMNPQ/retry"), 403)
        problem(member.delete(f"{API}/messages/01ABCDEFGHJKMNPQ"), 403)

        asked = time.time()
        retried = w.admin.post(f"{API}/messages/01ABCDEFGHJKMNPQ/retry")
        assert retried.status_code == 202, retried.text
        with Database(store_url) as db:
            due = db.scalar("SELECT next_attempt_at FROM deliveries")
        assert asked - 5 <= float(due) <= time.time() + 1  # due now, not in an hour

        assert w.admin.delete(f"{API}/messages/01ABCDEFGHJKMNPQ").status_code == 204
        with Database(store_url) as db:
            assert db.scalar("SELECT count(*) FROM messages") == 0
        gone = w.admin.get(f"{API}/messages/01ABCDEFGHJKMNPQ").json()
        assert (gone["queued"], gone["status"], gone["headers"]) == (False, "discarded", None)
        assert gone["events"][-1]["reason"] == "admin_delete"
        problem(w.admin.post(f"{API}/messages/01ABCDEFGHJKMNPQ/retry"), 409)
        problem(w.admin.delete(f"{API}/messages/01ABCDEFGHJKMNPQ"), 409)


def test_a_delivered_message_keeps_its_story_in_the_log(
    cli_env: dict[str, str], store_url: str
) -> None:
    with world(cli_env, store_url) as w:
        served_domain(store_url, w.org, "acme.test")
        log(
            store_url,
            [
                row(1, "received", queue_id="QDONE0000000001", recipient="a@x.test, b@y.test"),
                row(
                    2,
                    "deferred",
                    queue_id="QDONE0000000001",
                    recipient="a@x.test",
                    code=421,
                    reply="421 busy",
                    remote_host="mx.x.test",
                    alias="user1@acme.test",
                ),
                row(
                    3,
                    "delivered",
                    queue_id="QDONE0000000001",
                    recipient="a@x.test",
                    code=250,
                    reply="250 ok",
                    remote_host="mx.x.test",
                    alias="user1@acme.test",
                ),
                row(
                    4,
                    "bounced",
                    queue_id="QDONE0000000001",
                    recipient="b@y.test",
                    code=550,
                    reply="550 no",
                    remote_host="mx.y.test",
                    alias="user1@acme.test",
                ),
            ],
        )
        m = w.admin.get(f"{API}/messages/QDONE0000000001").json()
        assert (m["queued"], m["status"], m["headers"]) == (False, "bounced", None)
        assert m["envelope"]["sender"] == "sender1@origin.test"
        by_recipient = {d["recipient"]: d for d in m["deliveries"]}
        assert [a["reply"] for a in by_recipient["a@x.test"]["attempts"]] == ["421 busy", "250 ok"]
        assert by_recipient["a@x.test"]["status"] == "delivered"
        assert by_recipient["b@y.test"]["status"] == "bounced"
        problem(w.admin.post(f"{API}/messages/QDONE0000000001/retry"), 409)


def test_message_inputs_are_checked(cli_env: dict[str, str], store_url: str) -> None:
    with world(cli_env, store_url) as w:
        for query, field in (
            ("status=lost", "status"),
            ("since=yesterday", "since"),
            ("until=2026-13-01T00:00:00Z", "until"),
            ("since=2026-02-01T00:00:00Z&until=2026-01-01T00:00:00Z", "until"),
            ("limit=0", None),
            ("limit=201", None),
            ("cursor=bm9wZQ", None),
            ("domain=not a domain", "domain"),
            ("alias=nobody", "alias"),
            ("q=" + "x" * 201, "q"),
        ):
            body = problem(w.admin.get(f"{API}/messages?{query}"), 422)
            if field is not None:
                assert field in [e["field"] for e in body["errors"]], (query, body)
        problem(w.admin.get(f"{API}/messages/NOSUCHMESSAGE001"), 404)
        problem(w.admin.get(f"{API}/messages/{'x' * 40}"), 404)
        problem(w.admin.post(f"{API}/messages/NOSUCHMESSAGE001/retry"), 404)
        problem(w.admin.delete(f"{API}/messages/NOSUCHMESSAGE001"), 404)
        assert w.api.client.get(f"{API}/messages").status_code == 401
