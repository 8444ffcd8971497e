"""The one retry backoff: how long to wait before trying again after a failure."""

from __future__ import annotations


def backoff(attempts: int, first: float, most: float = float("inf")) -> float:
    """Seconds before retry number `attempts` (1, 2, ...): `first`, doubling, at most `most`."""
    return min(most, first * 2 ** max(0, attempts - 1))
