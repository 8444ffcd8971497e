"""Metrics, calibration and the evaluation report; never imports TensorFlow.

The song metrics and the paired comparison live in daemon.learn.metrics (the nightly gate
uses them too) and are re-exported here; matplotlib is imported only by the two
plotting functions. Song prediction is daemon.suggest.classifier.song_probabilities, the same
function the daemon serves with.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from daemon.audio.featurecache import FeatureCache
from daemon.audio.features import BACKBONE, BACKBONE_SPEC, CNN, DEFAULT_SPEC, FeatureSpec
from daemon.core.errors import ModelMismatch
from daemon.learn.metrics import (  # one implementation, shared with the nightly gate
    expected_calibration_error,
    negative_log_likelihood,
    paired_comparison,
    reliability_bins,
    song_metrics,
)
from daemon.suggest.classifier import Classifier, read_metadata, song_probabilities
from daemon.suggest.embedded import (
    EmbeddedClassifier,
    cached_features,
    load_on_embeddings,
    member_caches,
)
from daemon.tags.genres import load_genre_map
from trainer.dataset import default_cache_dir, find_labelled_songs, load_features

__all__ = ["Calibration", "calibration_report", "choose_temperature", "clip_accuracy",
           "evaluate_model", "expected_calibration_error", "fit_temperature",
           "negative_log_likelihood", "paired_comparison", "plot_confusion",
           "plot_reliability", "reliability_bins", "song_metrics"]

# The temperature is fitted only on at least this many held-out songs. Below it the fit
# follows one or two songs (on a hard 151-song library, T fitted on 6 validation songs
# made test ECE worse, 0.757 -> 0.973), and a 10-bin ECE cannot judge it: 30 songs make
# 5 cross-fitting folds of 6 songs, each fit on 24.
MIN_CALIBRATION_SONGS = 30
CALIBRATION_FOLDS = 5
FITTED = "fitted"
TOO_FEW_SONGS = "1.0 (fit on too few songs)"
FITTED_WAS_WORSE = "1.0 (fitted was worse on held-out songs)"


def clip_accuracy(clip_probs: np.ndarray, labels: np.ndarray) -> float:
    """(n_songs, clips, k) clip probabilities + (n_songs,) label indices -> clip accuracy."""
    if not len(labels):
        return 0.0
    hits = clip_probs.argmax(axis=2) == np.asarray(labels)[:, None]
    return float(hits.mean())


def fit_temperature(clip_probs: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising song-level NLL on (n_songs, clips, k) validation clips.

    Searched over T in [1/clips, 20]: 1/clips turns the mean of clip log-probabilities
    into their sum (clips as independent evidence), the most confident reading that
    makes sense; a perfectly separated validation set would otherwise push T to 0.
    1.0 when there are no songs.
    """
    from scipy.optimize import minimize_scalar

    if not len(labels):
        return 1.0
    result = minimize_scalar(
        lambda log_t: negative_log_likelihood(
            song_probabilities(clip_probs, float(np.exp(log_t))), labels),
        bounds=(-np.log(clip_probs.shape[1]), np.log(20.0)), method="bounded",
        options={"xatol": 1e-4})
    return float(np.exp(result.x))


@dataclass(frozen=True)
class Calibration:
    """The chosen temperature, why (FITTED / TOO_FEW_SONGS / FITTED_WAS_WORSE), and the
    cross-fitted held-out figures it was chosen on."""

    temperature: float
    how: str
    held_out: dict


def choose_temperature(clip_probs: np.ndarray, labels: np.ndarray, *,
                       min_songs: int = MIN_CALIBRATION_SONGS, folds: int = CALIBRATION_FOLDS,
                       seed: int = 0) -> Calibration:
    """Fitted temperature or 1.0, whichever is better on songs the fit never saw.

    clip_probs: (n_songs, windows, k) probabilities of held-out songs (never songs the
    model was fitted on: their predictions are over-confident); labels: (n_songs,).
    Fewer than `min_songs`: 1.0. Else cross-fitted: each of `folds` seeded folds is scored
    with T fitted on the others; the fitted T (refitted on all songs) is kept when its
    held-out NLL is lower than 1.0's and its held-out ECE no higher, else 1.0.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if n < min_songs:
        return Calibration(1.0, TOO_FEW_SONGS, {"songs": n, "min_songs": min_songs})
    fold = np.random.default_rng(seed).permutation(n) % folds
    crossed = np.empty((n, clip_probs.shape[2]))
    temperatures = []
    for f in range(folds):
        mine = fold == f
        t = fit_temperature(clip_probs[~mine], labels[~mine])
        temperatures.append(t)
        crossed[mine] = song_probabilities(clip_probs[mine], t)
    plain = song_probabilities(clip_probs, 1.0)
    held_out = {"songs": n, "folds": folds, "fold_temperatures": temperatures,
                "nll_fitted": negative_log_likelihood(crossed, labels),
                "nll_1": negative_log_likelihood(plain, labels),
                "ece_fitted": expected_calibration_error(crossed, labels),
                "ece_1": expected_calibration_error(plain, labels)}
    if (held_out["nll_fitted"] < held_out["nll_1"]
            and held_out["ece_fitted"] <= held_out["ece_1"]):
        return Calibration(fit_temperature(clip_probs, labels), FITTED, held_out)
    return Calibration(1.0, FITTED_WAS_WORSE, held_out)


def calibration_report(clip_probs: np.ndarray, labels: np.ndarray, temperature: float) -> dict:
    """ECE and NLL of song probabilities before (T=1) and after calibration."""
    before = song_probabilities(clip_probs, 1.0)
    after = song_probabilities(clip_probs, temperature)
    return {"temperature": temperature,
            "ece_before": expected_calibration_error(before, labels),
            "ece_after": expected_calibration_error(after, labels),
            "nll_before": negative_log_likelihood(before, labels) if len(labels) else 0.0,
            "nll_after": negative_log_likelihood(after, labels) if len(labels) else 0.0}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(confusion: Sequence[Sequence[int]], genres: Sequence[str], path: Path,
                   title: str = "Song-level confusion (test)") -> None:
    """Write the confusion matrix (rows true, columns predicted) as a PNG."""
    plt = _pyplot()
    matrix = np.asarray(confusion)
    size = max(4.0, 0.6 * len(genres) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(genres)), genres, rotation=45, ha="right")
    ax.set_yticks(range(len(genres)), genres)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    top = matrix.max() if matrix.size else 0
    for (i, j), count in np.ndenumerate(matrix):
        if count:
            ax.text(j, i, str(count), ha="center", va="center",
                    color="white" if count > top / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_reliability(before: np.ndarray, after: np.ndarray, labels: np.ndarray, path: Path,
                     bins: int = 10) -> None:
    """Write a reliability diagram (accuracy vs confidence) before/after calibration."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect")
    for probs, name in ((before, "before"), (after, "after")):
        points = reliability_bins(probs, labels, bins)
        ece = expected_calibration_error(probs, labels, bins)
        ax.plot([p["confidence"] for p in points], [p["accuracy"] for p in points],
                marker="o", label=f"{name} (ECE {ece:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("confidence (top-1)")
    ax.set_ylabel("accuracy")
    ax.set_title("Song-level reliability (test)")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def evaluate_model(model_path: Path, library: Path, *, genres_path: Path | None = None,
                   cache_dir: Path | None = None, processes: int | None = None,
                   progress: bool = False) -> dict:
    """`genretagger evaluate`: a bundle against a tagged library, through onnxruntime.

    Songs whose tag maps to one of the model's genres are scored; files that cannot be
    read are listed under "failed". Returns song_metrics plus clip accuracy, ECE and counts.
    """
    meta = read_metadata(model_path)
    try:  # the bundle's own spec: compute whatever features the model was trained on
        spec = (FeatureSpec.from_json(_json_text(meta["feature_spec"]))
                if "feature_spec" in meta else DEFAULT_SPEC)  # a backbone bundle has none
    except (TypeError, ValueError) as err:
        raise ModelMismatch(f"{model_path}: bundle feature_spec unreadable ({err})") from None
    # The windows per song the bundle was trained and calibrated on (one count throughout).
    windows = int(meta.get("clips_per_song") or spec.clips_per_song)
    spec = dataclasses.replace(spec, clips_per_song=windows)
    backbone_spec = dataclasses.replace(BACKBONE_SPEC, clips_per_song=windows)
    root = Path(cache_dir or default_cache_dir())
    classifier, backbone = _on_embeddings(model_path, spec, backbone_spec, root)
    genre_map = load_genre_map(genres_path)
    songs, skipped = find_labelled_songs(library, genre_map)
    known = [s for s in songs if s.genre in classifier.classes]
    caches = {CNN: FeatureCache(root, spec), BACKBONE: FeatureCache(root, backbone_spec)}
    needs = classifier.bundle.member_needs
    usable, failed, stats = load_features(
        known, caches[CNN], patches=caches[BACKBONE] if BACKBONE in needs else None,
        embeddings=backbone.embeddings if backbone else None, processes=processes,
        progress=progress)
    if backbone is not None:
        from trainer.families import embed_songs

        embed_songs(usable, backbone)
    feeding = member_caches(classifier, caches,
                            backbone.embeddings if backbone else caches[BACKBONE])
    index = {g: i for i, g in enumerate(classifier.classes)}
    labels = np.array([index[s.genre] for s in usable], dtype=np.int64)
    probs = np.zeros((0, len(index)))
    for start in range(0, len(usable), 64):
        chunk = [cached_features(s.fingerprint, feeding) for s in usable[start:start + 64]]
        probs = np.concatenate([probs, classifier.predict_songs(chunk)])
    cnn = next((m for m in classifier.members if m.kind == CNN), None)
    clip_acc = None  # of the (first) cnn member, as before the backbone families
    if cnn is not None and len(classifier.members) == 1 and len(usable):
        clips = np.concatenate([caches[CNN].get(s.fingerprint) for s in usable])
        flat = classifier.clip_probabilities(clips)
        clip_acc = clip_accuracy(flat.reshape(len(usable), -1, len(index)), labels)
    report = song_metrics(probs, labels.tolist(), classifier.classes)
    report.update({
        "model": str(model_path),
        "library": str(library),
        "clip_accuracy": clip_acc,
        "ece": expected_calibration_error(probs, labels),
        "left_out_genres": sorted({s.genre for s in songs} - set(classifier.classes)),
        "failed": [{"path": rel, "reason": reason} for rel, reason in failed],
        "skipped": len(skipped),
        "decoded": stats["decoded"],
        "cached": stats["cached"],
    })
    return report


def _on_embeddings(path: Path, spec: FeatureSpec, backbone_spec, root: Path):
    """(the bundle as evaluated, the trainer's Backbone or None): a bundle with the backbone
    runs on the songs' cached embeddings, embedding (and caching) the songs not embedded
    yet with the converted backbone; without one (`make backbone` not run) the whole
    bundle runs on patches."""
    classifier = load_on_embeddings(path, spec, backbone_spec)
    if BACKBONE not in classifier.bundle.member_needs or not isinstance(
            classifier, EmbeddedClassifier):
        return classifier, None
    from trainer.families import open_backbone

    backbone = open_backbone(root, True, backbone_spec)
    if backbone is None:
        return Classifier.load(path, spec, backbone_spec), None
    return classifier, backbone


def _json_text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)
