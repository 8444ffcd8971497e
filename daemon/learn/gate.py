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

from daemon.core.config import Config
from daemon.core.db.models import Model
from daemon.core.errors import ModelMismatch
from daemon.learn.coldstart import is_unverified
from daemon.learn.labels import current_labels
from daemon.learn.metrics import paired_comparison, song_metrics
from daemon.learn.registry import bundle_dir
from daemon.suggest.classifier import Classifier
from daemon.suggest.embedded import (
    EmbeddedClassifier,
    cached_features,
    load_on_embeddings,
    member_caches,
)
from daemon.suggest.inputs import SongInputs, WindowSpecs
from daemon.suggest.stored_bundles import HELD_OUT

log = logging.getLogger(__name__)

# A song's model input: CNN clips alone, or {feature kind: input}.
SongFeatures = np.ndarray | dict[str, np.ndarray]


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict: promote or not, why, and what it measured (changes in points,
    candidate - active, with their 95% paired-bootstrap intervals)."""

    promote: bool
    reason: str
    f1_change: float | None = None
    recall_changes: dict[str, float] = field(default_factory=dict)
    f1_interval: tuple[float, float] | None = None
    recall_intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    p_value: float | None = None
    n_songs: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"promote": self.promote, "reason": self.reason,
                "f1_change": self.f1_change, "recall_changes": self.recall_changes,
                "f1_interval": list(self.f1_interval) if self.f1_interval else None,
                "recall_intervals": {g: list(v) for g, v in self.recall_intervals.items()},
                "p_value": self.p_value, "n_songs": self.n_songs}


def _points(value: float) -> float:
    return round(100.0 * value, 2)


def gate(candidate: dict[str, Any], active: dict[str, Any] | None, max_f1_drop: float,
         max_recall_drop: float, comparison: dict[str, Any] | None = None) -> GateDecision:
    """Promote a candidate or not: reject it only when it is worse WITH EVIDENCE.

    In: two `song_metrics` dicts on the same holdout and their `paired_comparison`
    (candidate first). The limits are percentage points (config.retrain). Rejected when
    the 95% interval's upper bound of (candidate - active) macro-F1 lies below
    -`max_f1_drop` points, or, for a genre tested here, that of its recall below
    -`max_recall_drop` (a genre the candidate does not know has recall 0). On a small
    holdout one song moves macro-F1 by several points and the interval reaches past 0:
    such a candidate is promoted. No active model: promoted; no songs: rejected.
    """
    if active is None:
        return GateDecision(True, "no active model to compare with")
    if not candidate.get("n_songs") or comparison is None or not comparison.get("n_songs"):
        return GateDecision(False, "the holdout has no songs to compare on")
    eps = 1e-9  # a bound exactly at the limit passes despite float rounding
    low, high = comparison["f1_interval"]
    facts = {"f1_change": _points(comparison["f1_difference"]),
             "recall_changes": {g: _points(v) for g, v in
                                comparison["recall_difference"].items()},
             "f1_interval": (_points(low), _points(high)),
             "recall_intervals": {g: (_points(a), _points(b)) for g, (a, b) in
                                  comparison["recall_interval"].items()},
             "p_value": comparison["p_value"], "n_songs": comparison["n_songs"]}
    f1_text = (f"macro-F1 {100 * candidate['macro_f1']:.1f} vs {100 * active['macro_f1']:.1f} "
               f"({facts['f1_change']:+.1f} points, 95% interval {100 * low:+.1f} to "
               f"{100 * high:+.1f}; McNemar p = {comparison['p_value']:.2g}, "
               f"{comparison['n_songs']} songs)")
    if 100 * high < -max_f1_drop - eps:
        return GateDecision(False, f"{f1_text}: worse with evidence (even the interval's "
                                   f"best case drops more than {max_f1_drop:g} points)",
                            **facts)
    worst = min(((g, b[1]) for g, b in facts["recall_intervals"].items()),
                key=lambda kv: kv[1], default=None)
    if worst is not None and worst[1] < -max_recall_drop - eps:
        genre = worst[0]
        return GateDecision(False, f"{f1_text}, but {genre} recall drops "
                                   f"{-facts['recall_changes'][genre]:.1f} points with "
                                   f"evidence (at least {-worst[1]:.1f}; limit "
                                   f"{max_recall_drop:g})", **facts)
    return GateDecision(True, f"{f1_text}; not worse with evidence, and no genre's recall "
                              f"drops more than {max_recall_drop:g} points with evidence",
                        **facts)


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


def holdout_for(candidate_split: Path, active_split: Path | None,
                served: bool = False) -> list[HoldoutSong]:
    """The gate's holdout: the candidate's test songs that the judged active model never
    saw. `served`: the active model judged is the served refit (no held-out fit kept),
    so every song it was refit on ("fitted") is removed too.

    The trainer's artist-disjoint split is stable across runs (artist hash + seed), so the
    test artists were never trained on by either held-out fit; songs in the active model's
    own train/validation lists are removed all the same, should its split have differed.
    """
    seen: set[str] = set()
    if active_split is not None:
        parts = ("train", "validation", "fitted") if served else ("train", "validation")
        seen = {s.path for part in parts for s in read_split(active_split, part)}
    return [s for s in read_split(candidate_split, "test") if s.path not in seen]


def held_out_model(run_dir: Path, served: Classifier) -> tuple[Classifier, str]:
    """The model the gate judges for a trainer run: the chosen family's held-out fit
    (HELD_OUT: it never trained on the test songs), not the served refit, which trained
    on every label, the test songs included. A run without one (an older trainer) is
    judged by its served model. Out: (model, which, in words)."""
    if not (run_dir / HELD_OUT).is_file():
        return served, "the served model"
    try:
        return (load_on_embeddings(run_dir / HELD_OUT, served.spec, served.backbone_spec),
                "the held-out fit of the served model's family")
    except ModelMismatch as err:
        log.warning("%s unusable (%s); judging the served model", HELD_OUT, err)
        return served, "the served model"


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


def holdout_probs(classifier: Classifier, features: list[SongFeatures], classes: list[str],
                  batch: int = 64) -> np.ndarray:
    """One model's song probabilities over the union `classes` (genres it does not know
    get 0, so it never predicts them)."""
    probs = np.zeros((len(features), len(classes)))
    columns = [classes.index(c) for c in classifier.classes]
    for start in range(0, len(features), batch):
        part = classifier.predict_songs(features[start:start + batch])
        probs[start:start + len(part)][:, columns] = part
    return probs


def evaluate_on(classifier: Classifier, songs: list[HoldoutSong], features: list[SongFeatures],
                classes: list[str], batch: int = 64) -> dict[str, Any]:
    """`song_metrics` of one model on songs over the union `classes` (unknown genres = 0)."""
    probs = holdout_probs(classifier, features, classes, batch)
    return song_metrics(probs, [s.genre for s in songs], classes)


def judge(sessions: sessionmaker[Session], config: Config, run_dir: Path,
          candidate: Classifier, active: Model | None, recent: set[str]
          ) -> tuple[GateDecision, dict[str, Any]]:
    """Both models on the same holdout; out: the verdict and what was measured."""
    if is_unverified(active):
        return over_unverified(judge(sessions, config, run_dir, candidate, None, recent), active)
    active_dir = bundle_dir(sessions, config, active) if active is not None else None
    active_split = active_dir / "split.json" if active_dir is not None else None
    old, served = _active_classifier(active, active_dir, candidate)
    songs = holdout_for(run_dir / "split.json", active_split, served)
    with sessions() as session:
        songs = with_current_labels(session, songs)
    # Both models on the songs' cached embeddings where they carry the backbone (never
    # running it again); the CNN's clips from the trainer's caches, made at the
    # service's windows per song (one count for training and serving).
    if not isinstance(candidate, EmbeddedClassifier):
        candidate = load_on_embeddings(candidate.path, candidate.spec,
                                       candidate.backbone_spec)
    cache = SongInputs(config.cache_dir, WindowSpecs.for_windows(
        config.classifier.windows_per_song, candidate.spec, candidate.backbone_spec))
    feeding = [member_caches(model, cache.caches, cache.embeddings)
               for model in (candidate, old) if model is not None]
    kept, features, old_features = [], [], []
    for song in songs:
        found = [cached_features(song.fingerprint, f) for f in feeding]
        if all(f is not None for f in found):
            kept.append(song)
            features.append(found[0])
            old_features.append(found[-1])
    facts: dict[str, Any] = {
        "holdout_songs": len(kept), "holdout_without_features": len(songs) - len(kept),
        "holdout_recent_labels": sum(s.path in recent for s in kept),
        "recent_labels": len(recent)}
    classes = list(candidate.classes)
    if old is not None:
        classes += [c for c in old.classes if c not in classes]
    truth = [s.genre for s in kept]
    mine_probs = holdout_probs(candidate, features, classes)
    mine = song_metrics(mine_probs, truth, classes)
    theirs = comparison = None
    if old is not None:
        theirs_probs = holdout_probs(old, old_features, classes)
        theirs = song_metrics(theirs_probs, truth, classes)
        # Over song_metrics' genres (classes + true genres neither model knows).
        comparison = paired_comparison(truth, mine_probs.argmax(axis=1),
                                       theirs_probs.argmax(axis=1), mine["genres"])
    verdict = gate(mine, theirs, config.retrain.max_f1_drop, config.retrain.max_recall_drop,
                   comparison)
    facts["candidate_metrics"] = mine
    facts["candidate"] = _brief(mine)
    facts["active"] = _brief(theirs) if theirs else None
    return verdict, facts


def _active_classifier(active: Model | None, folder: Path | None, candidate: Classifier
                       ) -> tuple[Classifier | None, bool]:
    """The active model (its bundle in `folder`) as the gate judges it, loaded for the
    candidate's features (on the songs' cached embeddings where it carries the backbone):
    its held-out fit when the registry kept one (like the candidate's: neither was fitted
    on the other's test songs), else the served bundle. Out: (model or None when none or
    unusable, whether it is the served bundle)."""
    if active is None or folder is None:
        return None, False
    for path, served in ((folder / HELD_OUT, False), (folder / "model.onnx", True)):
        if path.is_file():
            try:
                return load_on_embeddings(path, candidate.spec, candidate.backbone_spec), served
            except ModelMismatch as err:
                log.warning("active model v%04d: %s cannot be evaluated (%s)",
                            active.version, path.name, err)
    log.warning("active model v%04d cannot be evaluated; the candidate replaces it",
                active.version)
    return None, False
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
            "recall": {g: s["recall"] for g, s in metrics["per_class"].items() if s["support"]},
            "not_tested": metrics["not_tested"]}
