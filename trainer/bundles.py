"""Model bundles built on the backbone: one ONNX file each, composed with onnx.compose.

- backbone: backbone.onnx ("patches" -> "embedding", its per-patch "penultimate") + the
  head (standardise, MatMul, Add, Softmax) -> "backbone_probs" (patches, k).
- cnn with embedding: the seed CNN ("clips" -> "cnn_probs") beside the backbone's
  "embedding" (two inputs; the embedding only feeds "sounds like").
- ensemble: the seed CNN and backbone + head, members weighted 0.5/0.5 by default: each
  member is calibrated by its own temperature first, and weights fitted on the small
  holdout would chase its noise: the mean of calibrated log-probabilities.

Every part is prefixed ("cnn/", "backbone/", "head/") before merging so that two tf2onnx
exports never share a tensor name; the graph's inputs and outputs then get the contract's
names (daemon/suggest/bundle.py). Each builder runs the composed file with onnxruntime on
real clips/patches against the parts run separately (the CNN and backbone by ORT, the
head in numpy) and raises ParityError, writing nothing, when they disagree. Needs onnx and
onnxruntime only (no TensorFlow).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, compose, helper, numpy_helper, version_converter

from daemon.audio.features import (
    BACKBONE,
    BACKBONE_SPEC,
    CNN,
    DEFAULT_SPEC,
    EMBEDDING_SPEC,
    INPUT_NAMES,
    BackboneSpec,
    FeatureSpec,
)
from daemon.learn.backbone_file import backbone_onnx
from trainer import backbone as bb
from trainer.export import ParityError, metadata_props, write_model
from trainer.head import Head

CNN_OUTPUT = "cnn_probs"
BACKBONE_OUTPUT = "backbone_probs"
EMBEDDING_OUTPUT = "embedding"
ENSEMBLE_WEIGHTS = (0.5, 0.5)
# Max |composed - parts| over probabilities, and over the embedding relative to its
# largest magnitude (floor 1): the same float32 ops, merely in one graph.
PARITY_TOLERANCE = 1e-5


# ---------------------------------------------------------------- graph parts


def _part(model: onnx.ModelProto, prefix: str, names: dict[str, str],
          outputs: Sequence[str]) -> onnx.ModelProto:
    """`model` cut down to `outputs`, every name prefixed, then its inputs and the kept
    outputs renamed by `names` (old -> contract name)."""
    inputs = [i.name for i in model.graph.input
              if i.name not in {t.name for t in model.graph.initializer}]
    if list(outputs) != [o.name for o in model.graph.output]:
        model = onnx.utils.Extractor(model).extract_model(inputs, list(outputs))
    part = compose.add_prefix(model, prefix)
    for old, new in names.items():
        bb.rename_tensor(part, prefix + old, new)
    return part


def backbone_part(backbone: onnx.ModelProto) -> onnx.ModelProto:
    """backbone.onnx as "patches" -> "embedding" (its per-patch "penultimate") only."""
    return _part(backbone, "backbone/", {bb.INPUT: INPUT_NAMES[BACKBONE],
                                         bb.EMBEDDING_OUTPUT: EMBEDDING_OUTPUT},
                 [bb.EMBEDDING_OUTPUT])


def cnn_part(cnn: onnx.ModelProto) -> onnx.ModelProto:
    """The exported seed CNN (trainer.export.to_onnx) as "clips" -> "cnn_probs"."""
    if len(cnn.graph.input) != 1 or len(cnn.graph.output) != 1:
        raise ValueError(f"the CNN graph has inputs {[i.name for i in cnn.graph.input]} and "
                         f"outputs {[o.name for o in cnn.graph.output]}; expected one each")
    return _part(cnn, "cnn/", {cnn.graph.input[0].name: INPUT_NAMES[CNN],
                               cnn.graph.output[0].name: CNN_OUTPUT},
                 [cnn.graph.output[0].name])


def head_part(head: Head, like: onnx.ModelProto) -> onnx.ModelProto:
    """The head as ONNX: "embedding" (n, dim) -> "backbone_probs" (n, k) =
    softmax(((e - mean) / scale) @ W.T + b); opsets and IR version copied from `like`."""
    dim, k = head.weights.shape[1], len(head.classes)
    constants = {"head/mean": head.mean, "head/scale": head.scale,
                 "head/weights": np.ascontiguousarray(head.weights.T), "head/bias": head.bias}
    graph = helper.make_graph(
        [helper.make_node("Sub", [EMBEDDING_OUTPUT, "head/mean"], ["head/centred"]),
         helper.make_node("Div", ["head/centred", "head/scale"], ["head/standard"]),
         helper.make_node("MatMul", ["head/standard", "head/weights"], ["head/product"]),
         helper.make_node("Add", ["head/product", "head/bias"], ["head/logits"]),
         helper.make_node("Softmax", ["head/logits"], [BACKBONE_OUTPUT], axis=-1)],
        "backbone_head",
        [helper.make_tensor_value_info(EMBEDDING_OUTPUT, TensorProto.FLOAT, ["patches", dim])],
        [helper.make_tensor_value_info(BACKBONE_OUTPUT, TensorProto.FLOAT, ["patches", k])],
        [numpy_helper.from_array(np.asarray(v, np.float32), name) for name, v in
         constants.items()])
    model = helper.make_model(graph, opset_imports=list(like.opset_import))
    model.ir_version = like.ir_version
    return model


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _merge(first: onnx.ModelProto, second: onnx.ModelProto, io_map, outputs) -> onnx.ModelProto:
    # merge_models wants one opset and IR version: the older part is converted up.
    opset = max(_opset(first), _opset(second))
    first, second = (m if _opset(m) == opset else version_converter.convert_version(m, opset)
                     for m in (first, second))
    ir = max(first.ir_version, second.ir_version)  # a newer IR reads the older's graphs
    first.ir_version = second.ir_version = ir
    merged = compose.merge_models(first, second, io_map=io_map, outputs=list(outputs))
    del merged.metadata_props[:]
    return merged


def load_backbone(path: Path | None = None) -> onnx.ModelProto:
    """backbone.onnx (default: backbone_onnx(); BackboneUnavailable)."""
    return onnx.load(str(path or backbone_onnx()))


# ---------------------------------------------------------------- metadata


def _member(kind: str, output: str, classes: Sequence[str], temperature: float,
            weight: float) -> dict:
    return {"kind": kind, "input": INPUT_NAMES[kind], "output": output,
            "classes": list(classes), "temperature": float(temperature),
            "weight": float(weight)}


def backbone_metadata(backbone: onnx.ModelProto,
                      backbone_spec: BackboneSpec = BACKBONE_SPEC) -> dict:
    """What a bundle with the backbone in its graph says: backbone_spec, the embedding
    output, and trainer.backbone.metadata()'s source and licence fields."""
    props = {p.key: p.value for p in backbone.metadata_props}
    tags = tuple(json.loads(props.get("msd_tags", "[]")))
    about = bb.metadata(tags, backbone_spec,
                        graph=props.get("backbone_graph", bb.GRAPH_AS_CONVERTED))
    about.pop("backbone_outputs")
    about.pop("msd_tags")
    about["embedding"] = {"input": INPUT_NAMES[BACKBONE], "output": EMBEDDING_OUTPUT,
                          "spec": json.loads(EMBEDDING_SPEC.to_json())}
    return about


def _bundle_metadata(family: str, members: list[dict], extra: dict | None,
                     spec: FeatureSpec | None, about_backbone: dict | None) -> dict:
    classes: list[str] = []
    for member in members:
        classes += [c for c in member["classes"] if c not in classes]
    data = dict(extra or {})
    data.update({"family": family, "classes": classes, "members": members,
                 "temperature": members[0]["temperature"] if len(members) == 1 else 1.0})
    if spec is not None:
        data["feature_spec"] = json.loads(spec.to_json())
    if about_backbone is not None:
        data.update(about_backbone)
    return data


# ---------------------------------------------------------------- parity and writing


def _session(model: onnx.ModelProto | Path) -> ort.InferenceSession:
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"])


def _run(session: ort.InferenceSession, feeds: dict[str, np.ndarray],
         outputs: Sequence[str]) -> dict[str, np.ndarray]:
    # Every input fed (ORT insists); an input a part does not use gets an empty batch.
    shapes = {i.name: i.shape for i in session.get_inputs()}
    full = {name: np.asarray(feeds[name], np.float32) if name in feeds else
            np.zeros((0, *shapes[name][1:]), np.float32) for name in shapes}
    return dict(zip(outputs, session.run(list(outputs), full), strict=True))


def parity(composed: onnx.ModelProto, expected: dict[str, np.ndarray],
           feeds: dict[str, np.ndarray]) -> dict[str, float]:
    """Per output: max |composed - expected| (the embedding relative to its largest
    magnitude, floor 1)."""
    ours = _run(_session(composed), feeds, list(expected))
    report = {}
    for name, theirs in expected.items():
        diff = float(np.abs(ours[name].astype(np.float64) - theirs).max())
        if name == EMBEDDING_OUTPUT:
            diff /= max(1.0, float(np.abs(theirs).max()))
        report[name] = diff
    return report


def _finish(proto: onnx.ModelProto, out: Path, metadata: dict, expected: dict,
            feeds: dict, tolerance: float) -> dict[str, float]:
    report = parity(proto, expected, feeds)
    worst = max(report, key=report.get)
    if not report[worst] <= tolerance:
        raise ParityError(f"the composed bundle and its parts differ by {report[worst]:.2e} "
                          f"on {worst} (> {tolerance:.0e}); {out} not written")
    onnx.helper.set_model_props(proto, metadata_props(metadata))
    onnx.checker.check_model(proto)
    write_model(proto, Path(out))
    return report


def _embeddings(backbone: onnx.ModelProto, patches: np.ndarray) -> np.ndarray:
    return bb.embed_patches(_session(backbone), patches).astype(np.float64)


# ---------------------------------------------------------------- the three builders


def build_backbone(head: Head, out: Path, parity_patches: np.ndarray, *,
                   temperature: float = 1.0, metadata: dict | None = None,
                   backbone: onnx.ModelProto | None = None,
                   backbone_spec: BackboneSpec = BACKBONE_SPEC,
                   tolerance: float = PARITY_TOLERANCE) -> dict[str, float]:
    """Write the backbone family's bundle (backbone + head) to `out`.

    metadata: the trainer's keys (metrics, training_set, ...); family, classes, members,
    temperature, backbone_spec, embedding and the licence fields are added here.
    Returns the parity report (output -> max diff); raises ParityError (nothing written).
    """
    backbone = backbone if backbone is not None else load_backbone()
    proto = _merge(backbone_part(backbone), head_part(head, backbone),
                   [(EMBEDDING_OUTPUT, EMBEDDING_OUTPUT)], [BACKBONE_OUTPUT, EMBEDDING_OUTPUT])
    members = [_member(BACKBONE, BACKBONE_OUTPUT, head.classes, temperature, 1.0)]
    data = _bundle_metadata("backbone", members, metadata, None,
                            backbone_metadata(backbone, backbone_spec))
    embedded = _embeddings(backbone, parity_patches)
    expected = {BACKBONE_OUTPUT: head.probabilities(embedded), EMBEDDING_OUTPUT: embedded}
    return _finish(proto, out, data, expected, {INPUT_NAMES[BACKBONE]: parity_patches},
                   tolerance)


def build_cnn(cnn: onnx.ModelProto, classes: Sequence[str], out: Path,
              parity_clips: np.ndarray, parity_patches: np.ndarray | None, *,
              temperature: float = 1.0, metadata: dict | None = None,
              backbone: onnx.ModelProto | None = None, spec: FeatureSpec = DEFAULT_SPEC,
              backbone_spec: BackboneSpec = BACKBONE_SPEC,
              tolerance: float = PARITY_TOLERANCE) -> dict[str, float]:
    """Write the cnn family's bundle: the seed CNN ("clips" -> "cnn_probs") and, when
    `parity_patches` is given (the backbone switched on), the backbone's "embedding" from
    a second input "patches". `cnn` is trainer.export.to_onnx's graph (already checked
    against Keras). Returns the parity report; raises ParityError (nothing written)."""
    members = [_member(CNN, CNN_OUTPUT, classes, temperature, 1.0)]
    expected = {CNN_OUTPUT: _run(_session(cnn), {cnn.graph.input[0].name: parity_clips},
                                 [cnn.graph.output[0].name])[cnn.graph.output[0].name]}
    feeds = {INPUT_NAMES[CNN]: parity_clips}
    proto, about = cnn_part(cnn), None
    if parity_patches is not None:
        backbone = backbone if backbone is not None else load_backbone()
        proto = _merge(proto, backbone_part(backbone), [], [CNN_OUTPUT, EMBEDDING_OUTPUT])
        about = backbone_metadata(backbone, backbone_spec)
        expected[EMBEDDING_OUTPUT] = _embeddings(backbone, parity_patches)
        feeds[INPUT_NAMES[BACKBONE]] = parity_patches
    data = _bundle_metadata("cnn", members, metadata, spec, about)
    return _finish(proto, out, data, expected, feeds, tolerance)


def build_ensemble(cnn: onnx.ModelProto, cnn_classes: Sequence[str], head: Head, out: Path,
                   parity_clips: np.ndarray, parity_patches: np.ndarray, *,
                   temperatures: tuple[float, float] = (1.0, 1.0),
                   weights: tuple[float, float] = ENSEMBLE_WEIGHTS,
                   metadata: dict | None = None, backbone: onnx.ModelProto | None = None,
                   spec: FeatureSpec = DEFAULT_SPEC,
                   backbone_spec: BackboneSpec = BACKBONE_SPEC,
                   tolerance: float = PARITY_TOLERANCE) -> dict[str, float]:
    """Write the ensemble bundle: the seed CNN and backbone + head, members (cnn, backbone)
    with `temperatures` and `weights`. Bundle classes: the CNN's, then the head's others
    (a few-shot genre only the head knows is scored by the head alone; combine_members).
    Returns the parity report; raises ParityError (nothing written)."""
    backbone = backbone if backbone is not None else load_backbone()
    with_head = _merge(backbone_part(backbone), head_part(head, backbone),
                       [(EMBEDDING_OUTPUT, EMBEDDING_OUTPUT)], [BACKBONE_OUTPUT, EMBEDDING_OUTPUT])
    proto = _merge(cnn_part(cnn), with_head, [], [CNN_OUTPUT, BACKBONE_OUTPUT, EMBEDDING_OUTPUT])
    members = [_member(CNN, CNN_OUTPUT, cnn_classes, temperatures[0], weights[0]),
               _member(BACKBONE, BACKBONE_OUTPUT, head.classes, temperatures[1], weights[1])]
    data = _bundle_metadata("ensemble", members, metadata, spec,
                            backbone_metadata(backbone, backbone_spec))
    embedded = _embeddings(backbone, parity_patches)
    expected = {CNN_OUTPUT: _run(_session(cnn), {cnn.graph.input[0].name: parity_clips},
                                 [cnn.graph.output[0].name])[cnn.graph.output[0].name],
                BACKBONE_OUTPUT: head.probabilities(embedded), EMBEDDING_OUTPUT: embedded}
    feeds = {INPUT_NAMES[CNN]: parity_clips, INPUT_NAMES[BACKBONE]: parity_patches}
    return _finish(proto, out, data, expected, feeds, tolerance)
