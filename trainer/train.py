"""`genretagger train`: library -> dataset -> fit -> calibrate -> evaluate -> export.

Writes into --out: model.keras, split.json, report.json, confusion.png, reliability.png
and, last, model.onnx (the bundle). A run that dies part-way leaves no model.onnx, so a
directory holding one holds a complete run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from daemon.audio.featurecache import FeatureCache
from daemon.audio.features import CNN, DEFAULT_SPEC, FeatureSpec
from daemon.core.errors import ConfigError
from daemon.learn.registry import file_sha256
from daemon.suggest.classifier import song_probabilities
from daemon.tags.genres import load_genre_map
from trainer import TRAINER_VERSION
from trainer.dataset import (
    Dataset,
    build_dataset,
    default_cache_dir,
    find_labelled_songs,
    load_features,
    load_holdout,
    load_known,
    load_labels,
    narrow,
    split_listing,
    summary,
    training_set_hash,
)
from trainer.evaluate import (
    calibration_report,
    choose_temperature,
    clip_accuracy,
    plot_confusion,
    plot_reliability,
    song_metrics,
)
from trainer.tournament import ALL, FAMILIES, Entry, families_for, judge_families, write_winner

log = logging.getLogger(__name__)

# The families this trainer builds. The backbone head and the ensemble join when their
# bundle builders (trainer.bundles: backbone + head in one graph) are in; `--family all`
# trains every family listed here.
BUILDABLE = ("cnn",)

# Held-out clips the ONNX export must reproduce.
PARITY_CLIPS = 64


def fit_deadline(started: float, budget_minutes: float | None) -> float | None:
    """When fitting must end so the run ends within its budget: after fitting come
    predictions on validation and test songs, export and the parity check (about a
    minute at 15,000 songs); a tenth of the budget, at least two minutes, is kept."""
    if budget_minutes is None:
        return None
    budget = budget_minutes * 60
    return started + budget - max(120.0, 0.1 * budget)


def train(library: Path, out: Path, *, cache_dir: Path | None = None, epochs: int = 30,
          clip_seconds: float = 1.0, seed: int = 0, min_songs: int = 20,
          min_songs_backbone: int = 3, family: str = ALL,
          genres_path: Path | None = None, labels_path: Path | None = None,
          warm_start: Path | None = None, holdout_path: Path | None = None,
          known_path: Path | None = None,
          batch_size: int | None = None, time_budget_minutes: float | None = None,
          threads: int | None = None, processes: int | None = None,
          progress: bool | None = None) -> dict:
    """Run a whole training; returns the report (also written to out/report.json).

    time_budget_minutes: the whole run should end within this; fitting stops early enough
    to leave time for calibration, evaluation and export (fit_deadline).

    Raises DatasetError (library unusable), ParityError (export not trusted), other
    GenretaggerErrors for bad inputs.
    """
    started = time.monotonic()
    progress = sys.stderr.isatty() if progress is None else progress
    library, out = Path(library).resolve(), Path(out)
    prepare_out(out, warm_start)
    families = families_for(family, BUILDABLE)
    thresholds = {f: min_songs if f == "cnn" else min_songs_backbone for f in families}
    spec = dataclasses.replace(DEFAULT_SPEC, clip_seconds=float(clip_seconds))
    cache = FeatureCache(cache_dir or default_cache_dir(), spec)
    # One split for every family, wide enough for the one needing fewest songs per genre.
    songs = gather(library, cache, genres_path=genres_path, labels_path=labels_path,
                   known_path=known_path, holdout_path=holdout_path, seed=seed,
                   min_songs=min(thresholds.values()), processes=processes,
                   progress=progress)
    extracted = time.monotonic()
    # TensorFlow loads here, after the decoding children are gone.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's C++ INFO lines: not ours to log
    from trainer.fit import BATCH_SIZE, configure, fit

    configure(seed, threads or os.cpu_count())
    wide = songs.dataset  # every family's test songs
    songs = dataclasses.replace(songs, dataset=narrow(wide, thresholds["cnn"]))
    dataset = songs.dataset
    model, fit_info = fit(list(dataset.train), list(dataset.validation), dataset.classes,
                          cache, epochs=epochs, seed=seed,
                          batch_size=batch_size or BATCH_SIZE, warm_start=warm_start,
                          deadline=fit_deadline(started, time_budget_minutes),
                          verbose=1 if progress else 0)
    trained = time.monotonic()
    scores = calibrate_and_evaluate(model, dataset, cache, out)
    report = run_report(songs, scores, fit_info, cache, spec, library=library, seed=seed,
                        parent=_parent_model(warm_start) if fit_info["warm_start"] else "")
    report["left_out"] = dataset.left_out
    report["timings"] = {"features_s": round(extracted - started, 1),
                         "fit_s": round(trained - extracted, 1)}
    write_run(model, out, report, dataset, cache, scores.test_clips.shape)
    entries = [Entry("cnn", out / "cnn.onnx", trained - extracted,
                     scores.calibration["how"], dataset.left_out)]
    table = judge_families(out, entries, wide.test, {CNN: cache}, seed=seed)
    report["tournament"] = table
    report["timings"]["total_s"] = round(time.monotonic() - started, 1)
    (out / "report.json").write_text(json.dumps(report, indent=1, sort_keys=True),
                                     encoding="utf-8")
    write_winner(out, next(e for e in entries if e.family == table["winner"]), table)
    log.info("tournament winner %s written to %s: %s", table["winner"], out / "model.onnx",
             table["why"])
    return report


def prepare_out(out: Path, warm_start: Path | None) -> None:
    """Make --out ready for a new run: its own folder, no result of an earlier run."""
    if warm_start is not None and Path(warm_start).resolve() == out.resolve():
        raise ConfigError(f"--warm-start {warm_start} is --out: give the new run its own "
                          "directory")
    out.mkdir(parents=True, exist_ok=True)
    # A reused --out must not show an old bundle as this run's result if this run fails.
    for stale in ("model.onnx", "report.json", *(f"{f}.onnx" for f in FAMILIES)):
        (out / stale).unlink(missing_ok=True)


@dataclasses.dataclass(frozen=True)
class Gathered:
    """The dataset step's result: the splits and what was left out on the way."""

    dataset: Dataset
    skipped: list[tuple[str, str]]
    failed: list[tuple[str, str]]
    cache_stats: dict[str, int]


def gather(library: Path, cache: FeatureCache, *, genres_path: Path | None,
           labels_path: Path | None, known_path: Path | None, holdout_path: Path | None,
           seed: int, min_songs: int, processes: int | None, progress: bool) -> Gathered:
    """Labelled songs, their cached features, classes and artist-disjoint splits."""
    genre_map = load_genre_map(genres_path)
    songs, skipped = find_labelled_songs(library, genre_map, load_labels(labels_path),
                                         known=load_known(known_path))
    log.info("%d labelled songs in %s (%d files left out)", len(songs), library, len(skipped))
    songs, failed, cache_stats = load_features(songs, cache, processes=processes,
                                               progress=progress)
    log.info("features: %(cached)d cached, %(decoded)d decoded, %(failed)d failed", cache_stats)
    dataset = build_dataset(songs, seed=seed, min_songs=min_songs,
                            holdout=load_holdout(holdout_path))
    if dataset.left_out:
        log.info("genres left out (fewer than %d songs or no training artist): %s",
                 min_songs, dataset.left_out)
    return Gathered(dataset, skipped, failed, cache_stats)


@dataclasses.dataclass(frozen=True)
class Scores:
    """Calibration and song metrics of the fitted model."""

    temperature: float
    calibration: dict
    test: dict
    validation: dict
    test_clips: np.ndarray


def calibrate_and_evaluate(model, dataset: Dataset, cache: FeatureCache, out: Path) -> Scores:
    """Calibrate on validation songs, evaluate on test songs; the two plots go into `out`."""
    from trainer.fit import predict_clips

    n = len(dataset.classes)
    val_clips = predict_clips(model, list(dataset.validation), cache, n)
    test_clips = predict_clips(model, list(dataset.test), cache, n)
    y_val, y_test = dataset.labels("validation"), dataset.labels("test")
    chosen = choose_temperature(val_clips, y_val)
    temperature = chosen.temperature
    calibration = {"validation": calibration_report(val_clips, y_val, temperature),
                   "test": calibration_report(test_clips, y_test, temperature),
                   "how": chosen.how, "held_out": chosen.held_out}
    test_probs = song_probabilities(test_clips, temperature)
    test_metrics = song_metrics(test_probs, y_test.tolist(), dataset.classes)
    test_metrics["clip_accuracy"] = clip_accuracy(test_clips, y_test)
    val_metrics = song_metrics(song_probabilities(val_clips, temperature), y_val.tolist(),
                               dataset.classes)
    val_metrics["clip_accuracy"] = clip_accuracy(val_clips, y_val)
    log.info("test: song accuracy %.3f, macro-F1 %.3f, clip accuracy %.3f; "
             "temperature %.3f, ECE %.3f -> %.3f", test_metrics["accuracy"],
             test_metrics["macro_f1"], test_metrics["clip_accuracy"], temperature,
             calibration["test"]["ece_before"], calibration["test"]["ece_after"])
    plot_confusion(test_metrics["confusion"], test_metrics["genres"], out / "confusion.png")
    plot_reliability(song_probabilities(test_clips, 1.0), test_probs, y_test,
                     out / "reliability.png")
    return Scores(temperature, calibration, test_metrics, val_metrics, test_clips)


def run_report(songs: Gathered, scores: Scores, fit_info: dict, cache: FeatureCache,
               spec: FeatureSpec, *, library: Path, seed: int, parent: str) -> dict:
    """report.json's content (timings and the parity check are added as they happen)."""
    dataset = songs.dataset
    return {
        "classes": list(dataset.classes),
        "feature_spec": json.loads(spec.to_json()),
        "temperature": scores.temperature,
        "metrics": {"test": _headline(scores.test), "validation": _headline(scores.validation),
                    "calibration": scores.calibration},
        "test": scores.test,
        "validation": scores.validation,
        "training_set": summary(dataset, spec.clips_per_song),
        "training_set_hash": training_set_hash(dataset),
        "fit": fit_info,
        "cache": {**songs.cache_stats, "dir": str(cache.root)},
        "skipped": [{"path": rel, "reason": reason} for rel, reason in songs.skipped],
        "failed": [{"path": rel, "reason": reason} for rel, reason in songs.failed],
        "library": str(library),
        "seed": seed,
        "parent_model": parent,
        "trainer_version": TRAINER_VERSION,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def write_run(model, out: Path, report: dict, dataset: Dataset, cache: FeatureCache,
              clips_shape: tuple) -> None:
    """model.keras, split.json, then the CNN's bundle cnn.onnx; the tournament's winner
    becomes model.onnx after report.json, last, so a folder holding one holds a complete
    run."""
    from trainer.export import export_bundle

    model.save(out / "model.keras")
    (out / "split.json").write_text(json.dumps(split_listing(dataset), indent=1),
                                    encoding="utf-8")
    held_out = _parity_clips(dataset, clips_shape, cache)
    diff = export_bundle(model, out / ".cnn.onnx.partial", _bundle_metadata(report), held_out)
    report["parity_max_abs_diff"] = diff
    os.replace(out / ".cnn.onnx.partial", out / "cnn.onnx")
    log.info("cnn bundle written to %s (parity %.1e)", out / "cnn.onnx", diff)


def _headline(metrics: dict) -> dict:
    return {"song_accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
            "clip_accuracy": metrics["clip_accuracy"], "n_songs": metrics["n_songs"],
            "recall": {g: m["recall"] for g, m in metrics["per_class"].items()},
            "not_tested": metrics["not_tested"]}


def _bundle_metadata(report: dict) -> dict:
    """What the daemon reads from the bundle: ARCHITECTURE.md's list."""
    return {
        "family": "cnn",
        "classes": report["classes"],
        "left_out": report["left_out"],
        "feature_spec": report["feature_spec"],
        "temperature": report["temperature"],
        "clips_per_song": report["feature_spec"]["clips_per_song"],
        "metrics": report["metrics"],
        "training_set": report["training_set"],
        "training_set_hash": report["training_set_hash"],
        "created_at": report["created_at"],
        "parent_model": report["parent_model"],
        "trainer_version": report["trainer_version"],
    }


def _parity_clips(dataset: Dataset, shape: tuple, cache: FeatureCache) -> np.ndarray:
    """Up to PARITY_CLIPS test clips (validation if test is tiny) for the export check."""
    clips = []
    for song in (*dataset.test, *dataset.validation):
        clips.extend(cache.get(song.fingerprint))
        if len(clips) >= PARITY_CLIPS:
            break
    return np.stack(clips[:PARITY_CLIPS])


def _parent_model(warm_start: Path) -> str:
    """sha256 of the warm-start run's bundle (what the model registry knows it by)."""
    try:
        return file_sha256(Path(warm_start) / "model.onnx")
    except OSError:
        return str(warm_start)
