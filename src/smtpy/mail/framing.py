"""SMTP DATA framing (RFC 5321 4.5.2): where the content ends, and dot-unstuffing.

Only `<CRLF>.<CRLF>` ends the content — a bare LF or CR around the dot never
does, so no second message can be smuggled in behind a fake end of data
(CVE-2023-51764 and its kin). The DATA command's own CRLF counts as the first
`<CRLF>`: content that starts with `.<CRLF>` is empty.

`DataBuffer` collects what the client sends in chunks of any size, so the
server reads the socket in large reads instead of one line at a time; it keeps
at most `limit` bytes and then only remembers that the limit was passed.
`data_block` is the other direction, for sending.
"""

from __future__ import annotations

import re

END = b"\r\n.\r\n"
_LINE_ENDING = re.compile(rb"\r\n|\r|\n")


def crlf_line_endings(data: bytes) -> bytes:
    """Bare CR and LF become CRLF, the only line ending SMTP has (RFC 5321 2.3.8).

    Receiving stores messages in this form, so what is stored, signed and sent
    is the same; the check that there is nothing to change is two counts.
    """
    crlf = data.count(b"\r\n")
    if crlf == data.count(b"\r") == data.count(b"\n"):
        return data
    return _LINE_ENDING.sub(b"\r\n", data)


def data_block(content: bytes) -> bytes:
    """`content` as it is sent after DATA: CRLF lines, dot-stuffed, ended by `.<CRLF>`."""
    content = crlf_line_endings(content)
    if not content.endswith(b"\r\n"):
        content += b"\r\n"
    if content.startswith(b"."):
        content = b"." + content
    return content.replace(b"\r\n.", b"\r\n..") + b".\r\n"


class DataBuffer:
    """The content of one DATA command, fed in chunks; `feed` returns the bytes after the end."""

    __slots__ = ("_buf", "done", "limit", "too_big")

    def __init__(self, limit: int | None) -> None:
        self._buf = bytearray(b"\r\n")  # the DATA command's CRLF starts the first line
        self.limit = limit
        self.too_big = False
        self.done = False

    def feed(self, chunk: bytes) -> bytes:
        """Take `chunk`; once the end of data is in it, return what follows it (maybe b"")."""
        buf = self._buf
        start = len(buf)
        buf += chunk
        end = buf.find(END, max(0, start - len(END) + 1))
        rest = b""
        if end >= 0:
            self.done = True
            rest = bytes(buf[end + len(END) :])
            del buf[end + 2 :]  # keep the CRLF that ends the last line
        if not self.too_big and self.limit is not None:
            # Until the end is seen, part of the end marker may be in the buffer.
            slack = 0 if self.done else len(END)
            self.too_big = len(buf) - 2 > self.limit + slack
        if self.too_big:
            # Past the limit: keep only the tail an end marker may start in.
            keep = 0 if self.done else len(END) - 1
            del buf[: len(buf) - keep]
        return rest

    def content(self) -> bytes:
        """The content with dot-stuffing undone; lines end as the client sent them."""
        if self.too_big:
            return b""
        return bytes(self._buf).replace(b"\r\n.", b"\r\n")[2:]

    def longest_line(self) -> int:
        """Length of the longest line, CRLF included (RFC 5321 4.5.3.1.6: at most 1000)."""
        *ended, last = bytes(self._buf[2:]).split(b"\r\n")
        return max(max(map(len, ended), default=-2) + 2, len(last))
