"""The backbone head: standardise + multinomial logistic regression (L2) on songs' mean
backbone embeddings (EMBEDDING_SPEC, 200-d), fitted on the station's labels.

scikit-learn, not a hand-written L-BFGS on scipy: its lbfgs multinomial loss, balanced
class weights and (group-aware) cross-validation are well kept and tested, and what is
ours is only the choice of folds and regularisation grid. The head is affine, so the
bundle applies it per patch and the daemon's mean-of-log-probabilities per song equals
the head on the mean embedding (trainer/bundles.py builds it).
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Regularisation strengths tried by cross-validation (C = 1 / L2 strength, on
# standardised embeddings), and the one used when there are too few songs to choose.
C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
DEFAULT_C = 0.3
# Cross-validate only when every genre has this many songs (2 folds of >= 3 songs each;
# below that a fold's log loss is one song's luck).
CV_MIN_SONGS_PER_GENRE = 6
MAX_FOLDS = 5
MAX_ITER = 2000


@dataclass(frozen=True)
class Head:
    """softmax(weights @ ((e - mean) / scale) + bias) over `classes`, e a 200-d embedding."""

    classes: tuple[str, ...]
    weights: np.ndarray  # (k, dim) float32, on standardised embeddings
    bias: np.ndarray  # (k,) float32
    mean: np.ndarray  # (dim,) float32
    scale: np.ndarray  # (dim,) float32, never 0
    c: float
    chosen_by: str  # how c was chosen, for the report

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        """(n, dim) embeddings -> (n, k) float64 logits."""
        standard = (np.asarray(embeddings, np.float64) - self.mean) / self.scale
        return standard @ self.weights.T.astype(np.float64) + self.bias

    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        """(n, dim) embeddings -> (n, k) float64 probabilities."""
        z = self.logits(embeddings)
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)


def song_embedding(patch_embeddings: np.ndarray) -> np.ndarray:
    """(patches, dim) per-patch embeddings -> (dim,) the song's mean embedding."""
    return np.asarray(patch_embeddings, np.float64).mean(axis=0)


def _folds(labels: np.ndarray, groups: np.ndarray | None, seed: int):
    """A stratified (artist-grouped when groups are given) splitter, or None to skip CV."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    fewest = min(Counter(labels.tolist()).values())
    if fewest < CV_MIN_SONGS_PER_GENRE:
        return None
    n = min(MAX_FOLDS, fewest // 3)
    if groups is not None and len(set(groups.tolist())) >= n:
        return list(StratifiedGroupKFold(n, shuffle=True, random_state=seed).split(
            labels, labels, groups))
    return list(StratifiedKFold(n, shuffle=True, random_state=seed).split(labels, labels))


def _choose_c(x: np.ndarray, y: np.ndarray, groups: np.ndarray | None,
              seed: int) -> tuple[float, str]:
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline

    folds = _folds(y, groups, seed)
    if folds is None:
        return DEFAULT_C, (f"fixed C={DEFAULT_C:g} (fewer than {CV_MIN_SONGS_PER_GENRE} "
                           f"songs in a genre)")
    # A fold may miss a genre when artists are few; the search then scores it anyway.
    search = GridSearchCV(make_pipeline(*_steps(DEFAULT_C)),
                          {"logisticregression__C": list(C_GRID)}, cv=folds,
                          scoring="neg_log_loss", error_score=np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter on tiny folds
        search.fit(x, y)
    if not np.isfinite(search.best_score_):
        return DEFAULT_C, f"fixed C={DEFAULT_C:g} (cross-validation failed on these folds)"
    c = float(search.best_params_["logisticregression__C"])
    return c, (f"C={c:g} by {len(folds)}-fold cross-validation (log loss "
               f"{-search.best_score_:.3f})")


def _steps(c: float):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    # L2 is the default penalty in every version (l1_ratio 0 since 1.8, "l2" before).
    return (StandardScaler(),
            LogisticRegression(C=c, class_weight="balanced", max_iter=MAX_ITER))


def fit_head(embeddings: np.ndarray, labels: Sequence[str], groups: Sequence[str] | None = None,
             classes: Sequence[str] | None = None, seed: int = 0,
             c: float | None = None, chosen_by: str = "") -> Head:
    """Fit the head on songs' mean embeddings (n, dim) and their genres.

    groups: each song's artist, so cross-validation keeps artists apart. classes: the
    head's genre order (default sorted); every class needs at least one song. Class
    weights are balanced; C is chosen by cross-validated log loss when every genre has
    CV_MIN_SONGS_PER_GENRE songs, else DEFAULT_C; a given `c` (the refit on every label
    keeps the held-out fit's) is used as it is, `chosen_by` saying how it was found.
    Raises ValueError for fewer than two genres or a class with no song.
    """
    x = np.asarray(embeddings, np.float64)
    y = np.asarray(list(labels))
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"embeddings {x.shape} do not fit {len(y)} labels")
    classes = tuple(classes) if classes is not None else tuple(sorted(set(y.tolist())))
    if len(classes) < 2:
        raise ValueError(f"a head needs at least two genres, got {list(classes)}")
    empty = [c for c in classes if c not in set(y.tolist())]
    stray = sorted(set(y.tolist()) - set(classes))
    if empty or stray:
        raise ValueError(f"genres without songs {empty}, songs of unknown genres {stray}")
    if c is None:
        c, chosen_by = _choose_c(x, y, None if groups is None else np.asarray(list(groups)),
                                 seed)
    scaler, model = _steps(c)
    standard = scaler.fit_transform(x)
    model.fit(standard, y)
    order = [list(model.classes_).index(genre) for genre in classes]
    if len(model.classes_) == 2:
        # sklearn keeps one vector for two classes (logit of classes_[1]); as a softmax
        # over both the same probabilities come from +-half of it.
        half_w, half_b = model.coef_[0] / 2, model.intercept_[0] / 2
        weights, bias = np.stack([-half_w, half_w]), np.array([-half_b, half_b])
    else:
        weights, bias = model.coef_, model.intercept_
    return Head(classes, weights[order].astype(np.float32), bias[order].astype(np.float32),
                scaler.mean_.astype(np.float32), scaler.scale_.astype(np.float32), c,
                chosen_by)
