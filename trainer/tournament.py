"""The nightly tournament: every family trained on the same splits, judged on the SAME test
songs through the daemon's Classifier (the serving path), the best one kept. A bundle
with the backbone is judged on the songs' cached embeddings through its own head
(daemon.suggest.embedded): the backbone never runs again on a song it embedded.

A family's run leaves `out/<family>.onnx`; `finish` evaluates each bundle on the test
songs, builds the table (accuracy, macro-F1, per-genre recall with
None for "not tested", ECE, temperature and how it was chosen, training seconds, classes,
left-out genres), picks the winner (best macro-F1; a tie goes to the family cheaper to
serve) and writes it as `out/model.onnx` with the table in its metadata. No TensorFlow.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from daemon.audio.featurecache import FeatureCache
from daemon.audio.features import CNN, DEFAULT_SPEC
from daemon.core.errors import ConfigError
from daemon.learn.metrics import expected_calibration_error, paired_comparison, song_metrics
from daemon.suggest.classifier import Classifier
from daemon.suggest.embedded import cached_features, load_on_embeddings, member_caches
from trainer.dataset import DatasetError, LabelledSong

log = logging.getLogger(__name__)

FAMILIES = ("cnn", "backbone", "ensemble")
ALL = "all"
# A tie goes to the family cheaper to serve, first here. With the backbone available every
# bundle carries its embedding (for "sounds like"), so the backbone head alone costs the
# least; the CNN adds its own network, the ensemble runs both heads.
SERVING_COST = ("backbone", "cnn", "ensemble")
# Macro-F1s closer than this are a tie (float noise, never a song's worth).
TIE = 1e-9


def families_for(choice: str, buildable: Sequence[str]) -> tuple[str, ...]:
    """--family -> the families to train: one by name, or ALL = every family this trainer
    can build here (`buildable`: e.g. the backbone families need the ONNX backbone).
    Raises ConfigError for a named family that cannot be built."""
    if choice == ALL:
        return tuple(f for f in FAMILIES if f in buildable)
    if choice not in FAMILIES:
        raise ConfigError(f"--family {choice!r}: one of {', '.join(FAMILIES)} or {ALL}")
    if choice not in buildable:
        raise ConfigError(f"--family {choice}: cannot be trained here (can: "
                          f"{', '.join(buildable)})")
    return (choice,)


@dataclass(frozen=True)
class Entry:
    """One family's result before judging: its bundle in --out and how it was made."""

    family: str
    bundle: Path
    train_seconds: float
    calibration: str  # how its temperature was chosen (trainer.evaluate.choose_temperature)
    left_out: dict[str, dict[str, int]]


def song_inputs(songs: Sequence[LabelledSong], feeding: Mapping[str, FeatureCache],
                ) -> list[dict[str, np.ndarray]]:
    """Each song's cached windows by kind, from the cache feeding each kind
    (daemon.suggest.embedded.member_caches)."""
    out = []
    for song in songs:
        features = cached_features(song.fingerprint, feeding)
        if features is None:
            missing = [k for k, c in feeding.items() if not c.has(song.fingerprint)]
            raise DatasetError(f"{song.rel}: no cached {'/'.join(missing)} features for the "
                               "tournament")
        out.append(features)
    return out


def judge_bundle(path: Path, songs: Sequence[LabelledSong], caches: Mapping[str, FeatureCache],
                 genres: Sequence[str], batch: int = 32, embeddings: FeatureCache | None = None,
                 ) -> tuple[np.ndarray, Classifier]:
    """A bundle through the daemon's Classifier on `songs` -> (probabilities over the
    union `genres`, the classifier). Genres the bundle does not know get 0. With
    `embeddings` (the embedding cache) a bundle with the backbone takes the songs' cached
    per-patch embeddings through its head (daemon.suggest.embedded), never running the
    backbone; else its members take `caches` by kind."""
    spec = caches[CNN].spec if CNN in caches else DEFAULT_SPEC
    classifier = (load_on_embeddings(path, spec) if embeddings is not None
                  else Classifier.load(path, spec))
    feeding = member_caches(classifier, caches, embeddings)
    probs = np.zeros((len(songs), len(genres)))
    columns = [list(genres).index(c) for c in classifier.classes]
    for start in range(0, len(songs), batch):
        chunk = song_inputs(songs[start:start + batch], feeding)
        probs[start:start + len(chunk)][:, columns] = classifier.predict_songs(chunk)
    return probs, classifier


def tournament_row(entry: Entry, metrics: dict, probs: np.ndarray, truth: np.ndarray,
                   classifier: Classifier) -> dict:
    """One row of the table (daemon.learn.report shows it)."""
    return {"family": entry.family, "accuracy": metrics["accuracy"],
            "macro_f1": metrics["macro_f1"],
            "recall": {g: m["recall"] for g, m in metrics["per_class"].items()},
            "not_tested": metrics["not_tested"],
            "ece": expected_calibration_error(probs, truth) if len(truth) else None,
            "temperature": classifier.temperature if len(classifier.members) == 1 else
            {m.kind: m.temperature for m in classifier.members},
            "calibration": entry.calibration, "train_seconds": round(entry.train_seconds, 1),
            "classes": list(classifier.classes), "left_out": entry.left_out}


def choose_winner(rows: Sequence[dict]) -> str:
    """The family with the best macro-F1; a tie goes to the one cheaper to serve."""
    best = max((r["macro_f1"] or 0.0) for r in rows)
    tied = [r["family"] for r in rows if (r["macro_f1"] or 0.0) >= best - TIE]
    return min(tied, key=SERVING_COST.index)


def _why(winner: str, rows: Sequence[dict], comparisons: Mapping[str, dict]) -> str:
    mine = next(r for r in rows if r["family"] == winner)
    if len(rows) == 1:
        return f"the only family trained (macro-F1 {100 * (mine['macro_f1'] or 0):.1f})"
    parts = []
    for family, c in comparisons.items():
        low, high = c["f1_interval"] or (0.0, 0.0)
        parts.append(f"{(c['f1_difference'] or 0) * 100:+.1f} points over {family} (95% "
                     f"interval {100 * low:+.1f} to {100 * high:+.1f}, McNemar p = "
                     f"{c['p_value']:.2g})")
    return (f"best macro-F1 {100 * (mine['macro_f1'] or 0):.1f} on the same test songs; "
            + "; ".join(parts) + " (a tie goes to the family cheaper to serve)")


def judge_families(out: Path, entries: Sequence[Entry], test: Sequence[LabelledSong],
                   caches: Mapping[str, FeatureCache], seed: int = 0,
                   embeddings: FeatureCache | None = None) -> dict:
    """Judge every entry's bundle on the same `test` songs (every family's test songs:
    a genre a family left out counts as its miss; judge_bundle, `embeddings` included).
    Out: the tournament table {"holdout_songs", "winner", "why", "rows"}."""
    genres = sorted({c for e in entries for c in _classes(e.bundle)} | {s.genre for s in test})
    labels = [s.genre for s in test]
    truth = np.array([genres.index(g) for g in labels], dtype=np.int64)
    rows, predicted = [], {}
    for entry in entries:
        probs, classifier = judge_bundle(entry.bundle, test, caches, genres,
                                         embeddings=embeddings)
        metrics = song_metrics(probs, labels, genres)
        rows.append(tournament_row(entry, metrics, probs, truth, classifier))
        predicted[entry.family] = probs.argmax(axis=1)
        log.info("tournament: %s macro-F1 %s, accuracy %s on %d test songs", entry.family,
                 metrics["macro_f1"], metrics["accuracy"], len(test))
    winner = choose_winner(rows)
    # The winner's lead over each other family, song by song (winner - other).
    comparisons = {f: paired_comparison(labels, predicted[winner], predicted[f], genres,
                                        seed=seed)
                   for f in predicted if f != winner}
    return {"holdout_songs": len(test), "winner": winner,
            "why": _why(winner, rows, comparisons), "rows": rows}


def write_winner(out: Path, chosen: Entry, table: dict, extra: dict | None = None,
                 name: str = "model.onnx") -> None:
    """The winner's bundle as out/`name` (atomically) with the table, its left-out
    genres, its family and `extra` (e.g. the fitted context) in the metadata."""
    from trainer.export import metadata_props, write_model  # (imports TensorFlow)

    winner = chosen.family
    proto = onnx.load(str(chosen.bundle))
    props = {p.key: p.value for p in proto.metadata_props}
    props.update(metadata_props({"tournament": table, "left_out": chosen.left_out,
                                 "family": winner, **(extra or {})}))
    onnx.helper.set_model_props(proto, props)
    write_model(proto, out / name)


def _classes(bundle: Path) -> tuple[str, ...]:
    from daemon.suggest.bundle import read_metadata

    return tuple(read_metadata(bundle)["classes"])


