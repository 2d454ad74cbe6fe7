"""Free-text search of the message log reads a bounded part of the log per page
(`smtpy.admin.messages.message_page`, the API's and dashboard's `q`), on both stores:
a page may come back short or empty with a cursor to search on, and following the
cursors finds every match once, newest first, as one unbounded read would."""

from __future__ import annotations

import pytest

from smtpy.admin.messages import MessageQuery, message_page
from smtpy.admin.organizations import resolve_organization
from smtpy.queue.message_log import LogEvent, write_events
from smtpy.store.db import Database

T0 = 1_700_000_000.0


def log(db: Database, senders: list[str]) -> None:
    """One `received` row per sender, a second apart, the first the oldest."""
    write_events(
        db,
        [
            LogEvent(
                at=T0 + n,
                event="received",
                sender=sender,
                alias="team@one.test",
                domain="one.test",
                queue_id=f"Q{n:015d}",
            )
            for n, sender in enumerate(senders)
        ],
    )


def search(db: Database, text: str, *, limit: int, window: int) -> list[list[str]]:
    """The senders of each page, following the cursors to the end."""
    org = resolve_organization(db=db).id
    query = MessageQuery.make(q=text)
    pages, cursor = [], None
    for _ in range(100):
        page = message_page(db=db, org=org, query=query, limit=limit, cursor=cursor, window=window)
        pages.append([str(e.sender) for e in page.data])
        if not page.has_more:
            return pages
        assert page.next_cursor is not None
        cursor = page.next_cursor
    raise AssertionError("the search did not end within 100 pages")


def test_a_rare_match_is_found_past_empty_pages_each_reading_a_window(db: Database) -> None:
    senders = [f"user{n}@mail.test" for n in range(25)]
    senders[3] = "needle@hay.test"  # old: 21 rows are newer
    log(db, senders)

    pages = search(db, "NEEDLE", limit=10, window=5)
    assert [s for page in pages for s in page] == ["needle@hay.test"]
    assert pages[:4] == [[], [], [], []]  # 20 newer rows read, five at a time
    assert pages[4] == ["needle@hay.test"]
    assert len(pages) == 5  # the window that held it reached the oldest row: the end


def test_following_the_cursors_finds_every_match_once_newest_first(db: Database) -> None:
    senders = [f"{'match' if n % 3 == 0 else 'other'}{n}@mail.test" for n in range(40)]
    log(db, senders)
    expected = [s for s in reversed(senders) if "match" in s]

    for limit, window in ((4, 5), (10, 7), (50, 1000)):
        pages = search(db, "match", limit=limit, window=window)
        assert [s for page in pages for s in page] == expected, (limit, window)
        assert all(len(page) <= limit for page in pages)


def test_a_queue_id_and_other_filters_are_not_windowed(db: Database) -> None:
    log(db, [f"user{n}@mail.test" for n in range(30)])
    org = resolve_organization(db=db).id
    by_id = message_page(
        db=db, org=org, query=MessageQuery.make(q="q000000000000002"), limit=10, window=5
    )
    assert [e.sender for e in by_id.data] == ["user2@mail.test"] and not by_id.has_more
    listed = message_page(db=db, org=org, query=MessageQuery.make(), limit=10, window=5)
    assert len(listed.data) == 10 and listed.has_more  # a full page: no window without text


@pytest.mark.parametrize("text", ["nobody-wrote-this", "%", "_"])
def test_text_no_row_holds_ends_with_empty_pages(db: Database, text: str) -> None:
    log(db, [f"user{n}@mail.test" for n in range(12)])
    pages = search(db, text, limit=10, window=5)
    assert pages == [[], [], []]  # 5 + 5 + the last 2 rows, then the end
