"""Metrics, calibration and the evaluation report; never imports TensorFlow.

The daemon's nightly gate calls `song_metrics`; matplotlib is imported only by the two
plotting functions. Song prediction is daemon.suggest.classifier.song_probabilities, the same
function the daemon serves with.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from daemon.audio.featurecache import FeatureCache
from daemon.audio.features import FeatureSpec
from daemon.core.errors import ModelMismatch
from daemon.suggest.classifier import Classifier, read_metadata, song_probabilities
from daemon.tags.genres import load_genre_map
from trainer.dataset import default_cache_dir, find_labelled_songs, load_features


def _label_indices(labels: Sequence, genres: list[str]) -> np.ndarray:
    index = {g: i for i, g in enumerate(genres)}
    return np.array([int(x) if isinstance(x, int | np.integer) else index[x] for x in labels],
                    dtype=np.int64)


def song_metrics(probs: np.ndarray, labels: Sequence, classes: Sequence[str]) -> dict:
    """Song-level metrics of one model on labelled songs.

    probs: (n_songs, len(classes)) probabilities; labels: true genres as names or as
    indices into `classes`. A true genre the model does not know (a name outside
    `classes`) counts as a miss and gets its own row. Returns
    {accuracy, macro_f1, n_songs, per_class: {genre: {precision, recall, f1, support}},
    genres: [row/column order], confusion: [[count]] (rows true, columns predicted)}.
    macro_f1 averages over genres present in the labels or the predictions (as sklearn).
    """
    classes = list(classes)
    extra = sorted({x for x in labels if isinstance(x, str) and x not in classes})
    genres = classes + extra
    truth = _label_indices(labels, genres)
    predicted = np.asarray(probs).argmax(axis=1) if len(truth) else np.zeros(0, np.int64)
    k = len(genres)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (truth, predicted), 1)
    per_class, f1s = {}, []
    for i, genre in enumerate(genres):
        tp = int(confusion[i, i])
        support, predicted_n = int(confusion[i].sum()), int(confusion[:, i].sum())
        precision = tp / predicted_n if predicted_n else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[genre] = {"precision": precision, "recall": recall, "f1": f1,
                            "support": support}
        if support or predicted_n:
            f1s.append(f1)
    n = len(truth)
    return {
        "accuracy": float(np.trace(confusion) / n) if n else 0.0,
        "macro_f1": float(np.mean(f1s)) if f1s else 0.0,
        "n_songs": n,
        "per_class": per_class,
        "genres": genres,
        "confusion": confusion.tolist(),
    }


def clip_accuracy(clip_probs: np.ndarray, labels: np.ndarray) -> float:
    """(n_songs, clips, k) clip probabilities + (n_songs,) label indices -> clip accuracy."""
    if not len(labels):
        return 0.0
    hits = clip_probs.argmax(axis=2) == np.asarray(labels)[:, None]
    return float(hits.mean())


def reliability_bins(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> list[dict]:
    """Top-1 confidence vs accuracy per equal-width confidence bin (empty bins left out)."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    out = []
    for b in range(bins):
        mask = which == b
        if mask.any():
            out.append({"low": float(edges[b]), "high": float(edges[b + 1]),
                        "count": int(mask.sum()), "confidence": float(confidence[mask].mean()),
                        "accuracy": float(correct[mask].mean())})
    return out


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """ECE: count-weighted mean |accuracy - confidence| over the reliability bins."""
    n = len(labels)
    if not n:
        return 0.0
    return float(sum(b["count"] * abs(b["accuracy"] - b["confidence"])
                     for b in reliability_bins(probs, labels, bins)) / n)


def negative_log_likelihood(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean -log p(true genre)."""
    picked = probs[np.arange(len(labels)), np.asarray(labels)]
    return float(-np.log(np.maximum(picked, 1e-12)).mean())


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
    try:  # the bundle's own spec: compute whatever features the model was trained on
        spec = FeatureSpec.from_json(_json_text(read_metadata(model_path)["feature_spec"]))
    except (KeyError, TypeError, ValueError) as err:
        raise ModelMismatch(f"{model_path}: bundle feature_spec unreadable ({err})") from None
    classifier = Classifier.load(model_path, spec)
    genre_map = load_genre_map(genres_path)
    songs, skipped = find_labelled_songs(library, genre_map)
    known = [s for s in songs if s.genre in classifier.classes]
    cache = FeatureCache(cache_dir or default_cache_dir(), spec)
    usable, failed, stats = load_features(known, cache, processes=processes, progress=progress)
    index = {g: i for i, g in enumerate(classifier.classes)}
    labels = np.array([index[s.genre] for s in usable], dtype=np.int64)
    parts = [np.zeros((0, spec.clips_per_song, len(index)))]
    for start in range(0, len(usable), 64):
        chunk = [cache.get(s.fingerprint) for s in usable[start:start + 64]]
        flat = classifier.clip_probabilities(np.concatenate(chunk))
        parts.append(flat.reshape(len(chunk), -1, len(index)))
    clip_probs = np.concatenate(parts)
    probs = song_probabilities(clip_probs, classifier.temperature)
    report = song_metrics(probs, labels.tolist(), classifier.classes)
    report.update({
        "model": str(model_path),
        "library": str(library),
        "clip_accuracy": clip_accuracy(clip_probs, labels),
        "ece": expected_calibration_error(probs, labels),
        "left_out_genres": sorted({s.genre for s in songs} - set(classifier.classes)),
        "failed": [{"path": rel, "reason": reason} for rel, reason in failed],
        "skipped": len(skipped),
        "decoded": stats["decoded"],
        "cached": stats["cached"],
    })
    return report


def _json_text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)
