"""Song metrics and the paired comparison of two models: numpy and scipy only.

One implementation for the nightly gate (daemon.learn.gate) and the trainer's evaluation
and tournament (trainer.evaluate re-exports these). A genre with no song among the judged
ones is "not tested": its recall is None and it is listed under "not_tested", never 0%.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Paired bootstrap: resamples, and how many are drawn at once (a block of weights is
# (block, songs) int64: 100 x 15,000 songs = 12 MB).
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_BLOCK = 100
CONFIDENCE = 0.95
# McNemar: below this many discordant songs the exact binomial test, above it the
# chi-square with continuity correction (they agree to ~1e-3 there).
MCNEMAR_EXACT_BELOW = 50


def label_indices(labels: Sequence, genres: Sequence[str]) -> np.ndarray:
    """Genre names (or indices) -> indices into `genres`."""
    index = {g: i for i, g in enumerate(genres)}
    return np.array([int(x) if isinstance(x, int | np.integer) else index[x] for x in labels],
                    dtype=np.int64)


def judged_genres(labels: Sequence, classes: Sequence[str]) -> list[str]:
    """The model's classes, then true genres it does not know (each a row of its own)."""
    classes = list(classes)
    return classes + sorted({x for x in labels if isinstance(x, str) and x not in classes})


def song_metrics(probs: np.ndarray, labels: Sequence, classes: Sequence[str]) -> dict:
    """Song-level metrics of one model on labelled songs.

    probs: (n_songs, len(classes)) probabilities; labels: true genres as names or as
    indices into `classes`. A true genre the model does not know (a name outside
    `classes`) counts as a miss and gets its own row. Returns
    {accuracy, macro_f1, n_songs, per_class: {genre: {precision, recall, f1, support}},
    not_tested: [genres with no song here], genres: [row/column order],
    confusion: [[count]] (rows true, columns predicted)}.
    A genre with no song here has recall and f1 None (precision too when never
    predicted); macro_f1 averages over the tested genres only (None when there are none).
    """
    genres = judged_genres(labels, classes)
    truth = label_indices(labels, genres)
    predicted = (np.asarray(probs).argmax(axis=1) if len(truth)
                 else np.zeros(0, np.int64))
    k = len(genres)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (truth, predicted), 1)
    per_class, f1s, not_tested = {}, [], []
    for i, genre in enumerate(genres):
        tp = int(confusion[i, i])
        support, predicted_n = int(confusion[i].sum()), int(confusion[:, i].sum())
        precision = tp / predicted_n if predicted_n else (0.0 if support else None)
        if support:
            recall = tp / support
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            f1s.append(f1)
        else:
            recall = f1 = None
            not_tested.append(genre)
        per_class[genre] = {"precision": precision, "recall": recall, "f1": f1,
                            "support": support}
    n = len(truth)
    return {
        "accuracy": float(np.trace(confusion) / n) if n else None,
        "macro_f1": float(np.mean(f1s)) if f1s else None,
        "n_songs": n,
        "per_class": per_class,
        "not_tested": not_tested,
        "genres": genres,
        "confusion": confusion.tolist(),
    }


def recalls(metrics: dict) -> dict[str, float | None]:
    """{genre: recall or None (not tested)} out of song_metrics."""
    return {g: m["recall"] for g, m in metrics["per_class"].items()}


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


# ---------------------------------------------------------------- two models, same songs

def mcnemar(only_first: int, only_second: int) -> float:
    """Two-sided McNemar p-value from the discordant songs: right by the first model
    only, right by the second only. Exact binomial when they are few."""
    from scipy import stats

    n = only_first + only_second
    if n == 0:
        return 1.0
    if n < MCNEMAR_EXACT_BELOW:
        return float(stats.binomtest(min(only_first, only_second), n, 0.5).pvalue)
    statistic = (abs(only_first - only_second) - 1) ** 2 / n
    return float(stats.chi2.sf(statistic, 1))


def _scores(weights: np.ndarray, truth_hot: np.ndarray, predicted_hot: np.ndarray,
            correct_hot: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per resample (weights: (B, n) song counts): macro-F1 (B,), recall (B, k) and
    support (B, k); genres without a song in a resample are left out of its mean."""
    support = weights @ truth_hot
    tp = weights @ correct_hot
    predicted = weights @ predicted_hot
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(support > 0, 2 * tp / (support + predicted), np.nan)
        recall = np.where(support > 0, tp / support, np.nan)
    return np.nanmean(f1, axis=1), recall, support


def paired_comparison(labels: Sequence, first: np.ndarray, second: np.ndarray,
                      genres: Sequence[str], *, resamples: int = BOOTSTRAP_RESAMPLES,
                      seed: int = 0) -> dict:
    """Two models' predictions on the same songs, compared song by song.

    labels: true genres (names in `genres` or indices); first/second: each model's
    predicted genre index per song (into `genres`). Out: {"n_songs", "f1_difference"
    (first - second macro-F1, fractions), "f1_interval" [low, high] (95% paired
    bootstrap: the same resampled songs for both), "recall_difference" and
    "recall_interval" per tested genre, "only_first_right", "only_second_right",
    "p_value" (McNemar on per-song correctness), "resamples", "seed"}.
    Seeded: the same songs and seed give the same interval.
    """
    genres = list(genres)
    truth = label_indices(labels, genres)
    first, second = np.asarray(first, np.int64), np.asarray(second, np.int64)
    right_first, right_second = first == truth, second == truth
    only_first = int(np.sum(right_first & ~right_second))
    only_second = int(np.sum(right_second & ~right_first))
    result = {"n_songs": len(truth), "resamples": resamples, "seed": seed,
              "f1_difference": None, "f1_interval": None,
              "recall_difference": {}, "recall_interval": {},
              "only_first_right": only_first, "only_second_right": only_second,
              "p_value": mcnemar(only_first, only_second)}
    if not len(truth):
        return result
    n, eye = len(truth), np.eye(len(genres))
    truth_hot = eye[truth]
    hots = [(eye[p], eye[p] * (p == truth)[:, None]) for p in (first, second)]
    point = [_scores(np.ones((1, n)), truth_hot, *h) for h in hots]
    rng = np.random.default_rng(seed)
    f1_diffs, recall_diffs = [], []
    for start in range(0, resamples, BOOTSTRAP_BLOCK):
        size = min(BOOTSTRAP_BLOCK, resamples - start)
        # Each row: how often each song is drawn in one resample of n songs.
        drawn = rng.integers(0, n, (size, n)) + np.arange(size)[:, None] * n
        weights = np.bincount(drawn.ravel(), minlength=size * n).reshape(size, n)
        weights = weights.astype(np.float64)
        a, b = (_scores(weights, truth_hot, *h) for h in hots)
        f1_diffs.append(a[0] - b[0])
        recall_diffs.append(a[1] - b[1])
    tail = 100 * (1 - CONFIDENCE) / 2
    f1_all, recall_all = np.concatenate(f1_diffs), np.concatenate(recall_diffs)
    result["f1_difference"] = float(point[0][0][0] - point[1][0][0])
    result["f1_interval"] = [float(v) for v in np.percentile(f1_all, [tail, 100 - tail])]
    for i, genre in enumerate(genres):
        if point[0][2][0, i] > 0:  # tested: the genre has songs here
            result["recall_difference"][genre] = float(point[0][1][0, i] - point[1][1][0, i])
            low, high = np.nanpercentile(recall_all[:, i], [tail, 100 - tail])
            result["recall_interval"][genre] = [float(low), float(high)]
    return result
