"""Helpers the test modules share (tests/ is on sys.path: `from helpers import ...`)."""

from __future__ import annotations

import time


def wait_for(predicate, timeout: float = 10.0, what: str | None = None, every: float = 0.05):
    """Poll `predicate` until it returns something truthy, and return that; after
    `timeout` seconds the test fails, saying what it waited for."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what or predicate}")
