"""/metrics: the station's Prometheus metrics, behind the review page's rules
(daemon.review.web.auth.guard): this machine only without a password or token; else a
signed-in browser, or review.token as `Authorization: Bearer` (a scraper).

Served here rather than on a port of its own: one listener, one set of rules for who may
read what the station is doing, and no second bind to get wrong. What is served comes in
at construction (create_app's `metrics`: the service's daemon.service.metrics.StationMetrics),
as anything with `exposition()` and `close()`."""

from __future__ import annotations

from typing import Protocol

from flask import Blueprint, Response, current_app
from prometheus_client import CONTENT_TYPE_LATEST

from daemon.review.web.common import plain

bp = Blueprint("metrics", __name__)


class Exposition(Protocol):
    """What /metrics serves: the service builds it (daemon.service.metrics.StationMetrics)
    with what only the running service knows, and hands it to the page."""

    def exposition(self) -> bytes:
        """The Prometheus text format (CONTENT_TYPE_LATEST), collected now."""

    def close(self) -> None:
        """Release what the scrapes hold (their database connections)."""


@bp.get("/metrics")
def metrics():
    station = current_app.extensions.get("metrics")
    if station is None:  # [metrics] enabled = false, or none handed in
        return plain(404, "Nothing here.")
    return Response(station.exposition(), content_type=CONTENT_TYPE_LATEST,
                    headers={"Cache-Control": "no-store"})
