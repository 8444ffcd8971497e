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


def make_not_songs(root, outside, good_song) -> dict[str, str]:
    """Entries with songs' names that are not songs inside the library `root`: a folder,
    a FIFO, a socket, a device (made when running as root: mknod needs it), a broken
    link, a link loop, links leading outside (to a FIFO, which would block whoever opens
    it, and to `good_song`, copied outside) and a folder link leading outside. `outside`
    is a folder outside root. Returns {relative path: the reason the walk gives}."""
    import os
    import shutil
    import socket
    import stat

    root, outside = os.fspath(root), os.fspath(outside)
    os.makedirs(os.path.join(root, "Skip"), exist_ok=True)
    os.makedirs(outside, exist_ok=True)
    made = {}

    def at(rel):
        return os.path.join(root, rel)

    os.mkdir(at("Skip/folder.mp3"))
    made["Skip/folder.mp3"] = "is a directory"
    os.mkfifo(at("Skip/pipe.wav"))
    made["Skip/pipe.wav"] = "a pipe (FIFO)"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(at("Skip/s.ogg"))  # a socket file stays after close
    sock.close()
    made["Skip/s.ogg"] = "a socket"
    if os.geteuid() == 0:
        os.mknod(at("Skip/dev.flac"), stat.S_IFCHR | 0o600, os.makedev(1, 3))
        made["Skip/dev.flac"] = "a device"
    os.symlink(at("Skip/gone-away.mp3"), at("Skip/broken.mp3"))
    made["Skip/broken.mp3"] = "broken symlink"
    os.symlink("loop.mp3", at("Skip/loop.mp3"))
    made["Skip/loop.mp3"] = "symlink loop"
    os.mkfifo(os.path.join(outside, "blocks-when-opened"))
    os.symlink(os.path.join(outside, "blocks-when-opened"), at("Skip/outside-fifo.mp3"))
    made["Skip/outside-fifo.mp3"] = "leads outside the library"
    shutil.copyfile(good_song, os.path.join(outside, "good.mp3"))
    os.symlink(os.path.join(outside, "good.mp3"), at("Skip/outside-song.mp3"))
    made["Skip/outside-song.mp3"] = "leads outside the library"
    os.makedirs(os.path.join(outside, "Other Drive"), exist_ok=True)
    shutil.copyfile(good_song, os.path.join(outside, "Other Drive", "song.mp3"))
    os.symlink(os.path.join(outside, "Other Drive"), at("Skip/Other Drive"))
    made["Skip/Other Drive"] = "leads outside the library"
    return made
