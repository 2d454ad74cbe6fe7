"""DATA framing: the end of data, dot-unstuffing and the size limit, in chunks of any size."""

from __future__ import annotations

import smtplib

from hypothesis import given
from hypothesis import strategies as st

from smtpy.mail.framing import DataBuffer, crlf_line_endings, data_block


def feed_in_chunks(
    wire: bytes, cuts: list[int], limit: int | None = None
) -> tuple[DataBuffer, bytes]:
    data = DataBuffer(limit)
    position = 0
    for cut in [*sorted(cuts), len(wire)]:
        rest = data.feed(wire[position:cut])
        position = cut
        if data.done:
            return data, rest + wire[position:]
    return data, b""


lines = st.lists(
    st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    max_size=30,
)


@given(lines=lines, cuts=st.lists(st.integers(0, 2000), max_size=6))
def test_content_comes_back_as_sent_whatever_the_chunking(
    lines: list[bytes], cuts: list[int]
) -> None:
    content = b"".join(line + b"\r\n" for line in lines)
    wire = smtplib.quotedata(content.decode("latin-1")).encode("latin-1") + b".\r\nQUIT\r\n"
    data, rest = feed_in_chunks(wire, cuts)
    assert data.done
    assert data.content() == content
    assert rest == b"QUIT\r\n"


def test_a_dot_line_right_after_data_is_an_empty_message() -> None:
    data, rest = feed_in_chunks(b".\r\nRSET\r\n", [1, 2])
    assert (data.done, data.content(), rest) == (True, b"", b"RSET\r\n")


def test_dot_stuffing_is_undone() -> None:
    data, _ = feed_in_chunks(b"..\r\n.hidden\r\n...two\r\n.\r\n", [])
    assert data.content() == b".\r\nhidden\r\n..two\r\n"


def test_only_crlf_dot_crlf_ends_the_data() -> None:
    smuggled = (
        b"Subject: one\r\n\r\nbody\n.\nMAIL FROM:<a@b>\r\n"
        b"x\r.\rRCPT TO:<c@d>\r\ny\r\n.\nDATA\r\nz\n.\r\nend\r\n.\r\n"
    )
    data, rest = feed_in_chunks(smuggled, [20, 21, 22, 40, 41])
    assert data.done
    # The one line that starts with a dot loses it (unstuffing); nothing ends early.
    assert data.content() == smuggled[: -len(b".\r\n")].replace(b"y\r\n.\nDATA", b"y\r\n\nDATA")
    assert rest == b""


def test_no_end_marker_means_not_done() -> None:
    data, _ = feed_in_chunks(b"line\r\n.\n\r\n\r.\r\n", [3])
    assert not data.done


def test_content_over_the_limit_is_dropped_but_the_end_is_still_found() -> None:
    wire = b"x" * 5000 + b"\r\n" + b"y" * 5000 + b"\r\n.\r\nQUIT\r\n"
    data, rest = feed_in_chunks(wire, list(range(0, len(wire), 7)), limit=1000)
    assert (data.done, data.too_big, data.content(), rest) == (True, True, b"", b"QUIT\r\n")
    assert len(data._buf) <= 8  # nothing of the content is kept


def test_content_at_the_limit_is_kept() -> None:
    content = b"z" * 98 + b"\r\n"
    data, _ = feed_in_chunks(content + b".\r\n", [99, 100, 101], limit=100)
    assert (data.too_big, data.content()) == (False, content)


def test_longest_line_counts_the_crlf() -> None:
    data, _ = feed_in_chunks(b"ab\r\n" + b"c" * 1000 + b"\r\nd\r\n.\r\n", [500])
    assert data.longest_line() == 1002


@given(
    st.lists(
        st.binary(max_size=40).map(lambda b: b.lstrip(b".")).filter(lambda b: b"\r\n" not in b),
        max_size=8,
    )
)
def test_longest_line_is_the_longest_crlf_terminated_line(lines: list[bytes]) -> None:
    data, _ = feed_in_chunks(b"".join(line + b"\r\n" for line in lines) + b".\r\n", [7])
    assert data.longest_line() == max((len(line) + 2 for line in lines), default=0)


@given(st.binary(max_size=300))
def test_data_block_comes_back_as_the_crlf_content(content: bytes) -> None:
    block = data_block(content)
    assert block.endswith(b"\r\n.\r\n")
    data = DataBuffer(limit=None)
    assert data.feed(block) == b""
    assert data.done
    expected = crlf_line_endings(content)
    assert data.content() == expected + (b"" if expected.endswith(b"\r\n") else b"\r\n")


def test_data_block_stuffs_a_dot_at_the_start_of_any_line() -> None:
    assert data_block(b".a\r\nb\r\n.\r\n..c") == b"..a\r\nb\r\n..\r\n...c\r\n.\r\n"
