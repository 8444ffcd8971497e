"""Helpers the test modules share (tests/ is on sys.path: `from helpers import ...`)."""

from __future__ import annotations

import time


def wait_for(predicate, timeout: float = 10.0, what: str | None = None, every: float = 0.05):
    """Poll `predicate` until it returns something truthy, and return that; after
    `timeout` seconds the test fails, saying what it waited for."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what or predicate}")


def genre_bundle(out, classes: tuple[str, ...], hears: str):
    """A real ONNX bundle dir (model.onnx) whose model hears `hears` in every song.

    The graph is the real thing onnxruntime runs (clips -> mean -> MatMul + bias ->
    softmax); zero weights and a bias on one class make its answer known in advance, so a
    test can stage "this model says A, the next one B" without training.
    """
    import json
    from pathlib import Path

    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from daemon.features import DEFAULT_SPEC

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    freqs, frames, _ = DEFAULT_SPEC.input_shape
    bias = np.array([4.0 if c == hears else 0.0 for c in classes], np.float32)
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["clips", "axes"], ["pooled"], keepdims=0),
         helper.make_node("MatMul", ["pooled", "w"], ["scores"]),
         helper.make_node("Add", ["scores", "b"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probs"], axis=-1)],
        f"hears-{hears}",
        [helper.make_tensor_value_info("clips", TensorProto.FLOAT, [None, freqs, frames, 1])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [None, len(classes)])],
        [numpy_helper.from_array(np.array([2, 3], np.int64), "axes"),
         numpy_helper.from_array(np.zeros((freqs, len(classes)), np.float32), "w"),
         numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    helper.set_model_props(model, {
        "classes": json.dumps(list(classes)), "feature_spec": DEFAULT_SPEC.to_json(),
        "temperature": "1.0", "clips_per_song": "5", "training_set_hash": f"hears-{hears}",
        "created_at": "2026-01-01T00:00:00+00:00"})
    onnx.checker.check_model(model)
    onnx.save(model, out / "model.onnx")
    return out
