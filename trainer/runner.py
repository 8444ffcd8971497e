"""One tournament run's families: fitted, scored on their own validation and test songs,
written as bundles into --out (the tournament then judges them all on the same songs).

The CNN is fitted with TensorFlow (trainer.fit, imported only when the CNN is trained);
the backbone head with scikit-learn on cached embeddings (trainer.families); the ensemble
is the two calibrated members combined as the daemon combines them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from daemon.audio.featurecache import FeatureCache
from daemon.audio.features import BACKBONE_SPEC, FeatureSpec
from daemon.suggest.classifier import song_probabilities
from trainer.dataset import Dataset, split_listing, summary, training_set_hash
from trainer.evaluate import (
    Calibration,
    calibration_report,
    choose_temperature,
    clip_accuracy,
    plot_confusion,
    plot_reliability,
    song_metrics,
)
from trainer.families import (
    Backbone,
    ensemble_probs,
    fit_backbone,
    parity_patches,
    write_backbone_bundles,
)
from trainer.tournament import Entry

log = logging.getLogger(__name__)

# Held-out clips the ONNX export must reproduce.
PARITY_CLIPS = 64


@dataclasses.dataclass(frozen=True)
class Scores:
    """Calibration and song metrics of one family on its validation and test songs."""

    temperature: float
    calibration: dict
    test: dict
    validation: dict


def score_windows(val_windows: np.ndarray, test_windows: np.ndarray, dataset: Dataset,
                  chosen: Calibration, plots: Path | None = None) -> Scores:
    """A one-member family's window probabilities (songs, windows, k) -> its Scores, with
    the temperature chosen on validation songs; the two plots go into `plots`."""
    y_val, y_test = dataset.labels("validation"), dataset.labels("test")
    t = chosen.temperature
    calibration = {"validation": calibration_report(val_windows, y_val, t),
                   "test": calibration_report(test_windows, y_test, t),
                   "how": chosen.how, "held_out": chosen.held_out}
    test_probs = song_probabilities(test_windows, t)
    test = song_metrics(test_probs, y_test.tolist(), dataset.classes)
    test["clip_accuracy"] = clip_accuracy(test_windows, y_test)
    validation = song_metrics(song_probabilities(val_windows, t), y_val.tolist(),
                              dataset.classes)
    validation["clip_accuracy"] = clip_accuracy(val_windows, y_val)
    log.info("test: song accuracy %.3f, macro-F1 %.3f, window accuracy %.3f; "
             "temperature %.3f (%s), ECE %.3f -> %.3f", test["accuracy"], test["macro_f1"],
             test["clip_accuracy"], t, chosen.how, calibration["test"]["ece_before"],
             calibration["test"]["ece_after"])
    if plots is not None:
        plot_confusion(test["confusion"], test["genres"], plots / "confusion.png")
        plot_reliability(song_probabilities(test_windows, 1.0), test_probs, y_test,
                         plots / "reliability.png")
    return Scores(t, calibration, test, validation)


def family_facts(dataset: Dataset, scores: Scores, fit_info: dict, windows: int,
                 classes: Sequence[str] | None = None) -> dict:
    """One family's part of report.json (the winner's are also its top-level keys)."""
    return {"classes": list(classes or dataset.classes), "temperature": scores.temperature,
            "metrics": {"test": _headline(scores.test),
                        "validation": _headline(scores.validation),
                        "calibration": scores.calibration},
            "test": scores.test, "validation": scores.validation,
            "training_set": summary(dataset, windows),
            "training_set_hash": training_set_hash(dataset), "left_out": dataset.left_out,
            "fit": fit_info}


def _headline(metrics: dict) -> dict:
    return {"song_accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
            "clip_accuracy": metrics.get("clip_accuracy"), "n_songs": metrics["n_songs"],
            "recall": {g: m["recall"] for g, m in metrics["per_class"].items()},
            "not_tested": metrics["not_tested"]}


def bundle_metadata(facts: dict, common: dict, family: str) -> dict:
    """What the daemon reads from a family's bundle: ARCHITECTURE.md's list (the builders
    add family, members, specs and the embedding)."""
    data = {key: facts[key] for key in ("classes", "left_out", "temperature", "metrics",
                                        "training_set", "training_set_hash")}
    data.update({key: common[key] for key in ("created_at", "parent_model",
                                              "trainer_version")})
    data["family"] = family
    data["clips_per_song"] = common["feature_spec"]["clips_per_song"]
    if family != "backbone":  # a bundle with a "clips" input
        data["feature_spec"] = common["feature_spec"]
    return data


def parity_clips(dataset: Dataset, cache: FeatureCache, count: int = PARITY_CLIPS) -> np.ndarray:
    """Up to `count` test clips (validation too if test is tiny) for the export check."""
    clips: list[np.ndarray] = []
    for song in (*dataset.test, *dataset.validation):
        clips.extend(cache.get(song.fingerprint))
        if len(clips) >= count:
            break
    return np.stack(clips[:count])


class Run:
    """The families of one run: fit_cnn, fit_head (after fit_cnn: the ensemble needs
    both), then write_bundles. `facts` per family for report.json, `seconds` training
    wall time per family, `parity` the export checks."""

    def __init__(self, out: Path, wide: Dataset, cache: FeatureCache, spec: FeatureSpec,
                 backbone: Backbone | None, families: Sequence[str], seed: int):
        self.out, self.wide, self.cache, self.spec = out, wide, cache, spec
        self.backbone, self.families, self.seed = backbone, tuple(families), seed
        self.facts: dict[str, dict] = {}
        self.seconds: dict[str, float] = {}
        self.calibrations: dict[str, str] = {}
        self.parity: dict[str, object] = {}
        self.model = self.cnn_dataset = self.cnn_scores = self.head_run = None
        self.warm_started = False

    def fit_cnn(self, dataset: Dataset, *, epochs: int, warm_start: Path | None,
                batch_size: int | None, threads: int | None, progress: bool,
                deadline: float | None) -> None:
        # TensorFlow loads here, after the decoding children are gone.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's C++ INFO lines
        from trainer.fit import BATCH_SIZE, configure, fit, predict_clips

        configure(self.seed, threads or os.cpu_count())
        started = time.monotonic()
        model, info = fit(list(dataset.train), list(dataset.validation), dataset.classes,
                          self.cache, epochs=epochs, seed=self.seed,
                          batch_size=batch_size or BATCH_SIZE, warm_start=warm_start,
                          deadline=deadline, verbose=1 if progress else 0)
        self.seconds["cnn"] = time.monotonic() - started
        n = len(dataset.classes)
        val = predict_clips(model, list(dataset.validation), self.cache, n)
        test = predict_clips(model, list(dataset.test), self.cache, n)
        scores = score_windows(val, test, dataset,
                               choose_temperature(val, dataset.labels("validation")), self.out)
        self.model, self.cnn_dataset, self.cnn_scores = model, dataset, scores
        self.warm_started = bool(info["warm_start"])
        self.calibrations["cnn"] = scores.calibration["how"]
        self.facts["cnn"] = family_facts(dataset, scores, info, self.spec.clips_per_song)

    def fit_head(self, dataset: Dataset) -> None:
        run = fit_backbone(dataset, self.backbone, self.seed)
        scores = score_windows(run.val_windows, run.test_windows, dataset, run.calibration,
                               None if self.model is not None else self.out)
        self.head_run = run
        self.seconds["backbone"] = run.seconds
        self.calibrations["backbone"] = run.calibration.how
        info = {"head": {"c": run.head.c, "chosen_by": run.head.chosen_by},
                "warm_start": False, "seconds": round(run.seconds, 2)}
        self.facts["backbone"] = family_facts(dataset, scores, info,
                                              BACKBONE_SPEC.clips_per_song)
        if self.model is not None and "ensemble" in self.families:
            self._ensemble(dataset)

    def _ensemble(self, dataset: Dataset) -> None:
        """The ensemble's figures on the head's splits: no fitting of its own (each
        member keeps its temperature, weights bundles.ENSEMBLE_WEIGHTS)."""
        from trainer.fit import predict_clips

        started = time.monotonic()
        run, cnn_classes = self.head_run, self.cnn_dataset.classes
        metrics, classes = {}, None
        for split, head_windows in (("validation", run.val_windows),
                                    ("test", run.test_windows)):
            songs = list(dataset.split(split))
            cnn_windows = predict_clips(self.model, songs, self.cache, len(cnn_classes))
            probs, classes = ensemble_probs(cnn_windows, cnn_classes,
                                            self.cnn_scores.temperature, run, head_windows)
            metrics[split] = song_metrics(probs, [s.genre for s in songs], classes)
        how = (f"members calibrated apart: cnn {self.calibrations['cnn']}, backbone "
               f"{self.calibrations['backbone']}")
        temperatures = {"cnn": self.cnn_scores.temperature,
                        "backbone": run.calibration.temperature}
        scores = Scores(1.0, {"how": how, "members": temperatures}, metrics["test"],
                        metrics["validation"])
        self.seconds["ensemble"] = (self.seconds["cnn"] + self.seconds["backbone"]
                                    + time.monotonic() - started)
        self.calibrations["ensemble"] = how
        self.facts["ensemble"] = family_facts(
            dataset, scores, {"members": temperatures, "warm_start": self.warm_started},
            self.spec.clips_per_song, classes)

    def write_bundles(self, common: dict) -> list[Entry]:
        """model.keras, split.json (every family's splits) and each family's bundle
        out/<family>.onnx; returns the tournament's entries."""
        from trainer.export import checked_onnx, export_bundle

        meta = {f: bundle_metadata(self.facts[f], common, f) for f in self.facts}
        (self.out / "split.json").write_text(json.dumps(split_listing(self.wide), indent=1),
                                             encoding="utf-8")
        cnn_proto, clips = None, None
        if self.model is not None:
            self.model.save(self.out / "model.keras")
            clips = parity_clips(self.cnn_dataset, self.cache)
            if self.backbone is None:
                partial = self.out / ".cnn.onnx.partial"
                self.parity["cnn_keras"] = export_bundle(self.model, partial, meta["cnn"],
                                                         clips)
                os.replace(partial, self.out / "cnn.onnx")
                log.info("cnn bundle written to %s (parity %.1e)", self.out / "cnn.onnx",
                         self.parity["cnn_keras"])
            else:  # the checked CNN graph goes into the bundle with the embedding
                cnn_proto, self.parity["cnn_keras"] = checked_onnx(self.model, clips)
        if self.backbone is not None:
            checks = parity_patches((*self.wide.test, *self.wide.validation),
                                    self.backbone.patches)
            self.parity.update(write_backbone_bundles(
                self.out, self.backbone, checks, cnn=cnn_proto,
                cnn_classes=self.cnn_dataset.classes if cnn_proto is not None else (),
                cnn_temperature=self.cnn_scores.temperature if cnn_proto is not None else 1.0,
                parity_clips=clips, run=self.head_run, wanted=self.families, metadata=meta,
                spec=self.spec))
        return [Entry(f, self.out / f"{f}.onnx", self.seconds[f], self.calibrations[f],
                      self.facts[f]["left_out"]) for f in self.families]

