"""One tournament run's families: fitted, scored on their own validation and test songs,
written as bundles into --out (the tournament then judges them all on the same songs);
then the chosen family refit on every labelled song (Run.refit): the model served.

The CNN is fitted with TensorFlow (trainer.fit, imported only when the CNN is trained);
the backbone head with scikit-learn on cached embeddings (trainer.families); the ensemble
is the two calibrated members combined as the daemon combines them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from daemon.audio.featurecache import FeatureCache
from daemon.audio.features import FeatureSpec
from daemon.suggest.classifier import song_probabilities
from trainer.dataset import (
    Dataset,
    LabelledSong,
    split_listing,
    summary,
    training_set_hash,
)
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
    _embeddings,
    ensemble_probs,
    fit_backbone,
    parity_patches,
    write_backbone_bundles,
)
from trainer.head import fit_head, song_embedding
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
                 backbone: Backbone | None, families: Sequence[str], seed: int,
                 songs_per_epoch: int | None = None):
        self.out, self.wide, self.cache, self.spec = out, wide, cache, spec
        self.backbone, self.families, self.seed = backbone, tuple(families), seed
        self.songs_per_epoch = songs_per_epoch  # the CNN's ceiling (trainer.sample)
        self.facts: dict[str, dict] = {}
        self.seconds: dict[str, float] = {}
        self.calibrations: dict[str, str] = {}
        self.parity: dict[str, object] = {}
        self.model = self.cnn_dataset = self.cnn_scores = self.head_run = None
        self.served_model = None  # the refit CNN (refit), for the next warm start
        self.fitted: tuple[LabelledSong, ...] = ()
        self.warm_started = False
        self.refit_info: dict = {}  # the refit CNN's fit info, when there is one

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
                          songs_per_epoch=self.songs_per_epoch, deadline=deadline,
                          verbose=1 if progress else 0)
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
                                              self.backbone.patches.spec.clips_per_song)
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
            checks = parity_patches((*self.wide.test, *self.wide.validation,
                                     *self.wide.train), self.backbone.patches)
            self.parity.update(write_backbone_bundles(
                self.out, self.backbone, checks, cnn=cnn_proto,
                cnn_classes=self.cnn_dataset.classes if cnn_proto is not None else (),
                cnn_temperature=self.cnn_scores.temperature if cnn_proto is not None else 1.0,
                parity_clips=clips, run=self.head_run, wanted=self.families, metadata=meta,
                spec=self.spec))
        return [Entry(f, self.out / f"{f}.onnx", self.seconds[f], self.calibrations[f],
                      self.facts[f]["left_out"]) for f in self.families]

    def refit(self, winner: str, songs: Sequence[LabelledSong], common: dict, *,
              batch_size: int | None, deadline: float | None,
              progress: bool) -> tuple[Entry, dict]:
        """The served model: the chosen family refit on every labelled song of its genres
        (`songs`: the library's labelled songs), with what the held-out fit chose (the
        CNN's best epoch count, the head's C) and its temperature. Written to
        out/served/<family>.onnx; returns its Entry and the "served" facts (how many songs
        it was fitted on, per genre, and how).

        On a warm night the CNN goes on from the held-out fit's weights rather than from
        the start: at most the held-out fit's best epoch count, and fewer once its
        training loss over every song is down to the held-out fit's at that epoch. Every
        song is eligible (above the ceiling each epoch takes its sample from all of
        them)."""
        served_dir = self.out / "served"
        served_dir.mkdir(exist_ok=True)
        started = time.monotonic()
        cnn_model = head_run = None
        fitted: dict[str, LabelledSong] = {}
        how = []
        if winner in ("cnn", "ensemble"):
            from trainer.fit import BATCH_SIZE, fit

            classes = self.cnn_dataset.classes
            mine = [s for s in songs if s.genre in classes]
            held_out = self.facts["cnn"]["fit"]
            epochs = max(1, int(held_out.get("best_epoch") or 1))
            # A warm night goes on from the held-out fit; a cold one (the first night, the
            # seed of every later warm start) learns every song from the start, as before.
            warm = bool(held_out["warm_start"])
            cnn_model, self.refit_info = fit(
                mine, [], classes, self.cache, epochs=epochs, seed=self.seed,
                batch_size=batch_size or BATCH_SIZE, start_from=self.model if warm else None,
                songs_per_epoch=self.songs_per_epoch, deadline=deadline,
                stop_at_loss=held_out["history"]["loss"][epochs - 1] if warm else None,
                verbose=1 if progress else 0)
            fitted.update((s.rel, s) for s in mine)
            how.append(f"CNN on from the held-out fit, {self.refit_info['epochs_run']} "
                       f"epoch(s) of at most its best {epochs}" if warm else
                       f"CNN {epochs} epoch(s), the held-out fit's best")
        if winner in ("backbone", "ensemble"):
            run = self.head_run
            mine = [s for s in songs if s.genre in run.head.classes]
            means = np.stack([song_embedding(e) for e in
                              _embeddings(mine, self.backbone.embeddings)])
            head = fit_head(means, [s.genre for s in mine], None, run.head.classes,
                            seed=self.seed, c=run.head.c,
                            chosen_by=f"{run.head.chosen_by}, on the held-out fit")
            head_run = dataclasses.replace(run, head=head)
            fitted.update((s.rel, s) for s in mine)
            how.append(f"head C={run.head.c:g}, the held-out fit's")
        per_genre = dict(sorted(Counter(s.genre for s in fitted.values()).items()))
        served = {"songs": len(fitted), "per_genre": per_genre,
                  "how": ("refit on every labelled song of its genres (" + "; ".join(how)
                          + "; temperature from the held-out fit)"),
                  "seconds": round(time.monotonic() - started, 1)}
        if cnn_model is not None:
            served["cnn_fit"] = {k: self.refit_info[k] for k in (
                "epochs_run", "warm_start_how", "songs_per_epoch", "epoch_clips",
                "epoch_seconds", "statistics_seconds")}
            served["cnn_fit"]["loss"] = self.refit_info["history"]["loss"]
        self.fitted = tuple(fitted.values())
        meta = bundle_metadata(self.facts[winner], common, winner)
        meta.update({"served": served, "fitted_on_songs": len(fitted),
                     "training_set_hash": _fitted_hash(self.fitted, meta["classes"])})
        self._write_served(winner, served_dir, meta, cnn_model, head_run)
        self.served_model = cnn_model
        log.info("served model: %s %s", winner, served["how"])
        log.info("served model fitted on %d labelled songs: %s", len(fitted), per_genre)
        return (Entry(winner, served_dir / f"{winner}.onnx", self.seconds[winner],
                      self.calibrations[winner], self.facts[winner]["left_out"]), served)

    def _write_served(self, winner: str, served_dir: Path, meta: dict, cnn_model,
                      head_run) -> None:
        from trainer.export import checked_onnx, export_bundle

        clips = parity_clips(self.cnn_dataset, self.cache) if cnn_model is not None else None
        if self.backbone is None:
            partial = served_dir / ".cnn.onnx.partial"
            export_bundle(cnn_model, partial, meta, clips)
            os.replace(partial, served_dir / "cnn.onnx")
            return
        cnn_proto = checked_onnx(cnn_model, clips)[0] if cnn_model is not None else None
        checks = parity_patches((*self.wide.test, *self.wide.validation, *self.wide.train),
                                self.backbone.patches)
        write_backbone_bundles(
            served_dir, self.backbone, checks, cnn=cnn_proto,
            cnn_classes=self.cnn_dataset.classes if cnn_proto is not None else (),
            cnn_temperature=self.cnn_scores.temperature if cnn_proto is not None else 1.0,
            parity_clips=clips, run=head_run, wanted=(winner,),
            metadata={winner: meta, "cnn": meta}, spec=self.spec)


def _fitted_hash(songs: Sequence[LabelledSong], classes: Sequence[str]) -> str:
    """sha256 over the classes and the (fingerprint, genre) pairs the served model fitted."""
    digest = hashlib.sha256(json.dumps(list(classes)).encode())
    for fp, genre in sorted((s.fingerprint, s.genre) for s in songs):
        digest.update(f"{fp}\0{genre}\n".encode())
    return digest.hexdigest()
