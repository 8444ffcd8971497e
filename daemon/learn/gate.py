"""The gate: candidate and active model through onnxruntime on the same artist-disjoint
holdout, features from the feature cache. gate() is the pure verdict; judge() gathers the
holdout, evaluates both models and asks it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from daemon.audio.featurecache import FeatureCache
from daemon.core.config import Config
from daemon.core.db.models import Model
from daemon.core.errors import ModelMismatch
from daemon.learn.coldstart import is_unverified
from daemon.learn.labels import current_labels
from daemon.learn.registry import bundle_dir
from daemon.suggest.classifier import Classifier
from trainer.evaluate import song_metrics  # numpy only at import: no TensorFlow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict: promote or not, why, and the changes it measured (in points)."""

    promote: bool
    reason: str
    f1_change: float | None = None
    recall_changes: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"promote": self.promote, "reason": self.reason,
                "f1_change": self.f1_change, "recall_changes": self.recall_changes}


def gate(candidate: dict[str, Any], active: dict[str, Any] | None, max_f1_drop: float,
         max_recall_drop: float) -> GateDecision:
    """Promote a candidate or not, from two `song_metrics` dicts on the same holdout.

    Metrics are fractions; the limits are percentage points (config.retrain). Promote when
    there is no active model, or when the candidate's macro-F1 >= the active's minus
    `max_f1_drop` points and no genre's recall (genres with holdout songs) drops by more
    than `max_recall_drop` points; a genre the candidate does not know has recall 0.
    """
    if active is None:
        return GateDecision(True, "no active model to compare with")
    if not candidate.get("n_songs"):
        return GateDecision(False, "the holdout has no songs to compare on")
    eps = 1e-9  # equal scores must pass despite float rounding
    f1_change = 100.0 * (candidate["macro_f1"] - active["macro_f1"])
    changes = {}
    for genre, stats in active.get("per_class", {}).items():
        if not stats.get("support"):
            continue
        mine = candidate.get("per_class", {}).get(genre, {}).get("recall", 0.0)
        changes[genre] = 100.0 * (mine - stats["recall"])
    worst = min(changes.items(), key=lambda kv: kv[1], default=None)
    f1_text = (f"macro-F1 {100 * candidate['macro_f1']:.1f} vs {100 * active['macro_f1']:.1f} "
               f"({f1_change:+.1f} points)")
    if f1_change < -max_f1_drop - eps:
        return GateDecision(False, f"{f1_text}: drops more than {max_f1_drop:g} points",
                            f1_change, changes)
    if worst is not None and worst[1] < -max_recall_drop - eps:
        return GateDecision(False, f"{f1_text}, but {worst[0]} recall drops {-worst[1]:.1f} "
                                   f"points (limit {max_recall_drop:g})", f1_change, changes)
    return GateDecision(True, f"{f1_text}; no genre's recall drops more than "
                              f"{max_recall_drop:g} points", f1_change, changes)



@dataclass(frozen=True)
class HoldoutSong:
    path: str
    genre: str
    fingerprint: str


def read_split(path: Path, part: str) -> list[HoldoutSong]:
    """One part ("test", "train", "validation") of a trainer split.json ([] when absent)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [HoldoutSong(str(s["path"]), str(s["genre"]), str(s.get("fingerprint") or ""))
            for s in data.get(part, []) if isinstance(s, dict) and "path" in s]


def holdout_for(candidate_split: Path, active_split: Path | None) -> list[HoldoutSong]:
    """The gate's holdout: the candidate's test songs that the active model never saw.

    The trainer's artist-disjoint split is stable across runs (artist hash + seed), so the
    test artists were never trained on by either model; songs in the active model's own
    train/validation lists are removed all the same, should its split have differed.
    """
    seen: set[str] = set()
    if active_split is not None:
        seen = {s.path for part in ("train", "validation") for s in read_split(active_split, part)}
    return [s for s in read_split(candidate_split, "test") if s.path not in seen]


def with_current_labels(session: Session, songs: list[HoldoutSong]) -> list[HoldoutSong]:
    """The holdout judged by the station's labels now (confirmed label, else mapped tag),
    not by whatever labels the candidate was trained with; songs the DB does not know
    keep the split's genre, songs whose label is gone are dropped."""
    labels = current_labels(session, [s.path for s in songs])
    out = []
    for song in songs:
        if song.path not in labels:
            out.append(song)
        elif labels[song.path]:
            out.append(HoldoutSong(song.path, labels[song.path], song.fingerprint))
    return out


def evaluate_on(classifier: Classifier, songs: list[HoldoutSong], features: list[np.ndarray],
                classes: list[str], batch: int = 64) -> dict[str, Any]:
    """`song_metrics` of one model on songs over the union `classes` (unknown genres = 0)."""
    probs = np.zeros((len(songs), len(classes)))
    columns = [classes.index(c) for c in classifier.classes]
    for start in range(0, len(songs), batch):
        part = classifier.predict_songs(features[start:start + batch])
        probs[start:start + len(part)][:, columns] = part
    return song_metrics(probs, [s.genre for s in songs], classes)


def judge(sessions: sessionmaker[Session], config: Config, run_dir: Path,
          candidate: Classifier, active: Model | None, recent: set[str]
          ) -> tuple[GateDecision, dict[str, Any]]:
    """Both models on the same holdout; out: the verdict and what was measured."""
    if is_unverified(active):
        return over_unverified(judge(sessions, config, run_dir, candidate, None, recent), active)
    active_split = bundle_dir(active) / "split.json" if active is not None else None
    songs = holdout_for(run_dir / "split.json", active_split)
    with sessions() as session:
        songs = with_current_labels(session, songs)
    cache = FeatureCache(config.cache_dir, candidate.spec)
    kept, features = [], []
    for song in songs:
        f = cache.get(song.fingerprint) if song.fingerprint else None
        if f is not None:
            kept.append(song)
            features.append(f)
    facts: dict[str, Any] = {
        "holdout_songs": len(kept), "holdout_without_features": len(songs) - len(kept),
        "holdout_recent_labels": sum(s.path in recent for s in kept),
        "recent_labels": len(recent)}
    classes = list(candidate.classes)
    old = None
    if active is not None:
        try:
            old = Classifier.load(active.path, candidate.spec)
        except ModelMismatch as err:
            log.warning("active model v%04d cannot be evaluated (%s); the candidate "
                        "replaces it", active.version, err)
    if old is not None:
        classes += [c for c in old.classes if c not in classes]
    mine = evaluate_on(candidate, kept, features, classes)
    theirs = evaluate_on(old, kept, features, classes) if old is not None else None
    verdict = gate(mine, theirs, config.retrain.max_f1_drop, config.retrain.max_recall_drop)
    facts["candidate_metrics"] = mine
    facts["candidate"] = _brief(mine)
    facts["active"] = _brief(theirs) if theirs else None
    return verdict, facts


def over_unverified(judged: tuple[GateDecision, dict[str, Any]], active: Model
                    ) -> tuple[GateDecision, dict[str, Any]]:
    """The candidate judged alone, promoted over the unverified cold-start model: its
    suggestions come from a hand-made tag table never measured on the station's songs,
    so a model trained on them replaces it without a comparison."""
    verdict, facts = judged
    reason = (f"v{active.version:04d} is the unverified cold-start model: a trained model "
              "replaces it without comparison")
    return GateDecision(True, reason, verdict.f1_change, verdict.recall_changes), facts


def _brief(metrics: dict[str, Any]) -> dict[str, Any]:
    return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
            "n_songs": metrics["n_songs"],
            "recall": {g: s["recall"] for g, s in metrics["per_class"].items() if s["support"]}}
