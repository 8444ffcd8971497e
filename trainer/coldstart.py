"""Cold start: genre suggestions before the station has labels enough to train a model.

The backbone's taggram gives each 3-s patch 50 independent Million Song Dataset tag
probabilities (sigmoids). genres.toml's [cold_start.msd_tags] says which tags mean which
station genre. Per patch, a genre's score is the MAX of its tags' probabilities, and the
scores of the genres that have tags are normalised to sum to 1:

    p_g = max_{t in tags(g)} taggram_t / sum_h max_{t in tags(h)} taggram_t

Max, not sum: the tags of one genre are near-synonyms that fire together ("rock", "classic
rock", "hard rock"), so a sum would favour whichever genre the table lists most tags for
(Rock has nine, Blues one); the max is "the strongest evidence for this genre" whatever
the table's length. The normalisation makes a per-patch distribution over the mapped
genres, which is what a bundle member's output is (contract: per-window probabilities);
the daemon then combines patches as for every model (mean log-probability, softmax).

The bundle is ONE ONNX file: the converted backbone (trainer.backbone) composed with a
fixed 0/1 mapping matrix M (genres x tags): probs = normalise(ReduceMax(taggram * M)),
plus the backbone's penultimate layer as "embedding" (for "sounds like"). It is built
with onnx only (no TensorFlow) and kept only if onnxruntime's output equals the plain
backbone's taggram through the same mapping in numpy. Its metadata says unverified: no
one has measured these suggestions on the station's songs; the first trained model
replaces it (daemon.learn.gate).

    python -m trainer coldstart --out DIR [--genres genres.toml]
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from daemon.audio.features import BACKBONE, BACKBONE_SPEC, EMBEDDING_SPEC, INPUT_NAMES
from daemon.core.errors import ConfigError
from daemon.learn.backbone_file import backbone_onnx
from daemon.learn.registry import file_sha256
from daemon.tags.genres import MSD_TAGS, GenreMap
from trainer import TRAINER_VERSION
from trainer import backbone as bb
from trainer.export import metadata_props, write_model

FAMILY = "coldstart"
OUTPUT = "coldstart_probs"
EMBEDDING = "embedding"
TAGGRAM, PENULTIMATE = "taggram", EMBEDDING_SPEC.output
# Keeps the normalisation finite should every mapped tag round to 0 (sigmoids never do).
FLOOR = 1e-12
# onnxruntime's composed graph vs the plain backbone + numpy mapping, max |diff|.
PARITY_TOLERANCE = 1e-5


class NoColdStartGenres(ConfigError):
    """genres.toml maps no station genre to an MSD tag: a cold start could suggest nothing."""


@dataclass(frozen=True)
class ColdStart:
    """What `build` wrote: the bundle, its genres, the genres it cannot suggest, parity."""

    path: Path
    classes: tuple[str, ...]
    no_tag: tuple[str, ...]
    parity_max_abs_diff: float
    seconds: float


def mapping_matrix(cold_start: Mapping[str, tuple[str, ...]], tags: tuple[str, ...]
                   ) -> tuple[tuple[str, ...], np.ndarray]:
    """genres.toml's table and the taggram's tag order -> (classes, M (k, len(tags)) 0/1
    float32): row g has a 1 in each column of a tag meaning genre g. Only genres with at
    least one tag are classes. Raises NoColdStartGenres when there are none."""
    classes = tuple(g for g, names in cold_start.items() if names)
    if not classes:
        raise NoColdStartGenres("genres.toml has no [cold_start.msd_tags] entry: no genre "
                                "can be suggested before a model is trained")
    matrix = np.zeros((len(classes), len(tags)), np.float32)
    for row, genre in enumerate(classes):
        for tag in cold_start[genre]:
            matrix[row, tags.index(tag)] = 1.0
    return classes, matrix


def genre_probabilities(taggram: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """The mapping in numpy (the reference the graph is checked against): (N, tags)
    taggram -> (N, k) per-patch genre probabilities (max of each genre's tags, normalised)."""
    scores = (taggram[:, None, :].astype(np.float32) * matrix[None]).max(axis=2)
    scores = np.maximum(scores, np.float32(FLOOR))
    return scores / scores.sum(axis=1, keepdims=True)


def mapping_graph(matrix: np.ndarray, backbone: onnx.ModelProto) -> onnx.ModelProto:
    """The mapping as an ONNX model taking the backbone's taggram and penultimate outputs
    (same IR version and opsets as `backbone`, so onnx.compose can join them)."""
    k, n_tags = matrix.shape
    dim = EMBEDDING_SPEC.dim
    nodes = [
        helper.make_node("Unsqueeze", [TAGGRAM, "coldstart/axis1"], ["coldstart/tags"]),
        helper.make_node("Mul", ["coldstart/tags", "coldstart/matrix"], ["coldstart/masked"]),
        # opset 17: ReduceMax's axes is an attribute (ReduceSum's is an input since 13)
        helper.make_node("ReduceMax", ["coldstart/masked"], ["coldstart/scores"], axes=[2],
                         keepdims=0),
        helper.make_node("Max", ["coldstart/scores", "coldstart/floor"],
                         ["coldstart/floored"]),
        helper.make_node("ReduceSum", ["coldstart/floored", "coldstart/axis1"],
                         ["coldstart/total"], keepdims=1),
        helper.make_node("Div", ["coldstart/floored", "coldstart/total"], [OUTPUT]),
        helper.make_node("Identity", [PENULTIMATE], [EMBEDDING]),
    ]
    constants = [
        numpy_helper.from_array(matrix[None].astype(np.float32), "coldstart/matrix"),
        numpy_helper.from_array(np.array([1], np.int64), "coldstart/axis1"),
        numpy_helper.from_array(np.array(FLOOR, np.float32), "coldstart/floor"),
    ]
    graph = helper.make_graph(
        nodes, "coldstart_mapping",
        [helper.make_tensor_value_info(TAGGRAM, TensorProto.FLOAT, ["patches", n_tags]),
         helper.make_tensor_value_info(PENULTIMATE, TensorProto.FLOAT, ["patches", dim])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["patches", k]),
         helper.make_tensor_value_info(EMBEDDING, TensorProto.FLOAT, ["patches", dim])],
        initializer=constants)
    return helper.make_model(graph, opset_imports=list(backbone.opset_import),
                             ir_version=backbone.ir_version)


def compose(backbone: onnx.ModelProto, matrix: np.ndarray) -> onnx.ModelProto:
    """patches -> backbone -> (coldstart_probs, embedding), one graph; the backbone's
    pooled outputs are cut away. Metadata is left empty (set by `build`)."""
    source = onnx.ModelProto()
    source.CopyFrom(backbone)
    del source.metadata_props[:]
    model = onnx.compose.merge_models(
        source, mapping_graph(matrix, backbone),
        io_map=[(TAGGRAM, TAGGRAM), (PENULTIMATE, PENULTIMATE)], outputs=[OUTPUT, EMBEDDING])
    model.graph.name = "genretagger_coldstart"
    return model


def bundle_metadata(classes: tuple[str, ...], cold_start: Mapping[str, tuple[str, ...]],
                    tags: tuple[str, ...], no_tag: tuple[str, ...],
                    graph: str = bb.GRAPH_AS_CONVERTED) -> dict:
    """The bundle's metadata_props (daemon.suggest.bundle reads them) before JSON encoding."""
    backbone_facts = bb.metadata(tags, BACKBONE_SPEC, graph=graph)
    backbone_facts.pop("backbone_outputs")  # this graph has only the two outputs below
    return {
        **backbone_facts,
        "backbone_spec": json.loads(BACKBONE_SPEC.to_json()),
        "family": FAMILY,
        "classes": list(classes),
        "members": [{"kind": BACKBONE, "input": INPUT_NAMES[BACKBONE], "output": OUTPUT,
                     "classes": list(classes), "temperature": 1.0, "weight": 1.0}],
        "embedding": {"input": INPUT_NAMES[BACKBONE], "output": EMBEDDING,
                      "spec": json.loads(EMBEDDING_SPEC.to_json())},
        "temperature": 1.0,
        "windows_per_song": BACKBONE_SPEC.clips_per_song,
        "unverified": True,
        "metrics": {"family": FAMILY, "unverified": True},
        "cold_start_tags": {g: list(cold_start[g]) for g in classes},
        "cold_start_no_tag": list(no_tag),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "trainer_version": TRAINER_VERSION,
    }


def parity(model: onnx.ModelProto, backbone: Path, matrix: np.ndarray,
           patches: np.ndarray) -> float:
    """Max |composed graph - (plain backbone's taggram -> numpy mapping)| over `patches`,
    the embedding compared with the plain backbone's penultimate likewise."""
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    probs, embedding = session.run([OUTPUT, EMBEDDING],
                                   {INPUT_NAMES[BACKBONE]: patches.astype(np.float32)})
    plain = bb.run_onnx(backbone, patches)
    return max(float(np.abs(probs - genre_probabilities(plain[TAGGRAM], matrix)).max()),
               float(np.abs(embedding - plain[PENULTIMATE]).max()))


def build(out: Path, genre_map: GenreMap, *, backbone: Path | None = None,
          parity_patches: np.ndarray | None = None,
          tolerance: float = PARITY_TOLERANCE) -> ColdStart:
    """Write the cold-start bundle `out`/model.onnx and `out`/report.json.

    In: the station's genre map (its [cold_start] table), the ONNX backbone (default
    daemon.learn.backbone_file.backbone_onnx()), real log mel patches for the parity check (default
    the generated demo songs'). Raises BackboneUnavailable, NoColdStartGenres,
    ConfigError (the wheel's tags differ from the daemon's MSD_TAGS) or ParityError
    (nothing written).
    """
    from trainer.export import ParityError

    started = time.monotonic()
    backbone = Path(backbone or backbone_onnx())
    tags = bb.msd_tags()
    if tags != MSD_TAGS:
        raise ConfigError("the musicnn wheel's MSD tags differ from daemon.tags.genres.MSD_TAGS;"
                          " the [cold_start] table cannot be trusted")
    classes, matrix = mapping_matrix(genre_map.cold_start, tags)
    no_tag = tuple(g for g in genre_map.canonical if g not in classes)
    source = onnx.load(str(backbone))
    graph_form = {p.key: p.value for p in source.metadata_props}.get(
        "backbone_graph", bb.GRAPH_AS_CONVERTED)
    model = compose(source, matrix)
    patches = bb.demo_patches() if parity_patches is None else parity_patches
    diff = parity(model, backbone, matrix, patches)
    if not diff <= tolerance:
        raise ParityError(f"the cold-start graph differs from the backbone + mapping by "
                          f"{diff:.2e} (> {tolerance:.0e}); {out} not written")
    metadata = bundle_metadata(classes, genre_map.cold_start, tags, no_tag, graph_form)
    helper.set_model_props(model, metadata_props(metadata))
    onnx.checker.check_model(model)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = {key: metadata[key] for key in (
        "family", "classes", "unverified", "cold_start_tags", "cold_start_no_tag",
        "backbone_source", "backbone_licence", "created_at", "trainer_version")}
    report.update(genres_source=genre_map.source, backbone_onnx=str(backbone),
                  backbone_onnx_sha256=file_sha256(backbone), parity_max_abs_diff=diff,
                  parity_patches=len(patches), seconds=round(time.monotonic() - started, 2))
    (out / "report.json").write_text(json.dumps(report, indent=1, sort_keys=True),
                                     encoding="utf-8")
    write_model(model, out / "model.onnx")  # last: a folder with model.onnx is complete
    return ColdStart(out / "model.onnx", classes, no_tag, diff, report["seconds"])
