"""Fitting the album/artist context's weight and smoothing on held-out songs, and the
audio-only vs with-context figures for report.json.  (No TensorFlow here.)

Which songs: the daemon judges an untagged song whose tagged album-mates the model was
trained on, so the audio it combines with the prior knows the artist. The gate's
artist-disjoint test songs would understate the audio and overstate the prior's worth; so
`carve` takes one song from each album with CARVE_FROM or more training songs out of
training (the "context" split): never trained on, its album-mates trained on. The fit and
its figures use those songs; with too few of them (small albums) the test songs stand in,
and the report says so.

The daemon combines a song's calibrated audio probabilities with a prior from its tagged
mates (daemon.suggest.context, daemon.suggest.mates). Here a held-out song's mates are
the other labelled songs of the library on its album and by its artist, counted by the
daemon's own count (daemon.suggest.mates.count_mates) over the albums and artists the
daemon stores (daemon.library.albums, as trainer.dataset reads them): the weight is fitted
on the mates the service counts. Mates count with their labels wherever they are, training
included: the daemon sees the library's tags that way. Only the mates' labels are used,
never their audio, and never the song's own label.

The grid search maximises the held-out log-likelihood of the true genre (a proper score:
it rewards a weight that helps where the mates are right and punishes one that hurts where
they are wrong, which macro-F1 on a few songs cannot see). The figures are out of fold:
the songs are split in two by album, each half scored with the values fitted on the other
(so a song's album never helps choose its own weight); the stored values are fitted on all.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence

import numpy as np

from daemon.learn.metrics import song_metrics
from daemon.suggest.context import combine, context_prior
from daemon.suggest.mates import Mates, MateSong, count_mates
from trainer.dataset import Dataset, LabelledSong

WEIGHTS = tuple(0.25 * i for i in range(9))  # 0, 0.25, ..., 2
SMOOTHINGS = (0.5, 1.0, 2.0, 5.0)
# Fewer held-out songs with a tagged mate than this: nothing to fit on (config's values).
MIN_SONGS = 4
EPS = 1e-12
# An album with this many training songs gives one of them to the context split (so two
# or more stay trained on: the song's mates), at most CARVE_SHARE of the training songs;
# none when fewer than MIN_SONGS albums can give one (too few to fit on: training keeps
# them all and the test songs stand in).
CARVE_FROM = 3
CARVE_SHARE = 0.15


def carve(dataset: Dataset, seed: int) -> tuple[Dataset, tuple[LabelledSong, ...]]:
    """The dataset without the context split's songs in train, and those songs: one per
    album with >= CARVE_FROM training songs, chosen by a hash of (seed, path)
    (stable as the library grows), within CARVE_SHARE; none below MIN_SONGS. Validation
    and test are untouched (the gate's)."""
    albums: dict[str, list[LabelledSong]] = {}
    for song in dataset.train:
        if song.album_key:
            albums.setdefault(song.album_key, []).append(song)
    def rank(song: LabelledSong) -> bytes:
        return hashlib.sha256(f"{seed}\0context\0{song.rel}".encode()).digest()

    offered = sorted((min(songs, key=rank) for songs in albums.values()
                      if len(songs) >= CARVE_FROM), key=rank)
    room = int(CARVE_SHARE * len(dataset.train))
    chosen = {s.rel for s in offered[:room]} if min(len(offered), room) >= MIN_SONGS else set()
    kept = tuple(s for s in dataset.train if s.rel not in chosen)
    return (dataclasses.replace(dataset, train=kept),
            tuple(s for s in dataset.train if s.rel in chosen))


def mate_song(song: LabelledSong) -> MateSong:
    """A labelled song as daemon.suggest.mates counts it (its path is its id)."""
    return MateSong.of(song.rel, song.album_key, song.artist, song.album_artist,
                       song.compilation, song.genre)


def held_out_mates(songs: Sequence[LabelledSong], library: Sequence[LabelledSong]) -> list[Mates]:
    """Each of `songs`' Mates among every labelled song of `library` (the song excluded):
    its album's labels, and its artist's on other albums (daemon.suggest.mates)."""
    return count_mates([mate_song(s) for s in songs], [mate_song(s) for s in library])


def _with_context(probs: np.ndarray, mates: Sequence[Mates], classes: Sequence[str],
                  weight: float, smoothing: float) -> np.ndarray:
    out = np.array(probs, dtype=np.float64)
    for i, m in enumerate(mates):
        if m:
            out[i] = combine(out[i], context_prior(m.counts(), classes, smoothing), weight)
    return out


def log_likelihood(probs: np.ndarray, truth: np.ndarray) -> float:
    """Mean log-probability of the true genre (higher is better)."""
    return float(np.mean(np.log(probs[np.arange(len(truth)), truth] + EPS)))


def fit(probs: np.ndarray, mates: Sequence[Mates], truth: np.ndarray,
        classes: Sequence[str]) -> tuple[float, float]:
    """The (weight, smoothing) of the grid with the best held-out log-likelihood; ties go to
    the smaller weight (the audio alone is the safe default)."""
    best, chosen = -np.inf, (0.0, SMOOTHINGS[0])
    for weight in WEIGHTS:
        for smoothing in SMOOTHINGS:
            score = log_likelihood(_with_context(probs, mates, classes, weight, smoothing),
                                   truth)
            if score > best + 1e-9:
                best, chosen = score, (weight, smoothing)
    return chosen


def _fold(song: LabelledSong) -> int:
    return hashlib.sha256((song.album_key or song.rel).encode()).digest()[0] % 2


def _figures(probs: np.ndarray, labels: list[str], classes: Sequence[str]) -> dict:
    truth = np.array([list(classes).index(g) for g in labels], dtype=np.int64)
    metrics = song_metrics(probs, labels, list(classes))
    return {"song_accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
            "log_likelihood": log_likelihood(probs, truth), "n_songs": len(labels)}


def context_report(probs: np.ndarray, songs: Sequence[LabelledSong],
                   library: Sequence[LabelledSong], classes: Sequence[str]) -> dict:
    """Held-out songs' audio probabilities (rows: `songs`, columns: `classes`) -> report.json's
    "context": the fitted weight and smoothing (None: too few songs with a tagged mate),
    audio-only and with-context figures (out of fold), on all songs and on those with a
    tagged mate. Songs of genres outside `classes` are left out."""
    keep = [i for i, s in enumerate(songs) if s.genre in classes]
    songs = [songs[i] for i in keep]
    probs = np.asarray(probs, dtype=np.float64)[keep]
    mates = held_out_mates(songs, library)
    truth = np.array([list(classes).index(s.genre) for s in songs], dtype=np.int64)
    with_mates = [i for i, m in enumerate(mates) if m]
    report = {"weight": None, "smoothing": None, "grid": {"weight": list(WEIGHTS),
                                                          "smoothing": list(SMOOTHINGS)},
              "chosen_by": "held-out log-likelihood", "songs": len(songs),
              "songs_with_mates": len(with_mates)}
    if len(with_mates) < MIN_SONGS:
        report["why"] = f"fewer than {MIN_SONGS} held-out songs with a tagged mate"
        return report
    report["weight"], report["smoothing"] = fit(probs, mates, truth, classes)
    folds = np.array([_fold(s) for s in songs])
    combined = probs.copy()
    for fold in (0, 1):
        here, there = np.flatnonzero(folds == fold), np.flatnonzero(folds != fold)
        if not len(here):
            continue
        weight, smoothing = (fit(probs[there], [mates[i] for i in there], truth[there], classes)
                             if len(there) else (report["weight"], report["smoothing"]))
        combined[here] = _with_context(probs[here], [mates[i] for i in here], classes,
                                       weight, smoothing)
    labels = [s.genre for s in songs]
    report["audio"] = _figures(probs, labels, classes)
    report["with_context"] = _figures(combined, labels, classes)
    sub = [labels[i] for i in with_mates]
    report["with_mates"] = {"audio": _figures(probs[with_mates], sub, classes),
                            "with_context": _figures(combined[with_mates], sub, classes)}
    return report
