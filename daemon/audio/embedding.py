"""The backbone run where the song was decoded: patches -> per-patch embeddings.

The backbone is the costly part of a backbone or ensemble bundle (tens of ms a patch).
Run in the decoder children, each child decodes and embeds its own songs, so every core
the station gives the decoders is busy with both and the service process only runs the
small rest of the bundle on the embeddings (daemon.suggest.embedded). A crash, hang or
memory blow in onnxruntime is then the child's, and becomes that one file's typed error
like a decoder's.

The graph is the bundle's own backbone, cut out of it once per bundle by the service
(daemon.suggest.embedded.backbone_graph); a child opens it on its first song (one
intra-op thread: the children are the parallelism) and keeps that one session for the
songs after, until it is asked for another file.
"""

from __future__ import annotations

import os

import numpy as np

# Patches per onnxruntime run: each in flight costs ~15 MB of activations, and on one
# thread a bigger batch is no faster (28.8 ms a patch alone, 28.7 in twos).
PATCHES_PER_RUN = 1

_open: dict[str, tuple[object, str, str]] = {}  # graph file -> (session, input, output)


def cpu_session(model: bytes | str, threads: int, arena: bool):
    """An onnxruntime session on the CPU as the daemon runs every model: `threads`
    intra-op threads, one run at a time, warnings and worse logged; `arena`:
    onnxruntime's memory arena, which keeps the peak of the largest run for reuse."""
    import onnxruntime as ort  # lazy: ~0.4 s, paid only by what runs a model

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    options.enable_cpu_mem_arena = arena
    return ort.InferenceSession(model, sess_options=options,
                                providers=["CPUExecutionProvider"])


def _session(graph: str) -> tuple[object, str, str]:
    if graph not in _open:
        # The activations come from onnxruntime's arena, reused patch after patch: fresh
        # mappings (the child's bound heap) would be zeroed by the kernel for every patch,
        # ~50 ms of a song's ~300, where the arena holds ~15 MB between songs.
        session = cpu_session(graph, threads=1, arena=True)
        _open.clear()  # one bundle at a time: the old session's memory goes
        _open[graph] = (session, session.get_inputs()[0].name,
                        session.get_outputs()[0].name)
    return _open[graph]


def embed(graph: str | os.PathLike, patches: np.ndarray) -> np.ndarray:
    """(patches, frames, mel bands) float32 -> (patches, dim) float32 per-patch embeddings
    by the backbone graph at `graph`."""
    session, name, output = _session(os.fspath(graph))
    patches = np.asarray(patches, dtype=np.float32)
    parts = [session.run([output], {name: patches[i:i + PATCHES_PER_RUN]})[0]
             for i in range(0, len(patches), PATCHES_PER_RUN)]
    return np.concatenate(parts).astype(np.float32, copy=False)
