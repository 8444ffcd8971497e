"""trainer.rewrite on small graphs with every case the identity has to hold for: positive,
negative and zero batch-norm scales, channel counts off the 16-block, a pool that is not
over the whole axis, and a chain that must be left alone."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from trainer.rewrite import rewrite_front_end


def _graph(channels: int, scale: np.ndarray, pool_kernel: tuple[int, int],
           extra_use: bool = False, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    weight = rng.normal(size=(channels, 1, 5, 7)).astype(np.float32)
    bias = rng.normal(size=channels).astype(np.float32)
    beta = rng.normal(size=channels).astype(np.float32)
    mean = rng.normal(size=channels).astype(np.float32)
    var = rng.uniform(0.5, 2.0, size=channels).astype(np.float32)
    gamma = (scale * np.sqrt(var + 1e-3)).astype(np.float32)
    inits = [numpy_helper.from_array(v, n) for n, v in (
        ("w", weight), ("b", bias), ("gamma", gamma), ("beta", beta), ("mean", mean),
        ("var", var))]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["z"], pads=[2, 0, 2, 0]),
        helper.make_node("Relu", ["z"], ["r"]),
        helper.make_node("BatchNormalization", ["r", "gamma", "beta", "mean", "var"], ["n"],
                         epsilon=1e-3),
        helper.make_node("MaxPool", ["n"], ["y"], kernel_shape=list(pool_kernel),
                         strides=list(pool_kernel)),
    ]
    shape = ["batch", "channels", "time", "frequency"]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)]
    if extra_use:
        outputs.append(helper.make_tensor_value_info("n", TensorProto.FLOAT, shape))
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                       ["batch", 1, 20, 16])],
        outputs, initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


@pytest.mark.parametrize("channels,pool", [(51, (1, 10)), (16, (1, 10)), (20, (2, 10))])
def test_rewrite_is_exact_for_every_sign_of_the_scale(channels, pool):
    scale = np.linspace(-2.0, 2.0, channels).astype(np.float32)
    scale[channels // 3] = 0.0
    model = _graph(channels, scale, pool)
    x = np.random.default_rng(1).normal(size=(3, 1, 20, 16)).astype(np.float32)
    rewritten = rewrite_front_end(model)
    assert [n.op_type for n in rewritten.graph.node][:2] == ["Conv", "MaxPool"]
    assert "BatchNormalization" not in {n.op_type for n in rewritten.graph.node}
    kernel = next(i for i in rewritten.graph.initializer
                  if i.name == rewritten.graph.node[0].input[1])
    assert kernel.dims[0] == -(-channels // 16) * 16
    (expected,), (got,) = _run(model, x), _run(rewritten, x)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_all_positive_scales_need_no_sign_arithmetic():
    model = _graph(24, np.full(24, 0.7, np.float32), (1, 10))
    rewritten = rewrite_front_end(model)
    assert "Mul" not in {n.op_type for n in rewritten.graph.node}
    x = np.random.default_rng(2).normal(size=(2, 1, 20, 16)).astype(np.float32)
    np.testing.assert_allclose(_run(rewritten, x)[0], _run(model, x)[0], rtol=1e-5, atol=1e-5)


def test_a_chain_whose_batch_norm_is_used_elsewhere_is_left_alone():
    model = _graph(8, np.ones(8, np.float32), (1, 10), extra_use=True)
    rewritten = rewrite_front_end(model)
    assert [n.op_type for n in rewritten.graph.node] == [n.op_type for n in model.graph.node]
