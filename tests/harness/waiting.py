"""Waiting for an event the test can observe, instead of sleeping for a time that only suffices on an idle machine.

The timeouts are about hangs, not speed: a slow machine makes a test slower, never red.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(
    condition: Callable[[], object], what: str | Callable[[], str], timeout: float = 120.0, interval: float = 0.02
) -> None:
    """Return as soon as `condition()` is true; else `TimeoutError` after `timeout` seconds, naming `what` (a
    callable is asked then, e.g. for the tail of a log)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not seen within {timeout:g}s: {what() if callable(what) else what}")
        time.sleep(interval)
