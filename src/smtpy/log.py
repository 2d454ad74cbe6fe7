"""Structured logs: JSON lines when not on a terminal (journald, shippers), colour on one.

Events carry the queue id, addresses and remote replies; never message bodies,
keys or secrets.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure(level: str = "info", *, json: bool | None = None) -> None:
    """Set up structlog for the daemon; JSON unless stderr is a terminal."""
    as_json = (not sys.stderr.isatty()) if json is None else json
    renderer: Any = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info if as_json else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        # One write per line (print() makes two: the text, then the newline), so
        # the lines of several serving processes sharing stderr never interleave.
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    # aiosmtpd logs every command at INFO through the standard library: keep it quiet.
    logging.getLogger("mail.log").setLevel(logging.WARNING)


def get(name: str) -> Any:
    return structlog.get_logger(name)
