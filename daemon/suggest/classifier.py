"""The model as the daemon runs it: one ONNX bundle, one onnxruntime session.

The bundle is a single .onnx file whose metadata_props carry everything the daemon
needs (daemon/suggest/bundle.py reads and checks them: family, classes, members, the
FeatureSpec and BackboneSpec of its inputs, the embedding output). `Classifier.load`
refuses a bundle whose specs differ from the ones this daemon computes, naming the
difference, because a model fed features it was not trained on gives confident nonsense.

Song prediction, per member: mean of the windows' log-probabilities, divided by the
member's calibrated temperature, log-softmax (`song_log_probabilities`, shared with the
trainer's calibration); then the members' song log-probabilities are combined by
`combine_members` (weighted mean per genre over the members that know it, softmax). A
one-member bundle is therefore exactly the seed CNN's mean-of-log-probabilities rule.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from daemon.audio.embedding import cpu_session
from daemon.audio.features import (
    BACKBONE,
    BACKBONE_SPEC,
    CNN,
    DEFAULT_SPEC,
    BackboneSpec,
    FeatureSpec,
)
from daemon.core.errors import ModelMismatch
from daemon.suggest.bundle import (
    JSON_KEYS,
    Bundle,
    Member,
    decode,
    describe,
    read_metadata,
    spec_differences,
)
from daemon.suggest.suggestions import top_genres

__all__ = ["JSON_KEYS", "MAX_CLIPS_PER_RUN", "MAX_PATCHES_PER_RUN", "Classifier", "Member",
           "Prediction", "combine_members", "read_metadata", "softmax", "song_log_probabilities",
           "song_probabilities", "spec_differences"]

log = logging.getLogger(__name__)

# Keeps log() finite when a window's softmax rounds a class to exactly 0.
_FLOOR = 1e-12
# Windows per onnxruntime run and input (see Classifier.window_outputs): CNN clips, and
# backbone patches (each in flight costs ~30 MB of activations).
MAX_CLIPS_PER_RUN = 8
MAX_PATCHES_PER_RUN = 2
_PER_RUN = {CNN: MAX_CLIPS_PER_RUN, BACKBONE: MAX_PATCHES_PER_RUN}


def song_log_probabilities(clip_probs: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """(n_songs, windows, n_classes) window probabilities -> (n_songs, n_classes) song
    log-probabilities: mean window log-probability / `temperature`, log-softmax."""
    logits = np.log(np.maximum(clip_probs.astype(np.float64), _FLOOR)).mean(axis=1)
    return log_softmax(logits / temperature)


def song_probabilities(clip_probs: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """(n_songs, clips, n_classes) clip probabilities -> (n_songs, n_classes) song probabilities.

    Mean clip log-probability divided by `temperature`, then softmax.
    """
    return np.exp(song_log_probabilities(clip_probs, temperature))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of (n, k) logits, float64."""
    z = logits - logits.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (n, k) logits, float64."""
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def combine_members(member_logprobs: Sequence, weights: Sequence[float],
                    classes: Sequence[str]) -> np.ndarray:
    """THE combination of a bundle's members into song probabilities (n, len(classes)).

    member_logprobs: per member, `(member_classes, logp)` with logp (n, len(member_classes))
    song log-probabilities (song_log_probabilities with the member's temperature), or a
    bare logp array when the member's classes are `classes`. weights: per member, > 0.
    score_c = sum over the members knowing c of w_m * logp_m(c) / sum of their w_m; then
    softmax over `classes`. Raises ValueError for a member genre not in `classes` or a
    genre no member knows.
    """
    classes = tuple(classes)
    position = {genre: i for i, genre in enumerate(classes)}
    total, norm = None, np.zeros(len(classes))
    for entry, weight in zip(member_logprobs, weights, strict=True):
        member_classes, logp = entry if isinstance(entry, tuple) else (classes, entry)
        logp = np.asarray(logp, dtype=np.float64)
        unknown = [genre for genre in member_classes if genre not in position]
        if unknown or logp.ndim != 2 or logp.shape[1] != len(member_classes):
            raise ValueError(f"member with classes {list(member_classes)} and log-probs "
                             f"{logp.shape} does not fit classes {list(classes)}")
        if not weight > 0:
            raise ValueError(f"member weight {weight} is not > 0")
        if total is None:
            total = np.zeros((len(logp), len(classes)))
        index = [position[genre] for genre in member_classes]
        total[:, index] += weight * logp
        norm[index] += weight
    if total is None:
        raise ValueError("no members to combine")
    if not norm.all():
        orphans = [genre for genre, w in zip(classes, norm, strict=True) if not w]
        raise ValueError(f"no member knows {orphans}")
    return softmax(total / norm)


@dataclass(frozen=True)
class Prediction:
    """What a bundle says about songs: probabilities (n, len(classes)) float64, and per
    song its per-patch embedding (patches, dim) float32, or None without an embedding."""

    probs: np.ndarray
    embeddings: list[np.ndarray] | None


def _session(data: bytes, path: Path, threads: int):
    # No arena: it keeps the peak of the largest batch for ever (~500 MB at 32 songs);
    # without it the daemon idles near 100 MB and ORT is ~25% slower, far from the
    # bottleneck (decoding).
    try:
        return cpu_session(data, threads, arena=False)
    except Exception as err:  # ORT raises its own Fail/InvalidProtobuf types
        raise ModelMismatch(f"{path}: not a usable ONNX model ({err})") from None


class Classifier:
    """A loaded bundle: `predict` turns song features into calibrated probabilities (and
    per-patch embeddings when the bundle has them)."""

    def __init__(self, session, path: Path, metadata: dict, bundle: Bundle, spec: FeatureSpec,
                 backbone_spec: BackboneSpec, sha256: str, windows_per_song: int):
        self.session = session
        self.path = path
        self.metadata = metadata
        self.bundle = bundle
        self.spec = spec
        self.backbone_spec = backbone_spec
        self.sha256 = sha256
        self.windows_per_song = windows_per_song
        self.classes: tuple[str, ...] = bundle.classes
        self.temperature = bundle.temperature
        self.members: tuple[Member, ...] = bundle.members
        self.family = bundle.family
        self.unverified = bundle.unverified
        self.has_embedding = bundle.embedding is not None
        self.needs: frozenset[str] = bundle.needs
        self._shapes = {CNN: spec.input_shape, BACKBONE: backbone_spec.input_shape}

    @classmethod
    def load(cls, path: Path | str, spec: FeatureSpec = DEFAULT_SPEC,
             backbone_spec: BackboneSpec = BACKBONE_SPEC, threads: int = 1,
             windows_per_song: int | None = None) -> Classifier:
        """Open the bundle at `path` for a daemon computing `spec` (CNN) and
        `backbone_spec` (backbone) features.

        One ORT session, `threads` intra-op threads, sequential execution; warmed up with
        one song of zeros per input (`windows_per_song` windows: the config's, else the
        bundle's, else spec.clips_per_song) so the first real batch is not slow. Raises
        ModelMismatch when the file is not a bundle, lacks metadata, or was trained on
        other features (clips_per_song may differ: windows per song is a run-time choice).
        """
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as err:
            raise ModelMismatch(f"{path}: cannot read model bundle: {err.strerror}") from None
        session = _session(data, path, threads)
        metadata = decode(dict(session.get_modelmeta().custom_metadata_map))
        inputs = {i.name: i.shape for i in session.get_inputs()}
        bundle = describe(path, metadata, list(inputs),
                          [o.name for o in session.get_outputs()], spec, backbone_spec)
        shapes = {CNN: spec.input_shape, BACKBONE: backbone_spec.input_shape}
        for kind, name in bundle.inputs.items():
            found = tuple(inputs[name][1:])
            if len(found) != len(shapes[kind]) or any(
                    isinstance(d, int) and d != e
                    for d, e in zip(found, shapes[kind], strict=True)):
                raise ModelMismatch(f"{path}: model input {name} {list(found)} does not fit "
                                    f"{kind} features {shapes[kind]}")
        recorded = metadata.get("windows_per_song")
        windows = windows_per_song or (recorded if isinstance(recorded, int) and recorded > 0
                                       else spec.clips_per_song)
        classifier = cls(session, path, metadata, bundle, spec, backbone_spec,
                         hashlib.sha256(data).hexdigest(), int(windows))
        classifier.predict([{kind: np.zeros((classifier.windows_per_song, *shapes[kind]),
                                            np.float32) for kind in bundle.needs}])
        log.info("model %s loaded: %s, %d classes, members %s%s", path.name,
                 classifier.family, len(classifier.classes),
                 ", ".join(f"{m.kind} (T {m.temperature:.3f}, w {m.weight:g})"
                           for m in classifier.members),
                 ", with embedding" if classifier.has_embedding else "")
        return classifier

    def window_outputs(self, windows: dict[str, np.ndarray],
                       outputs: Sequence[str]) -> dict[str, np.ndarray]:
        """Windows by feature kind -> the named ONNX outputs, concatenated over runs.

        At most MAX_CLIPS_PER_RUN windows per input per ORT run: the CNN's activations
        take ~2.5 MB per clip, so 32 songs in one run would cost the daemon ~400 MB at
        peak. Small runs are no slower here (measured on 2 cores with glibc's default
        heap: ~590 clips/s at 8 clips a run, ~550 at 16, 278 at 64), the activations
        staying in cache; the daemon's bounded heap (daemon/core/heap.py) costs ~25%
        at any size. The backbone's patches go MAX_PATCHES_PER_RUN at a time: measured
        here, 8 patches a run peak at ~340 MB RSS, 2 at ~155 MB, at the same songs/s.
        ORT wants every input fed: an input with no windows left (or not asked for) gets
        an empty batch, which both networks run in well under 1 ms.
        """
        feeds, steps = {}, {}
        for kind, name in self.bundle.inputs.items():
            given = windows.get(kind)
            feeds[name] = (np.zeros((0, *self._shapes[kind]), np.float32) if given is None
                           else np.asarray(given, dtype=np.float32))
            steps[name] = _PER_RUN[kind]
        runs = max(-(-len(v) // steps[name]) for name, v in feeds.items())
        parts: dict[str, list[np.ndarray]] = {name: [] for name in outputs}
        for r in range(runs):
            run = {name: v[r * steps[name]:(r + 1) * steps[name]] for name, v in feeds.items()}
            for name, value in zip(outputs, self.session.run(list(outputs), run), strict=True):
                parts[name].append(value)
        return {name: np.concatenate(values) for name, values in parts.items() if values}

    def clip_probabilities(self, clips: np.ndarray) -> np.ndarray:
        """(n, F, T, 1) float32 clips -> (n, len(member classes)) uncalibrated window
        probabilities of the bundle's (first) cnn member."""
        member = next((m for m in self.members if m.kind == CNN), None)
        if member is None:
            raise ValueError(f"{self.path.name} has no cnn member (family {self.family})")
        if not len(clips):
            return np.zeros((0, len(member.classes)), np.float32)
        return self.window_outputs({CNN: clips}, [member.output])[member.output]

    def predict(self, songs: Sequence, embeddings: bool = True) -> Prediction:
        """Songs' features -> Prediction (probs (n, len(classes)), per-song embeddings).

        A song is a dict by feature kind ({"cnn": (clips, F, T, 1), "backbone":
        (patches, 187, 96)}) holding at least the kinds the members need (plus
        "backbone" for the embedding), or a plain ndarray (= {"cnn": it}). The windows of
        all songs are batched together; songs may have different window counts. Each
        member is calibrated with its own temperature; see combine_members.
        """
        songs = [s if isinstance(s, dict) else {CNN: s} for s in songs]
        embed = embeddings and self.has_embedding
        if not songs:
            return Prediction(np.zeros((0, len(self.classes))), [] if embed else None)
        kinds = self.bundle.member_needs | ({BACKBONE} if embed else set())
        for i, song in enumerate(songs):
            for kind in kinds:
                if kind not in song or not len(song[kind]):
                    raise ValueError(f"song {i} has no {kind!r} features, which "
                                     f"{self.path.name} ({self.family}) needs")
        outputs = [m.output for m in self.members] + \
            ([self.bundle.embedding.output] if embed else [])
        values = self.window_outputs(
            {k: np.concatenate([s[k] for s in songs]) for k in kinds}, list(dict.fromkeys(
                outputs)))
        bounds = {k: np.cumsum([0] + [len(s[k]) for s in songs]) for k in kinds}
        logprobs = []
        for m in self.members:
            edges, probs = bounds[m.kind], values[m.output]
            logprobs.append((m.classes, np.concatenate([
                song_log_probabilities(probs[None, edges[i]:edges[i + 1]], m.temperature)
                for i in range(len(songs))])))
        combined = combine_members(logprobs, [m.weight for m in self.members], self.classes)
        per_song = None
        if embed:
            edges, vectors = bounds[BACKBONE], values[self.bundle.embedding.output]
            per_song = [vectors[edges[i]:edges[i + 1]].astype(np.float32)
                        for i in range(len(songs))]
        return Prediction(combined, per_song)

    def predict_songs(self, songs: Sequence) -> np.ndarray:
        """Songs' features (ndarray = cnn clips, or a dict by kind) -> (n_songs,
        n_classes) calibrated probabilities; the embedding is neither needed nor run."""
        return self.predict(songs, embeddings=False).probs

    def top(self, probs_row: np.ndarray, k: int = 3) -> list[tuple[str, float]]:
        """One song's probabilities -> its k most likely (genre, confidence), best first."""
        return top_genres(probs_row, self.classes, k)
