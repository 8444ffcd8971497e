"""How the review pages write numbers and times (Jinja filters)."""

from __future__ import annotations


def percent(value: float | None) -> str:
    return "" if value is None else f"{float(value) * 100:.0f}%"


def when(value) -> str:
    """A stored UTC time in the server's local time, as the station reads clocks."""
    return "" if value is None else value.astimezone().strftime("%Y-%m-%d %H:%M")
