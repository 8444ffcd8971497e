"""The tournament's backbone side: labelled songs' embeddings, the backbone head family,
and the bundles that carry the backbone (cnn with the embedding output, backbone, ensemble).

Needs onnx, onnxruntime and scikit-learn only (no TensorFlow): the CNN arrives here as
the ONNX graph trainer.export made and checked. The embedding of a song is computed once,
from its cached patches, and kept in the embedding cache (EMBEDDING_SPEC): a song whose
embedding is cached is neither decoded for patches nor run through the backbone again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from daemon.audio.featurecache import FeatureCache
from daemon.audio.features import BACKBONE_SPEC, EMBEDDING_SPEC, BackboneSpec, FeatureSpec
from daemon.learn.backbone_file import BackboneUnavailable, backbone_onnx
from daemon.suggest.classifier import combine_members, song_log_probabilities
from trainer import backbone as bb
from trainer import bundles
from trainer.dataset import Dataset, DatasetError, LabelledSong
from trainer.evaluate import Calibration, choose_temperature
from trainer.head import Head, fit_head, song_embedding

log = logging.getLogger(__name__)

# Patches the composed bundles are checked on against their parts.
PARITY_PATCHES = 8


@dataclass(frozen=True)
class Backbone:
    """The converted backbone and the two caches the trainer keeps for it."""

    onnx_path: Path
    patches: FeatureCache  # BackboneSpec: (patches, 187, 96) per song
    embeddings: FeatureCache  # EmbeddingSpec: (patches, 200) per song

    def proto(self) -> onnx.ModelProto:
        return onnx.load(str(self.onnx_path))


def open_backbone(cache_root: Path, enabled: bool,
                  backbone_spec: BackboneSpec = BACKBONE_SPEC) -> Backbone | None:
    """The backbone when switched on and converted (`make backbone`), else None (the
    tournament is then the CNN alone; the reason is logged)."""
    if not enabled:
        log.info("backbone switched off: the CNN alone, no embeddings")
        return None
    try:
        path = backbone_onnx()
    except BackboneUnavailable as err:
        log.warning("backbone families left out: %s", err)
        return None
    return Backbone(path, FeatureCache(cache_root, backbone_spec),
                    FeatureCache(cache_root, EMBEDDING_SPEC))


def embed_songs(songs: Sequence[LabelledSong], backbone: Backbone,
                threads: int = 0) -> dict[str, int]:
    """Every song's per-patch embeddings into the embedding cache (computed from its
    cached patches with onnxruntime, only when not cached yet). Returns
    {"embeddings_cached": songs found, "embeddings_computed": songs embedded now}."""
    session, computed, cached = None, set(), 0
    for song in songs:
        fp = song.fingerprint
        if fp in computed:
            continue
        if backbone.embeddings.has(fp):
            cached += 1
            continue
        patches = backbone.patches.get(fp)
        if patches is None:
            raise DatasetError(f"{song.rel}: neither its embedding nor its patches are cached")
        if session is None:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            session = ort.InferenceSession(str(backbone.onnx_path), options,
                                           providers=["CPUExecutionProvider"])
        backbone.embeddings.put(fp, bb.embed_patches(session, patches))
        computed.add(fp)
    return {"embeddings_cached": cached, "embeddings_computed": len(computed)}


def _embeddings(songs: Sequence[LabelledSong], cache: FeatureCache) -> list[np.ndarray]:
    found = []
    for song in songs:
        value = cache.get(song.fingerprint)
        if value is None:
            raise DatasetError(f"{song.rel}: its embedding vanished from the cache")
        found.append(value)
    return found


def window_probs(head: Head, songs: Sequence[LabelledSong], cache: FeatureCache,
                 windows: int = BACKBONE_SPEC.clips_per_song) -> np.ndarray:
    """The head's song probabilities in the windows shape calibration takes: (n_songs,
    windows, k), each row the head on the song's mean embedding (`windows`: the run's
    windows per song).

    Exactly what the bundle gives per song (the head is affine: the mean of per-patch
    log-probabilities differs from the mean embedding's logits by a class-independent
    constant, at any temperature), and it works whatever the patch count of a cached
    embedding (the worker caches its own windows per song). The row is repeated so that
    fit_temperature's lower bound (1 / windows) is the bundle's."""
    k = len(head.classes)
    if not songs:
        return np.zeros((0, windows, k))
    means = np.stack([song_embedding(e) for e in _embeddings(songs, cache)])
    return np.repeat(head.probabilities(means)[:, None, :], windows, axis=1)


@dataclass(frozen=True)
class HeadRun:
    """The fitted backbone head, calibrated on validation songs."""

    dataset: Dataset
    head: Head
    calibration: Calibration
    val_windows: np.ndarray  # (songs, patches, k) on dataset.validation
    test_windows: np.ndarray  # (songs, patches, k) on dataset.test
    seconds: float  # fitting the head (embeddings are features, counted apart)


def fit_backbone(dataset: Dataset, backbone: Backbone, seed: int = 0) -> HeadRun:
    """Fit the head on the training songs' mean embeddings (artists as CV groups) and
    choose its temperature on the validation songs (choose_temperature)."""
    started = time.monotonic()
    train = list(dataset.train)
    means = np.stack([song_embedding(e) for e in _embeddings(train, backbone.embeddings)])
    head = fit_head(means, [s.genre for s in train], [s.artist_key for s in train],
                    dataset.classes, seed=seed)
    seconds = time.monotonic() - started
    windows = backbone.patches.spec.clips_per_song
    val = window_probs(head, dataset.validation, backbone.embeddings, windows)
    test = window_probs(head, dataset.test, backbone.embeddings, windows)
    chosen = choose_temperature(val, dataset.labels("validation"))
    log.info("backbone head: %d genres from %d songs, %s, in %.1f s; temperature %.3f (%s)",
             len(head.classes), len(train), head.chosen_by, seconds, chosen.temperature,
             chosen.how)
    return HeadRun(dataset, head, chosen, val, test, seconds)


def ensemble_probs(cnn_windows: np.ndarray, cnn_classes: Sequence[str], cnn_temperature: float,
                   run: HeadRun, head_windows: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Song probabilities of the ensemble as the bundle gives them (combine_members of
    the two calibrated members, weights bundles.ENSEMBLE_WEIGHTS) and its classes."""
    classes = list(cnn_classes) + [c for c in run.head.classes if c not in cnn_classes]
    members = [(tuple(cnn_classes), song_log_probabilities(cnn_windows, cnn_temperature)),
               (run.head.classes, song_log_probabilities(head_windows,
                                                         run.calibration.temperature))]
    return combine_members(members, bundles.ENSEMBLE_WEIGHTS, classes), classes


def parity_patches(songs: Sequence[LabelledSong], cache: FeatureCache,
                   count: int = PARITY_PATCHES) -> np.ndarray:
    """Up to `count` cached patches of `songs` for the bundles' parity checks."""
    found: list[np.ndarray] = []
    for song in songs:
        value = cache.get(song.fingerprint)
        if value is not None:
            found.extend(value)
        if len(found) >= count:
            break
    if not found:
        raise DatasetError("no cached backbone patches to check the bundles on")
    return np.stack(found[:count])


def write_backbone_bundles(out: Path, backbone: Backbone, checks: np.ndarray, *,
                           cnn: onnx.ModelProto | None, cnn_classes: Sequence[str],
                           cnn_temperature: float, parity_clips: np.ndarray | None,
                           run: HeadRun | None, wanted: Sequence[str],
                           metadata: dict[str, dict], spec: FeatureSpec,
                           ) -> dict[str, dict[str, float]]:
    """Write the bundles of `wanted` families that carry the backbone into `out`:
    cnn.onnx (the CNN + the embedding output), backbone.onnx, ensemble.onnx.
    metadata: per family, the trainer's keys for its bundle. Returns each bundle's parity
    report (output -> max diff); bundles.ParityError leaves that bundle unwritten."""
    proto, parity = backbone.proto(), {}
    if cnn is not None:
        parity["cnn"] = bundles.build_cnn(
            cnn, cnn_classes, out / "cnn.onnx", parity_clips, checks,
            temperature=cnn_temperature, metadata=metadata["cnn"], backbone=proto, spec=spec,
            backbone_spec=backbone.patches.spec)
    if run is not None and "backbone" in wanted:
        parity["backbone"] = bundles.build_backbone(
            run.head, out / "backbone.onnx", checks, temperature=run.calibration.temperature,
            metadata=metadata["backbone"], backbone=proto, backbone_spec=backbone.patches.spec)
    if run is not None and cnn is not None and "ensemble" in wanted:
        parity["ensemble"] = bundles.build_ensemble(
            cnn, cnn_classes, run.head, out / "ensemble.onnx", parity_clips, checks,
            temperatures=(cnn_temperature, run.calibration.temperature),
            metadata=metadata["ensemble"], backbone=proto, spec=spec,
            backbone_spec=backbone.patches.spec)
    for family, report in parity.items():
        log.info("%s bundle with the backbone written (parity %s)", family,
                 ", ".join(f"{k} {v:.1e}" for k, v in report.items()))
    return parity
