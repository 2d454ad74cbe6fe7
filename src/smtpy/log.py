"""Structured logs: one JSON object per line when stderr is not a terminal
(journald, log shippers), readable `key=value` lines on one.

    logger = log.get("smtpy.outbound.deliver")
    logger.info("delivered", queue_id=qid, recipient=rcpt, code=250)
    {"queue_id": "…", "recipient": "…", "code": 250, "event": "delivered",
     "level": "info", "timestamp": "2026-11-27T07:53:14.007269Z"}

Events carry the queue id, addresses and remote replies; never message bodies,
keys or secrets. Each line goes out in one write, so the lines of several
serving processes sharing stderr never interleave.

Our own few lines rather than a logging framework: a process imports nothing
for its logs but `json`, and that only with its first JSON line (structlog
brought rich and pygments, 5 MB in each serving process; the supervisor's
small watcher imports this module too, and `typing` only for the type
checker), and an event costs one dict and one `json` call.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

TYPE_CHECKING = False  # `typing` itself costs the watcher half a megabyte
if TYPE_CHECKING:
    from typing import Any

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
_COLOURS = {"debug": "\x1b[2m", "info": "\x1b[32m", "warning": "\x1b[33m", "error": "\x1b[31;1m"}
_RESET = "\x1b[0m"

_encode: Callable[[object], str] | None = None


def _timestamp() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"


def _json(record: dict[str, Any]) -> str:
    global _encode
    if _encode is None:
        import json

        _encode = json.JSONEncoder(default=repr).encode  # bytes and other odd values: their repr
    return _encode(record)


def _console(record: dict[str, Any], *, colour: bool) -> str:
    """`07:53:14.007 info     delivered  queue_id=… code=250`, the level coloured on a terminal."""
    fields = dict(record)
    stamp = fields.pop("timestamp")[11:23]
    level = fields.pop("level")
    event = fields.pop("event")
    exception = fields.pop("exception", None)
    pairs = " ".join(f"{key}={_console_value(value)}" for key, value in fields.items())
    shown = f"{_COLOURS[level]}{level:<8}{_RESET}" if colour else f"{level:<8}"
    line = f"{stamp} {shown} {event:<20} {pairs}".rstrip()
    return f"{line}\n{exception}" if exception else line


def _console_value(value: object) -> str:
    if isinstance(value, str) and value and not any(c.isspace() or c in "\"'=" for c in value):
        return value
    return repr(value)


_threshold = LEVELS["info"]
_render: Callable[[dict[str, Any]], str] = _json
_context: dict[str, Any] = {}  # on every event of this process (bind)


def configure(level: str = "info", *, json: bool | None = None) -> None:
    """Log at `level` and above; JSON unless stderr is a terminal (or as `json` says)."""
    global _threshold, _render
    as_json = (not sys.stderr.isatty()) if json is None else json
    _threshold = LEVELS.get(level, LEVELS["info"])
    colour = sys.stderr.isatty()
    _render = _json if as_json else lambda record: _console(record, colour=colour)


def bind(**fields: Any) -> None:
    """Add `fields` to every event of this process from now on (a serving process's index)."""
    global _context
    _context = {**_context, **fields}


class Logger:
    """Events of one part of smtpy; `name` says which (for whoever reads the code)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def debug(self, event: str, **fields: Any) -> None:
        if _threshold <= 10:
            _emit("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        if _threshold <= 20:
            _emit("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        if _threshold <= 30:
            _emit("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        _emit("error", event, fields)


def _emit(level: str, event: str, fields: dict[str, Any]) -> None:
    """One line, one write (and a flush, so journald sees it at once)."""
    exc_info = fields.pop("exc_info", False)
    record = {**_context, **fields, "event": event, "level": level}
    record["timestamp"] = _timestamp()
    if exc_info:
        import traceback

        record["exception"] = traceback.format_exc().rstrip()
    stream = sys.stderr
    stream.write(_render(record) + "\n")
    stream.flush()


def get(name: str) -> Logger:
    return Logger(name)
