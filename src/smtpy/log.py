"""Structured logs through structlog: one JSON object per line when stderr is
not a terminal (journald, log shippers), readable `key=value` lines on one.

    logger = log.get("smtpy.outbound.deliver")
    logger.info("delivered", queue_id=qid, recipient=rcpt, code=250)
    {"logger": "smtpy.outbound.deliver", "queue_id": "…", "recipient": "…", "code": 250,
     "event": "delivered", "level": "info", "timestamp": "2026-11-27T07:53:14.007269Z"}

Events carry the queue id, addresses and remote replies; never message bodies,
keys or secrets. `configure()` runs once at each entry point (the daemon, the
supervisor's watcher); the standard library's loggers (aiosmtpd's `mail.log`,
asyncio, alembic, warnings) go through the same processors by structlog's
`ProcessorFormatter`, so every line of stderr is one object. A traceback is
one field of its line (`exception`), without local variables: DKIM keys live
there. Each line goes out in one write, so the lines of several serving
processes sharing stderr never interleave.

`get()` and this module import nothing: structlog is loaded with the first
event or `configure()`, so a command that logs nothing never loads it.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # `typing` itself costs the watcher half a megabyte
if TYPE_CHECKING:
    from collections.abc import MutableMapping
    from typing import Any

    from structlog.typing import EventDict, Processor

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}

_context: dict[str, Any] = {}  # on every event of this process (bind)
_generation = 0  # bumped by configure(): loggers fetch their structlog logger again
_handler: Any = None  # our handler on the standard library's root logger
_pending: tuple[str, bool | None] | None = None  # configure(lazy=True) waiting for an event


def configure(level: str = "info", *, json: bool | None = None, lazy: bool = False) -> None:
    """Log at `level` and above; JSON unless stderr is a terminal (or as `json` says).

    Configures structlog and routes the standard library's loggers into the
    same processors, with one handler on the root logger. `lazy`: only with
    the first event, for a process that imports no library that logs and
    logs little (the watcher: structlog and the asyncio, ssl and logging it
    imports would triple its 6 MB).
    """
    global _generation, _handler, _pending
    if lazy:
        _pending = (level, json)
        _generation += 1
        return
    _pending = None
    import logging

    structlog = _import_structlog()
    threshold = LEVELS.get(level, LEVELS["info"])
    terminal = sys.stderr.isatty()
    as_json = not terminal if json is None else json

    shared: list[Processor] = [
        structlog.processors.add_log_level,
        _add_process_fields,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: list[Processor]
    if as_json:
        # JSON escapes whatever a client sent (control characters included).
        renderer = [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    else:
        renderer = [
            structlog.processors.format_exc_info,
            _escape_controls,  # a client's bytes must not drive the terminal or forge lines
            structlog.dev.ConsoleRenderer(
                colors=terminal,
                sort_keys=False,
                repr_native_str=True,  # values as repr(): control characters escaped
                exception_formatter=structlog.dev.plain_traceback,  # never local variables
            ),
        ]
    # Our events: structlog's own fast path (a filtering bound logger writing one line
    # per event, under a lock, then flushing).
    structlog.configure(
        processors=[*shared, *renderer],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,  # our Logger keeps the bound logger itself
    )

    # The standard library's records: the same processors, by ProcessorFormatter.
    handler = logging.StreamHandler(sys.stderr)  # one write of the line and its newline
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderer],
        )
    )
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    root.addHandler(handler)
    root.setLevel(threshold)
    _handler = handler
    # aiosmtpd logs every command and reply at INFO with the client's raw text
    # (log injection; 641 of 809 lines under a fuzzer): only its warnings and errors.
    logging.getLogger("mail.log").setLevel(max(threshold, logging.WARNING))
    logging.captureWarnings(True)  # warnings become `py.warnings` records, not bare text
    _generation += 1


def bind(**fields: Any) -> None:
    """Add `fields` to every event of this process from now on (a serving process's index)."""
    global _context
    _context = {**_context, **fields}


class Logger:
    """Events of one part of smtpy; `name` says which (the `logger` field of each line)."""

    __slots__ = ("_bound", "_generation", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._bound: Any = None
        self._generation = -1

    def _logger(self) -> Any:
        if self._generation != _generation:
            if _pending is not None:
                configure(_pending[0], json=_pending[1])
            elif _handler is None:  # an event before any configure(): the defaults
                configure()
            import structlog

            self._bound = structlog.get_logger().bind(logger=self.name)
            self._generation = _generation
        return self._bound

    def debug(self, event: str, **fields: Any) -> None:
        self._logger().debug(event, **fields)

    def info(self, event: str, **fields: Any) -> None:
        self._logger().info(event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._logger().warning(event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        self._logger().error(event, **fields)

    def exception(self, event: str, **fields: Any) -> None:
        """An error with the exception being handled (its traceback, without locals)."""
        self._logger().exception(event, **fields)


def get(name: str) -> Logger:
    return Logger(name)


# -- processors ----------------------------------------------------------------------


def _add_process_fields(logger: Any, method: str, event_dict: EventDict) -> EventDict:
    """The fields `bind()` set for the whole process (its threads included)."""
    for key, value in _context.items():
        event_dict.setdefault(key, value)
    return event_dict


_CONTROLS: dict[int, str] = {
    **{c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))},
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}
_TRACEBACK_CONTROLS = {c: s for c, s in _CONTROLS.items() if c != 0x0A}


def _escape_controls(
    logger: Any, method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Control characters as `\\xNN` in what the console shows as it is: the event (a
    standard library record's message) and a traceback (which keeps its newlines)."""
    for key, table in (("event", _CONTROLS), ("exception", _TRACEBACK_CONTROLS)):
        value = event_dict.get(key)
        if isinstance(value, str):
            event_dict[key] = value.translate(table)
    return event_dict


def _import_structlog() -> Any:
    """structlog, without the rich it would load for features we do not use.

    `import structlog` imports rich and pygments when they are installed (they
    are: the CLI prints with rich), for its pretty console tracebacks, which
    show local variables: we use its plain ones. Hiding rich while structlog
    loads keeps 66 modules out of a serving process (measured: 3.5 MB less
    private memory each); structlog documents rich as optional.
    """
    if "structlog" in sys.modules or "rich" in sys.modules:
        import structlog

        return structlog
    sys.modules["rich"] = None  # type: ignore[assignment]  # ImportError for structlog
    try:
        import structlog
    finally:
        del sys.modules["rich"]
    return structlog
