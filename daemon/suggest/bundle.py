"""What a model bundle says about itself: its metadata, read and checked (no ORT here).

A bundle is one .onnx file. Its metadata_props name the feature kinds its inputs take
(daemon.audio.features: "cnn" -> input "clips" by FeatureSpec, "backbone" -> input
"patches" by BackboneSpec), its members (each an ONNX output of per-window softmax
probabilities over the member's classes, with its temperature and weight) and, when the
backbone is in the graph, its per-patch embedding output. A legacy bundle (no
`members`) is one cnn member on the session's first input and first output.

`describe` turns metadata plus the session's input and output names into a `Bundle`, or
raises ModelMismatch naming what is missing or which spec field differs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from daemon.audio.features import (
    BACKBONE,
    BACKBONE_SPEC,
    CNN,
    DEFAULT_SPEC,
    EMBEDDING_SPEC,
    INPUT_NAMES,
    BackboneSpec,
    EmbeddingSpec,
    FeatureSpec,
)
from daemon.core.errors import ModelMismatch

# metadata_props keys whose values are JSON (the rest are plain strings).
JSON_KEYS = ("classes", "feature_spec", "backbone_spec", "metrics", "training_set",
             "clips_per_song", "windows_per_song", "temperature", "members", "embedding",
             "unverified", "tournament", "left_out", "backbone_outputs", "msd_tags",
             "context", "served", "fitted_on_songs")
# A legacy bundle needs these; a bundle with members needs classes and members, plus the
# spec of each input kind it takes.
LEGACY_KEYS = ("classes", "feature_spec", "temperature")
FAMILIES = ("cnn", "backbone", "ensemble", "coldstart")
# Windows per song is a run-time choice (config), not part of what the model learned.
RUNTIME_FIELDS = ("clips_per_song",)
_KIND_OF_INPUT = {name: kind for kind, name in INPUT_NAMES.items()}


@dataclass(frozen=True)
class Member:
    """One model inside a bundle: `output` gives (windows, len(classes)) probabilities for
    the windows fed to `input` (the feature kind `kind`)."""

    kind: str
    input: str
    output: str
    classes: tuple[str, ...]
    temperature: float = 1.0
    weight: float = 1.0


@dataclass(frozen=True)
class Embedding:
    """The bundle's per-patch embedding output (for "sounds like")."""

    input: str
    output: str
    spec: EmbeddingSpec


@dataclass(frozen=True)
class Bundle:
    """Everything the daemon needs to run a bundle, read from its metadata."""

    family: str
    classes: tuple[str, ...]
    members: tuple[Member, ...]
    embedding: Embedding | None
    temperature: float
    unverified: bool
    # kind -> ONNX input name, for every input the session has.
    inputs: dict[str, str]

    @property
    def needs(self) -> frozenset[str]:
        """Feature kinds the bundle's inputs take (members and embedding)."""
        return frozenset(self.inputs)

    @property
    def member_needs(self) -> frozenset[str]:
        """Feature kinds the probabilities alone need (no embedding)."""
        return frozenset(m.kind for m in self.members)


def read_metadata(path: Path | str) -> dict:
    """A bundle's metadata_props as a dict, JSON values decoded.

    Raises ModelMismatch when the file is not an ONNX model.
    """
    # Lazy: importing onnx takes about 0.4 s, paid only by what reads a bundle's metadata
    # (not by trainer/evaluate and the CLI, which import the classifier for
    # song_probabilities).
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # onnx raises DecodeError, OSError, ... for a bad file
        raise ModelMismatch(f"{path}: not an ONNX model bundle ({err})") from None
    return decode({p.key: p.value for p in model.metadata_props})


def decode(props: dict[str, str]) -> dict:
    """metadata_props strings -> values (JSON_KEYS decoded; a bad JSON value stays text)."""
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


def spec_differences(expected, found, ignore: tuple[str, ...] = RUNTIME_FIELDS) -> list[str]:
    """Fields where two specs (dataclasses of one type) disagree, as
    'name: bundle X, daemon Y' lines; `ignore` names fields allowed to differ."""
    ours, theirs = asdict(expected), asdict(found)
    return [f"{k}: bundle {theirs[k]!r}, daemon {ours[k]!r}"
            for k in ours if k not in ignore and ours[k] != theirs[k]]


def _spec(path, metadata: dict, key: str, kind: type):
    if key not in metadata:
        raise ModelMismatch(f"{path}: bundle metadata lacks {key}")
    value = metadata[key]
    try:
        return kind.from_json(value if isinstance(value, str) else json.dumps(value))
    except (TypeError, ValueError, KeyError) as err:
        raise ModelMismatch(f"{path}: bundle {key} unreadable ({err})") from None


def _check_spec(path, metadata: dict, key: str, expected) -> None:
    differences = spec_differences(expected, _spec(path, metadata, key, type(expected)))
    if differences:
        raise ModelMismatch(f"{path}: model was trained on other features ({key}): "
                            + "; ".join(differences))


def _member(path, raw: dict, classes: tuple[str, ...]) -> Member:
    try:
        member = Member(kind=str(raw["kind"]), input=str(raw["input"]),
                        output=str(raw["output"]),
                        classes=tuple(raw.get("classes", classes)),
                        temperature=float(raw.get("temperature", 1.0)),
                        weight=float(raw.get("weight", 1.0)))
    except (TypeError, KeyError, ValueError) as err:
        raise ModelMismatch(f"{path}: bundle member {raw!r} unreadable ({err!r})") from None
    if INPUT_NAMES.get(member.kind) != member.input:
        raise ModelMismatch(f"{path}: member kind {member.kind!r} with input "
                            f"{member.input!r} (expected one of {INPUT_NAMES})")
    if not member.temperature > 0 or not member.weight > 0:
        raise ModelMismatch(f"{path}: member {member.output!r} has temperature "
                            f"{member.temperature} / weight {member.weight} (both must be > 0)")
    return member


def _embedding(path, raw) -> Embedding:
    try:
        spec = raw["spec"]
        embedding = Embedding(str(raw["input"]), str(raw["output"]), EmbeddingSpec.from_json(
            spec if isinstance(spec, str) else json.dumps(spec)))
    except (TypeError, KeyError, ValueError) as err:
        raise ModelMismatch(f"{path}: bundle embedding unreadable ({err!r})") from None
    if embedding.input != INPUT_NAMES[BACKBONE]:
        raise ModelMismatch(f"{path}: embedding input {embedding.input!r} is not "
                            f"{INPUT_NAMES[BACKBONE]!r}")
    return embedding


def _legacy(path, metadata: dict, inputs: list[str], outputs: list[str]) -> tuple:
    missing = [k for k in LEGACY_KEYS if k not in metadata]
    if missing:
        raise ModelMismatch(f"{path}: bundle metadata lacks {', '.join(missing)}")
    classes = tuple(metadata["classes"])
    member = Member(CNN, inputs[0], outputs[0], classes, float(metadata["temperature"]), 1.0)
    return (member,), {CNN: inputs[0]}


def describe(path, metadata: dict, inputs: list[str], outputs: list[str],
             spec: FeatureSpec = DEFAULT_SPEC,
             backbone_spec: BackboneSpec = BACKBONE_SPEC) -> Bundle:
    """Metadata + the session's input and output names -> Bundle, checked against the
    specs this daemon computes. Raises ModelMismatch naming what is wrong."""
    if "classes" not in metadata:
        raise ModelMismatch(f"{path}: bundle metadata lacks classes")
    if "members" not in metadata:
        members, by_kind = _legacy(path, metadata, inputs, outputs)
        embedding = None
    else:
        classes = tuple(metadata["classes"])
        if not isinstance(metadata["members"], list) or not metadata["members"]:
            raise ModelMismatch(f"{path}: bundle members unreadable: {metadata['members']!r}")
        members = tuple(_member(path, raw, classes) for raw in metadata["members"])
        embedding = _embedding(path, metadata["embedding"]) if metadata.get("embedding") \
            else None
        unknown = [name for name in inputs if name not in _KIND_OF_INPUT]
        if unknown:
            raise ModelMismatch(f"{path}: model inputs {unknown} are not feature kinds "
                                f"{sorted(_KIND_OF_INPUT)}")
        by_kind = {_KIND_OF_INPUT[name]: name for name in inputs}
        named = {m.output for m in members} | ({embedding.output} if embedding else set())
        absent = sorted(named - set(outputs)) + sorted(
            {m.input for m in members} - set(inputs))
        if absent:
            raise ModelMismatch(f"{path}: bundle metadata names {absent}, which the model "
                                f"does not have (inputs {inputs}, outputs {outputs})")
    if CNN in by_kind:
        _check_spec(path, metadata, "feature_spec", spec)
    if BACKBONE in by_kind:
        _check_spec(path, metadata, "backbone_spec", backbone_spec)
    if embedding is not None:
        found = embedding.spec
        expected = replace(EMBEDDING_SPEC, backbone=replace(
            backbone_spec, clips_per_song=found.backbone.clips_per_song))
        differences = spec_differences(expected, found)
        if differences:
            raise ModelMismatch(f"{path}: the bundle's embedding is not the one this daemon "
                                f"caches (embedding.spec): " + "; ".join(differences))
    classes = tuple(metadata["classes"])
    unknown = sorted({c for m in members for c in m.classes} - set(classes))
    orphans = sorted(set(classes) - {c for m in members for c in m.classes})
    if unknown or orphans:
        raise ModelMismatch(f"{path}: members' classes and bundle classes disagree "
                            f"(only in members {unknown}, in no member {orphans})")
    family = str(metadata.get("family", CNN))
    if family not in FAMILIES:
        raise ModelMismatch(f"{path}: unknown bundle family {family!r} (known: {FAMILIES})")
    temperature = float(metadata.get("temperature", members[0].temperature
                                      if len(members) == 1 else 1.0))
    return Bundle(family, classes, members, embedding, temperature,
                  bool(metadata.get("unverified", False)), by_kind)
