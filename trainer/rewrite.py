"""An exact rewrite of the converted backbone's front end, for onnxruntime's speed.

musicnn's front end runs five branches of Conv -> Relu -> BatchNorm -> MaxPool over the
spectrogram. As converted, onnxruntime spends about a third of its time on the
batch-norms over full-size tensors and the layout conversions around them. Two exact
identities remove that work:

- A batch-norm after a ReLU is `s*relu(z) + t` per channel. For s >= 0 that is
  `relu(s*z) + t`, for s < 0 it is `min(s*z, 0) + t`: both monotone non-decreasing in
  `s*z`, so they commute with a max-pool. The scale `s` goes into the convolution's
  weights and bias, and only the (much smaller) pooled tensor keeps elementwise ops:
  `max(s*z) -> relu or min(., 0) per channel -> + t`.
- A convolution whose output channels are a multiple of 16 keeps onnxruntime's blocked
  (NCHWc) layout through the max-pool; 204 and 51 channels do not. The weights are
  padded with zero channels and the extra channels sliced off after pooling.

The result equals the converted graph up to float32 rounding (the scale is applied to the
weights before the sum instead of after it): the same outputs, names and any batch size.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

# onnxruntime's blocked layout packs channels in blocks of 8 (AVX2) or 16 (AVX-512).
CHANNEL_BLOCK = 16


def _consumers(graph) -> dict[str, list]:
    found: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


def _only_consumer(consumers: dict[str, list], tensor: str, op_type: str):
    users = consumers.get(tensor, [])
    if len(users) == 1 and users[0].op_type == op_type:
        return users[0]
    return None


def _front_end_chains(graph) -> list[tuple]:
    """Every Conv -> Relu -> BatchNormalization -> MaxPool chain whose middle tensors
    feed nothing else, with constant convolution and batch-norm parameters."""
    consumers = _consumers(graph)
    constants = {init.name for init in graph.initializer}
    outputs = {value.name for value in graph.output}
    chains = []
    for conv in graph.node:
        if conv.op_type != "Conv" or not set(conv.input[1:]) <= constants:
            continue
        relu = _only_consumer(consumers, conv.output[0], "Relu")
        norm = relu and _only_consumer(consumers, relu.output[0], "BatchNormalization")
        pool = norm and _only_consumer(consumers, norm.output[0], "MaxPool")
        if not pool or not set(norm.input[1:]) <= constants:
            continue
        if {conv.output[0], relu.output[0], norm.output[0]} & outputs:
            continue
        if any(a.name == "pads" and any(a.ints) for a in pool.attribute):
            continue  # a padded max-pool would see the padding before the shift by t
        chains.append((conv, relu, norm, pool))
    return chains


def _attribute(node, name: str, default):
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def rewrite_front_end(model: onnx.ModelProto, block: int = CHANNEL_BLOCK) -> onnx.ModelProto:
    """A copy of `model` with every Conv -> Relu -> BatchNorm -> MaxPool chain rewritten
    as described in the module docstring. A model with no such chain comes back as is."""
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    graph = rewritten.graph
    chains = _front_end_chains(graph)
    if not chains:
        return rewritten
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    replacement, dropped = {}, set()
    for chain in chains:
        nodes, constants = _rewritten_chain(*chain, values, block)
        replacement[id(chain[0])] = nodes
        dropped.update(id(node) for node in chain)
        graph.initializer.extend(numpy_helper.from_array(value, name)
                                 for name, value in constants.items())
    ordered = []
    for node in graph.node:
        if id(node) in replacement:
            ordered.extend(replacement[id(node)])
        elif id(node) not in dropped:
            ordered.append(node)
    del graph.node[:]
    graph.node.extend(ordered)
    _drop_unused_initializers(graph)
    onnx.checker.check_model(rewritten)
    return rewritten


def _rewritten_chain(conv, relu, norm, pool, values: dict[str, np.ndarray],
                     block: int) -> tuple[list, dict[str, np.ndarray]]:
    """The nodes and constants replacing one chain; the last node writes the pool's
    output tensor, so everything downstream is unchanged."""
    weight = values[conv.input[1]]
    channels = weight.shape[0]
    bias = values[conv.input[2]] if len(conv.input) > 2 else np.zeros(channels, np.float32)
    gamma, beta, mean, var = (values[name].astype(np.float64) for name in norm.input[1:5])
    scale = gamma / np.sqrt(var + _attribute(norm, "epsilon", 1e-5))
    per_channel = (channels, *[1] * (weight.ndim - 2))
    padded = -(-channels // block) * block
    kernel = np.zeros((padded, *weight.shape[1:]), np.float32)
    kernel[:channels] = weight * scale.reshape(-1, *[1] * (weight.ndim - 1))
    shifted_bias = np.zeros(padded, np.float32)
    shifted_bias[:channels] = bias * scale
    name = (conv.name or conv.output[0]) + "/"
    constants = {
        name + "kernel": kernel, name + "bias": shifted_bias,
        name + "shift": (beta - mean * scale).astype(np.float32).reshape(per_channel),
        name + "starts": np.array([0], np.int64), name + "ends": np.array([channels], np.int64),
        name + "axes": np.array([1], np.int64),
    }
    new_conv = helper.make_node("Conv", [conv.input[0], name + "kernel", name + "bias"],
                                [name + "scaled"], name=name + "scaled")
    new_conv.attribute.extend(conv.attribute)
    new_pool = helper.make_node("MaxPool", [name + "scaled"], [name + "pooled"],
                                name=name + "pooled")
    new_pool.attribute.extend(pool.attribute)
    nodes, pooled = [new_conv, new_pool], name + "pooled"
    if padded != channels:
        nodes.append(helper.make_node("Slice", [pooled, name + "starts", name + "ends",
                                                name + "axes"], [name + "sliced"],
                                      name=name + "sliced"))
        pooled = name + "sliced"
    nodes.append(helper.make_node("Relu", [pooled], [name + "relu"], name=name + "relu"))
    unshifted = name + "relu"
    positive = scale >= 0
    if not positive.all():
        # relu(y) where s >= 0, y - relu(y) = min(y, 0) where s < 0:
        # relu(y) * (2p - 1) + y * (1 - p), with p = 1 where s >= 0.
        constants[name + "sign"] = np.where(positive, 1, -1).astype(np.float32).reshape(
            per_channel)
        constants[name + "negative"] = np.where(positive, 0, 1).astype(np.float32).reshape(
            per_channel)
        nodes += [
            helper.make_node("Mul", [name + "relu", name + "sign"], [name + "signed"],
                             name=name + "signed"),
            helper.make_node("Mul", [pooled, name + "negative"], [name + "negative_part"],
                             name=name + "negative_part"),
            helper.make_node("Add", [name + "signed", name + "negative_part"],
                             [name + "unshifted"], name=name + "unshifted"),
        ]
        unshifted = name + "unshifted"
    nodes.append(helper.make_node("Add", [unshifted, name + "shift"], [pool.output[0]],
                                  name=name + "shifted"))
    return nodes, constants


def _drop_unused_initializers(graph) -> None:
    used = {name for node in graph.node for name in node.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
