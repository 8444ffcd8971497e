"""The model as the daemon runs it: one ONNX bundle, one onnxruntime session.

The bundle is a single .onnx file whose metadata_props carry everything the daemon
needs (classes, FeatureSpec, temperature, ...). `Classifier.load` refuses a bundle whose
FeatureSpec differs from the one this daemon computes, naming the difference, because a
model fed features it was not trained on gives confident nonsense.

Song prediction: mean of the clips' log-probabilities, divided by the calibrated
temperature, softmax (`song_probabilities`, shared with the trainer's calibration).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np

from daemon.audio.features import DEFAULT_SPEC, FeatureSpec
from daemon.core.errors import ModelMismatch

log = logging.getLogger(__name__)

# metadata_props keys whose values are JSON (the rest are plain strings).
JSON_KEYS = ("classes", "feature_spec", "metrics", "training_set", "clips_per_song",
             "temperature")
REQUIRED_KEYS = ("classes", "feature_spec", "temperature")
# Keeps log() finite when a clip's softmax rounds a class to exactly 0.
_FLOOR = 1e-12
# Clips per onnxruntime run (see Classifier.clip_probabilities).
MAX_CLIPS_PER_RUN = 8


def song_probabilities(clip_probs: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """(n_songs, clips, n_classes) clip probabilities -> (n_songs, n_classes) song probabilities.

    Mean clip log-probability divided by `temperature`, then softmax.
    """
    logits = np.log(np.maximum(clip_probs.astype(np.float64), _FLOOR)).mean(axis=1)
    return softmax(logits / temperature)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (n, k) logits, float64."""
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def read_metadata(path: Path | str) -> dict:
    """A bundle's metadata_props as a dict, JSON values decoded.

    Raises ModelMismatch when the file is not an ONNX model.
    """
    # Lazy: importing onnx takes about 0.4 s, paid only by what reads a bundle's metadata
    # (not by trainer/evaluate and the CLI, which import this module for song_probabilities).
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # onnx raises DecodeError, OSError, ... for a bad file
        raise ModelMismatch(f"{path}: not an ONNX model bundle ({err})") from None
    return _decode({p.key: p.value for p in model.metadata_props})


def _decode(props: dict[str, str]) -> dict:
    data: dict = {}
    for key, value in props.items():
        if key in JSON_KEYS:
            try:
                data[key] = json.loads(value)
            except json.JSONDecodeError:
                data[key] = value
        else:
            data[key] = value
    return data


def spec_differences(expected: FeatureSpec, found: FeatureSpec) -> list[str]:
    """Fields where two specs disagree, as 'name: bundle X, daemon Y' lines."""
    ours, theirs = asdict(expected), asdict(found)
    return [f"{k}: bundle {theirs[k]!r}, daemon {ours[k]!r}" for k in ours if ours[k] != theirs[k]]


class Classifier:
    """A loaded bundle: `predict_songs` turns song features into calibrated probabilities."""

    def __init__(self, session, path: Path, metadata: dict, spec: FeatureSpec, sha256: str):
        self.session = session
        self.path = path
        self.metadata = metadata
        self.spec = spec
        self.classes: tuple[str, ...] = tuple(metadata["classes"])
        self.temperature = float(metadata["temperature"])
        self.sha256 = sha256
        self._input = session.get_inputs()[0].name
        self._output = session.get_outputs()[0].name

    @classmethod
    def load(cls, path: Path | str, spec: FeatureSpec = DEFAULT_SPEC,
             threads: int = 1) -> Classifier:
        """Open the bundle at `path` for a daemon computing `spec` features.

        One ORT session, `threads` intra-op threads, sequential execution; warmed up with
        one song of zeros so the first real batch is not slow. Raises ModelMismatch when
        the file is not a bundle, lacks metadata, or was trained on another FeatureSpec.
        """
        # Lazy for the same reason as onnx above (about 0.4 s): only loading a model needs it.
        import onnxruntime as ort

        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as err:
            raise ModelMismatch(f"{path}: cannot read model bundle: {err.strerror}") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        # The arena keeps the peak of the largest batch for ever (~500 MB at 32 songs);
        # without it the daemon idles near 100 MB and ORT is ~25% slower, far from the
        # bottleneck (decoding).
        options.enable_cpu_mem_arena = False
        try:
            session = ort.InferenceSession(data, sess_options=options,
                                           providers=["CPUExecutionProvider"])
        except Exception as err:  # ORT raises its own Fail/InvalidProtobuf types
            raise ModelMismatch(f"{path}: not a usable ONNX model ({err})") from None
        metadata = _decode(dict(session.get_modelmeta().custom_metadata_map))
        missing = [k for k in REQUIRED_KEYS if k not in metadata]
        if missing:
            raise ModelMismatch(f"{path}: bundle metadata lacks {', '.join(missing)}")
        try:
            bundle_spec = FeatureSpec.from_json(json.dumps(metadata["feature_spec"]))
        except (TypeError, ValueError, KeyError) as err:
            raise ModelMismatch(f"{path}: bundle feature_spec unreadable ({err})") from None
        differences = spec_differences(spec, bundle_spec)
        if differences:
            raise ModelMismatch(f"{path}: model was trained on other features: "
                                + "; ".join(differences))
        shape = session.get_inputs()[0].shape
        if tuple(shape[1:]) != spec.input_shape:
            raise ModelMismatch(f"{path}: model input {shape[1:]} does not fit features "
                                f"{spec.input_shape}")
        classifier = cls(session, path, metadata, spec, hashlib.sha256(data).hexdigest())
        classifier.predict_songs([np.zeros((spec.clips_per_song, *spec.input_shape),
                                           np.float32)])
        log.info("model %s loaded: %d classes, temperature %.3f", path.name,
                 len(classifier.classes), classifier.temperature)
        return classifier

    def clip_probabilities(self, clips: np.ndarray) -> np.ndarray:
        """(n, F, T, 1) float32 clips -> (n, n_classes) uncalibrated clip probabilities.

        At most MAX_CLIPS_PER_RUN clips per ORT run: the convolutions' activations take
        ~2.5 MB per clip, so 32 songs in one run would cost the daemon ~400 MB at peak.
        Small runs are no slower here (measured on 2 cores with glibc's default heap:
        ~590 clips/s at 8 clips a run, ~550 at 16, 278 at 64), the activations staying in
        cache; the daemon's bounded heap (daemon/service/heap.py) costs ~25% at any size.
        """
        clips = clips.astype(np.float32, copy=False)
        runs = [self.session.run([self._output], {self._input: clips[i:i + MAX_CLIPS_PER_RUN]})[0]
                for i in range(0, len(clips), MAX_CLIPS_PER_RUN)]
        return np.concatenate(runs) if runs else np.zeros((0, len(self.classes)), np.float32)

    def predict_songs(self, songs: list[np.ndarray]) -> np.ndarray:
        """Songs' features, each (clips, F, T, 1) -> (n_songs, n_classes) probabilities.

        The clips of all songs are batched together (several songs per ORT run). Songs
        may have different clip counts. Calibrated with the bundle's temperature.
        """
        if not songs:
            return np.zeros((0, len(self.classes)))
        probs = self.clip_probabilities(np.concatenate(songs))
        out = np.empty((len(songs), len(self.classes)))
        start = 0
        for i, song in enumerate(songs):
            out[i] = song_probabilities(probs[None, start:start + len(song)], self.temperature)[0]
            start += len(song)
        return out

    def top(self, probs_row: np.ndarray, k: int = 3) -> list[tuple[str, float]]:
        """One song's probabilities -> its k most likely (genre, confidence), best first."""
        order = np.argsort(probs_row)[::-1][:k]
        return [(self.classes[i], float(probs_row[i])) for i in order]
