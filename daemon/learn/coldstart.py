"""Cold start: a first, unverified model while the station has too few labels to train.

The Retrainer (daemon.learn.retrainer) builds it when no model is active and the policy
says there is not enough to train: `python -m trainer coldstart` runs as a child like the
trainer (onnx only, never TensorFlow in the daemon), writing one bundle that maps the
backbone's MSD tags to the station's genres through genres.toml's [cold_start] table. It
is registered with metrics {"family": "coldstart", "unverified": true} and activated; the
policy keeps training as soon as labels suffice, and the gate promotes the first trained
model over it without comparing (nothing on the station's songs says the table is right).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from daemon.core.config import Config
from daemon.core.db.engine import transaction
from daemon.core.db.models import Model, Suggestion, Track, utcnow
from daemon.core.states import SuggestionStatus, TrackState, move
from daemon.learn.backbone_file import BackboneUnavailable, backbone_onnx
from daemon.tags.genres import station_genres_file

FAMILY = "coldstart"
# Stored on the model row (models list/show, the web page, the gate and the policy read it).
METRICS: dict[str, Any] = {"family": FAMILY, "unverified": True}


def is_unverified(model: Model | None) -> bool:
    """The model is the unverified cold-start one (never judged on the station's songs)."""
    return model is not None and bool((model.metrics or {}).get("unverified"))


def unavailable(config: Config) -> str | None:
    """Why no cold-start model can be built here, or None when it can.

    Checks the switch (classifier.backbone) and that `make backbone` left the ONNX
    backbone (looked up by the rule the trainer uses too, daemon.learn.backbone_file).
    """
    if not config.classifier.backbone:
        return "classifier.backbone is false: no cold-start suggestions from the backbone"
    try:
        backbone_onnx()
    except BackboneUnavailable as err:
        return f"no cold-start suggestions: {err}"
    return None


def coldstart_command(config: Config, out: Path) -> list[str]:
    """The `python -m trainer coldstart` argv writing the bundle into `out`."""
    argv = [sys.executable, "-m", "trainer", "coldstart", "--out", str(out)]
    genres = station_genres_file(config)
    if genres is not None:
        argv += ["--genres", str(genres)]
    return argv


def requeue_suggestions(sessions: sessionmaker[Session], model_id: int) -> int:
    """After a trained model replaced the cold start (`model_id`) and re-scored what the
    feature cache allowed: the songs still carrying a pending cold-start suggestion (no
    cached features for the trained model: the cold start needs only backbone patches)
    go back to the worker's queue, their suggestion superseded, so every unverified
    suggestion is replaced by the trained model's. Out: how many tracks were queued."""
    with transaction(sessions) as session:
        pending = session.scalars(select(Suggestion).where(
            Suggestion.model_id == model_id,
            Suggestion.status == SuggestionStatus.PENDING)).all()
        now, queued = utcnow(), 0
        for suggestion in pending:
            track = session.get(Track, suggestion.track_id)
            if track is None or track.state != TrackState.SUGGESTED:
                continue  # being reviewed or re-read: the reviewer or the worker decides
            suggestion.status = SuggestionStatus.SUPERSEDED
            move(track, TrackState.QUEUED, now)
            queued += 1
    return queued
