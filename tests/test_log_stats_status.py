"""Reading the message log: filters and follow, stats figures, status — on both stores."""

from __future__ import annotations

import pytest

from smtpy.admin.messages import Follower, LogFilter, after, recent
from smtpy.admin.organizations import resolve_organization
from smtpy.admin.stats import compute
from smtpy.admin.status import status
from smtpy.errors import InvalidInput
from smtpy.queue.message_log import LogEvent, write_events
from smtpy.queue.nodes import NodeInfo, claim, heartbeat, stopped
from smtpy.queue.queries import NewDelivery, NewMessage, enqueue
from smtpy.store.db import Database

DAY = 86400.0
T0 = 20_000 * DAY  # midnight UTC, 2024-10-04


def ev(at: float, event: str, alias: str = "a@one.test", **fields: object) -> LogEvent:
    return LogEvent(at=at, event=event, alias=alias, domain=alias.rpartition("@")[2], **fields)  # type: ignore[arg-type]


@pytest.fixture
def org(db: Database) -> int:
    return resolve_organization(db=db).id


def known_mix() -> list[LogEvent]:
    """Day 1: one.test 3 received, 3 forwarded (delays 1, 2, 10); two.test 1 received,
    1 deferred then bounced. Day 2: 1 received and forwarded (delay 4), 3 rejections."""
    return [
        ev(T0 + 10, "received"),
        ev(T0 + 11, "received"),
        ev(T0 + 12, "received", "b@one.test"),
        ev(T0 + 20, "delivered", delay=1.0),
        ev(T0 + 21, "delivered", delay=10.0),
        ev(T0 + 22, "delivered", "b@one.test", delay=2.0),
        ev(T0 + 30, "received", "c@two.test"),
        ev(T0 + 31, "deferred", "c@two.test", code=451),
        ev(T0 + 90, "bounced", "c@two.test", code=550, delay=60.0),
        ev(T0 + DAY + 5, "received", "b@one.test"),
        ev(T0 + DAY + 6, "delivered", "b@one.test", delay=4.0),
        ev(T0 + DAY + 7, "rejected", "x@one.test", reason="unknown_user", code=550),
        ev(T0 + DAY + 8, "rejected", "y@one.test", reason="unknown_user", code=550),
        ev(T0 + DAY + 9, "rejected", "z@else.test", reason="relay", code=550),
    ]


def test_stats_in_total_and_by_domain_alias_and_day(db: Database, org: int) -> None:
    write_events(db, known_mix())
    ev_before = ev(T0 - 1, "received")  # outside the window
    write_events(db, [ev_before])

    stats = compute(db=db, org=org, since=T0, until=T0 + 2 * DAY)
    assert stats.total.model_dump() == {
        "received": 5,
        "forwarded": 4,
        "deferred": 1,
        "bounced": 1,
        "discarded": 0,
        "rejected": 3,
        "rejected_by_reason": {"relay": 1, "unknown_user": 2},
        "median_delay": 3.0,  # of 1, 2, 4, 10
    }
    assert stats.groups == []

    by_domain = compute(db=db, org=org, since=T0, until=T0 + 2 * DAY, by="domain").model_dump()
    groups = {g["key"]: g for g in by_domain["groups"]}
    assert list(groups) == ["one.test", "two.test", "else.test"]  # most received first
    assert (groups["one.test"]["received"], groups["one.test"]["forwarded"]) == (4, 4)
    assert groups["one.test"]["median_delay"] == 3.0
    assert groups["two.test"]["bounced"] == 1 and groups["two.test"]["median_delay"] is None
    assert groups["else.test"]["rejected_by_reason"] == {"relay": 1}
    assert by_domain["total"]["median_delay"] == 3.0

    by_alias = {
        g["key"]: g
        for g in compute(db=db, org=org, since=T0, until=T0 + 2 * DAY, by="alias").model_dump()[
            "groups"
        ]
    }
    assert by_alias["b@one.test"]["forwarded"] == 2
    assert by_alias["b@one.test"]["median_delay"] == 3.0  # of 2 and 4
    assert by_alias["a@one.test"]["median_delay"] == 5.5  # of 1 and 10

    by_day = compute(db=db, org=org, since=T0, until=T0 + 2 * DAY, by="day").model_dump()["groups"]
    assert [(g["key"], g["received"], g["forwarded"], g["rejected"]) for g in by_day] == [
        ("2024-10-04", 4, 3, 0),
        ("2024-10-05", 1, 1, 3),
    ]
    assert by_day[0]["median_delay"] == 2.0  # of 1, 2, 10

    second_day = compute(db=db, org=org, since=T0 + DAY, until=T0 + 2 * DAY)
    assert (second_day.total.received, second_day.total.median_delay) == (1, 4.0)
    empty = compute(db=db, org=org, since=T0 + 5 * DAY, until=T0 + 6 * DAY)
    assert (empty.total.received, empty.total.median_delay) == (0, None)
    with pytest.raises(InvalidInput, match="cannot group by 'week'"):
        compute(db=db, org=org, since=T0, by="week")


def test_log_filters_and_newest_rows(db: Database, org: int) -> None:
    write_events(db, known_mix())
    everything = recent(db=db, org=org, flt=LogFilter())
    assert [r["at"] for r in everything] == sorted(r["at"] for r in everything)
    assert len(everything) == 14

    def events_of(flt: LogFilter, **kw: int) -> list[tuple[str, str]]:
        return [(r["event"], r["alias"]) for r in recent(db=db, org=org, flt=flt, **kw)]

    assert events_of(LogFilter.make(alias="B@one.test")) == []  # local parts are exact
    assert events_of(LogFilter.make(alias="b@ONE.test")) == [
        ("received", "b@one.test"),
        ("delivered", "b@one.test"),
        ("received", "b@one.test"),
        ("delivered", "b@one.test"),
    ]
    assert events_of(LogFilter.make(domain="TWO.test")) == [
        ("received", "c@two.test"),
        ("deferred", "c@two.test"),
        ("bounced", "c@two.test"),
    ]
    assert events_of(LogFilter.make(event="rejected"), limit=2) == [
        ("rejected", "y@one.test"),
        ("rejected", "z@else.test"),
    ]
    since = LogFilter.make(since="1h", now=T0 + DAY + 3600)
    assert [r["event"] for r in recent(db=db, org=org, flt=since)] == [
        "received",
        "delivered",
        *["rejected"] * 3,
    ]
    with pytest.raises(InvalidInput, match="is not one of"):
        LogFilter.make(event="sent")
    with pytest.raises(InvalidInput, match="is not an age"):
        LogFilter.make(since="soon")


def test_follow_returns_each_new_row_once_even_when_committed_out_of_order(
    db: Database, org: int
) -> None:
    write_events(db, known_mix()[:3])
    follower = Follower(org=org, flt=LogFilter(), start_id=3)
    assert follower.poll(db) == []
    write_events(db, [ev(T0 + 100, "received", "late@one.test")])  # id 4
    write_events(db, [ev(T0 + 101, "received", "new@one.test")])  # id 5
    db.execute("DELETE FROM message_log WHERE id = 4")  # as if 4 had not committed yet
    assert [r["alias"] for r in follower.poll(db)] == ["new@one.test"]
    db.execute(
        "INSERT INTO message_log (id, at, event, alias) VALUES (4, :at, 'received', 'late@one.test')",
        {"at": T0 + 100},
    )
    assert [r["alias"] for r in follower.poll(db)] == ["late@one.test"]
    assert follower.poll(db) == []
    assert [r["id"] for r in after(db=db, org=org, flt=LogFilter(), after_id=3)] == [4, 5]


def test_status_nodes_queue_and_recent_errors(db: Database) -> None:
    now = T0 + 1000
    empty = status(db, now=now)
    assert (empty.up, empty.nodes, empty.messages, empty.oldest) == (False, [], 0, None)
    assert empty.recent["error_rate"] is None

    # Nodes elsewhere (no process this machine can see): the heartbeat tells.
    mx1 = NodeInfo("mx1", started_at=now - 100, process=None)
    mx2 = NodeInfo("mx2", started_at=now - 100, process=None)
    claim(db, mx1, now=now - 100)
    claim(db, mx2, now=now - 400)
    heartbeat(db, mx1, now=now - 5)
    heartbeat(db, mx2, now=now - 300)  # silent for five minutes: down
    result = status(db, now=now)
    assert [(n["name"], n["up"]) for n in result.nodes] == [("mx1", True), ("mx2", False)]
    assert result.up
    stopped(db, mx1, now=now)
    assert not status(db, now=now).up

    for n, queue_id in enumerate(("Q1", "Q2")):
        enqueue(
            db,
            NewMessage(
                queue_id=queue_id,
                sender="alice@sender.test",
                data=b"Subject: x\r\n\r\nbody\r\n",
                deliveries=[
                    NewDelivery("a@one.test", f"d{n}@x.test", "x.test", ""),
                    NewDelivery("a@one.test", f"e{n}@x.test", "x.test", ""),
                ],
                received_at=now - 600 + n,
            ),
        )
    db.execute(
        "UPDATE deliveries SET attempts = 1, next_attempt_at = :t WHERE recipient = 'd0@x.test'",
        {"t": now + 60},
    )
    db.execute("UPDATE deliveries SET status = 'held' WHERE recipient = 'e1@x.test'")
    write_events(
        db,
        [
            ev(
                now - 60,
                "delivered",
                recipient="d@x.test",
                remote_host="mx.x.test",
                code=250,
                delay=1.0,
            ),
            ev(now - 50, "deferred"),
            ev(
                now - 40,
                "delivered",
                recipient="e@x.test",
                remote_host="mx.x.test",
                code=250,
                delay=1.0,
            ),
            ev(now - 30, "rejected", reason="relay"),
            ev(now - 5000, "bounced"),  # before the window
        ],
    )
    result = status(db, now=now)
    assert result.queue == {"active": 2, "deferred": 1, "held": 1}
    assert result.messages == 2
    assert result.oldest == {"queue_id": "Q1", "received_at": now - 600, "age": 600.0}
    assert result.last_delivery is not None
    assert (result.last_delivery["recipient"], result.last_delivery["at"]) == ("e@x.test", now - 40)
    assert result.recent == {
        "window": 900.0,
        "delivered": 2,
        "deferred": 1,
        "bounced": 0,
        "rejected": 1,
        "error_rate": pytest.approx(1 / 3, abs=0.001),
    }
