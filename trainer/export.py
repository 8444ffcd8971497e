"""Keras model -> one ONNX bundle file, checked against Keras before it is kept.

tf2onnx's from_keras does not understand Keras 3 models, so the model is wrapped in a
tf.function with an explicit input signature (dynamic batch) and converted with
from_function. The bundle is written only if onnxruntime and Keras agree on held-out
clips to within PARITY_TOLERANCE; it is written to a temp file and renamed, so a
half-written bundle never exists under its final name.

TensorFlow, Keras and tf2onnx are imported where a Keras model is converted, not at
import: trainer/bundles.py and trainer/backbone.py use ParityError, metadata_props and
write_model with onnx and onnxruntime only.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnxruntime as ort

from daemon.core.errors import GenretaggerError

if TYPE_CHECKING:
    import keras

OPSET = 17
PARITY_TOLERANCE = 1e-4


class ParityError(GenretaggerError):
    """onnxruntime and Keras disagree on the same clips: the export is not trusted."""


def to_onnx(model: keras.Model, opset: int = OPSET) -> onnx.ModelProto:
    """The Keras model as an ONNX graph with input "clips" of shape (batch, F, T, 1)."""
    import tensorflow as tf
    import tf2onnx

    # tf2onnx narrates every conversion at INFO; its warnings still come through.
    logging.getLogger("tf2onnx").setLevel(logging.WARNING)
    signature = (tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name="clips"),)
    function = tf.function(lambda clips: model(clips, training=False),
                           input_signature=signature)
    proto, _ = tf2onnx.convert.from_function(function, input_signature=signature, opset=opset)
    return proto


def metadata_props(metadata: dict) -> dict[str, str]:
    """Bundle metadata -> string props (non-strings JSON-encoded, as read_metadata decodes)."""
    return {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True)
            for k, v in metadata.items()}


def parity(proto: onnx.ModelProto, model: keras.Model, clips: np.ndarray) -> float:
    """Max |onnxruntime - Keras| over the clips' probabilities."""
    session = ort.InferenceSession(proto.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    ours = session.run(None, {name: clips.astype(np.float32)})[0]
    theirs = np.asarray(model(clips.astype(np.float32), training=False))
    return float(np.abs(ours - theirs).max())


def checked_onnx(model: keras.Model, parity_clips: np.ndarray, *, opset: int = OPSET,
                 tolerance: float = PARITY_TOLERANCE) -> tuple[onnx.ModelProto, float]:
    """The Keras model as ONNX (to_onnx), kept only if onnxruntime agrees with Keras on
    `parity_clips`: (graph, max abs diff). The graph trainer/bundles.py composes from.

    Raises ParityError when the diff exceeds `tolerance`.
    """
    proto = to_onnx(model, opset)
    diff = parity(proto, model, parity_clips)
    if not diff <= tolerance:
        raise ParityError(f"onnxruntime and Keras differ by {diff:.2e} (> {tolerance:.0e}) "
                          f"on {len(parity_clips)} held-out clips; bundle not written")
    return proto, diff


def export_bundle(model: keras.Model, path: Path, metadata: dict, parity_clips: np.ndarray,
                  *, opset: int = OPSET, tolerance: float = PARITY_TOLERANCE) -> float:
    """Write the bundle to `path`; returns the parity max abs diff.

    metadata: the bundle's metadata_props (values JSON-encoded unless strings).
    Raises ParityError (and writes nothing) when the diff exceeds `tolerance`.
    """
    proto, diff = checked_onnx(model, parity_clips, opset=opset, tolerance=tolerance)
    onnx.helper.set_model_props(proto, metadata_props(metadata))
    onnx.checker.check_model(proto)
    write_model(proto, Path(path))
    return diff


def write_model(proto: onnx.ModelProto, path: Path) -> None:
    """Write an ONNX model to `path` atomically: a temp file beside it, fsync, rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(proto.SerializeToString())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
