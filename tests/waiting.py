"""Waiting in tests for something another process does: poll, within a bounded time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    check: Callable[[], T], what: str, *, timeout: float = 20.0, interval: float = 0.05
) -> T:
    """Call `check` until it returns a true value, and return that value; fail saying
    that `what` did not happen once `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"{what} within {timeout:g} s"
        time.sleep(interval)
