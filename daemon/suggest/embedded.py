"""A bundle run on songs' cached per-patch embeddings instead of their patches.

The backbone is the costly part of every bundle that carries it (tens of ms a patch, the
head and the CNN a fraction of that). Each song's per-patch embedding is cached by
fingerprint once (EMBEDDING_SPEC: the worker stores what a bundle's embedding output
gave, the trainer what backbone.onnx gave), so whatever evaluates a bundle on songs the
station has already heard -- the nightly judging, the gate, re-scoring -- takes the
embeddings through the rest of the bundle: its own graph cut at the embedding output,
the same float32 operations from there on, never the backbone again.

The cut bundle is a Classifier whose "backbone" windows are per-patch embeddings
(patches, dim) rather than log-mel patches (a cnn bundle's cut is its CNN alone);
`member_caches` says which cache feeds each kind. A bundle whose members do not all go
through its embedding output (the cold start maps the backbone's tag output) is run as
it is, on patches.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path

from daemon.audio.featurecache import FeatureCache
from daemon.audio.features import (
    BACKBONE,
    BACKBONE_SPEC,
    DEFAULT_SPEC,
    EMBEDDING_SPEC,
    BackboneSpec,
    FeatureSpec,
)
from daemon.core.errors import ModelMismatch
from daemon.suggest.bundle import Bundle, decode, describe
from daemon.suggest.classifier import Classifier, _session

# Cut backbone graphs kept in cache_dir/backbones (~3 MB each): the newest few, which
# covers the active bundle, a candidate and a rollback or two. One used within the last
# day is never removed: another process may be about to open it. A pruned graph is cut
# again, in about a second, when its bundle comes back.
KEEP_GRAPHS = 4
GRAPH_IN_USE_SECONDS = 24 * 3600

log = logging.getLogger(__name__)


class EmbeddedClassifier(Classifier):
    """A bundle's graph from its embedding output on: `predict` takes {"backbone":
    (patches, dim) per-patch embeddings, "cnn": clips (the ensemble's other member)}."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._shapes = {**self._shapes, BACKBONE: EMBEDDING_SPEC.input_shape}


def load_on_embeddings(path: Path | str, spec: FeatureSpec = DEFAULT_SPEC,
                       backbone_spec: BackboneSpec = BACKBONE_SPEC,
                       threads: int = 1) -> Classifier:
    """The bundle at `path` cut at its embedding output, as an EmbeddedClassifier (the
    backbone never loaded: a cnn bundle keeps only its CNN); a bundle without the
    backbone, or with a member that does not go through its embedding output:
    Classifier.load as it is. Raises ModelMismatch as Classifier.load does."""
    import onnx

    path = Path(path)
    try:
        model = onnx.load(str(path))
    except Exception as err:  # onnx raises DecodeError, OSError, ... for a bad file
        raise ModelMismatch(f"{path}: not an ONNX model bundle ({err})") from None
    stored = {t.name for t in model.graph.initializer}
    metadata = decode({p.key: p.value for p in model.metadata_props})
    bundle = describe(path, metadata,
                      [i.name for i in model.graph.input if i.name not in stored],
                      [o.name for o in model.graph.output], spec, backbone_spec)
    cut = _cut(path, model, bundle)
    if cut is None:
        return Classifier.load(path, spec, backbone_spec, threads)
    data = cut.SerializeToString()
    inputs = {kind: name for kind, name in bundle.inputs.items()
              if kind != BACKBONE and kind in bundle.member_needs}
    if BACKBONE in bundle.member_needs:
        inputs[BACKBONE] = bundle.embedding.output
    return EmbeddedClassifier(
        _session(data, path, threads), path, metadata,
        dataclasses.replace(bundle, embedding=None, inputs=inputs),
        spec, backbone_spec, hashlib.sha256(data).hexdigest(), spec.clips_per_song)


def load_split(path: Path | str, cache_dir: Path | str, spec: FeatureSpec = DEFAULT_SPEC,
               backbone_spec: BackboneSpec = BACKBONE_SPEC, threads: int = 1
               ) -> tuple[EmbeddedClassifier, Path] | None:
    """A bundle with the backbone (a member takes it, or only "sounds like" does: a cnn
    bundle's embedding), split where the decoder children can run its backbone: (the
    bundle on embeddings, the backbone graph file under `cache_dir`: `backbone_graph`).
    None for a bundle without the backbone or that cannot be cut (run whole, as it is).
    Raises ModelMismatch as Classifier.load does."""
    classifier = load_on_embeddings(path, spec, backbone_spec, threads)
    if not isinstance(classifier, EmbeddedClassifier):
        return None
    return classifier, backbone_graph(path, cache_dir, spec, backbone_spec)


def backbone_graph(path: Path | str, cache_dir: Path | str,
                   spec: FeatureSpec = DEFAULT_SPEC,
                   backbone_spec: BackboneSpec = BACKBONE_SPEC) -> Path:
    """The bundle's own backbone, its patches input to its embedding output, as an ONNX
    file under `cache_dir`/backbones named by the bundle's sha256 (cut once per bundle).
    Raises ModelMismatch for a bundle without an embedding output."""
    import onnx

    path = Path(path)
    data = path.read_bytes()
    graph = Path(cache_dir) / "backbones" / f"{hashlib.sha256(data).hexdigest()}.onnx"
    if graph.is_file():
        os.utime(graph)  # in use: the newest are the ones kept
        return graph
    model = onnx.load_from_string(data)
    stored = {t.name for t in model.graph.initializer}
    bundle = describe(path, decode({p.key: p.value for p in model.metadata_props}),
                      [i.name for i in model.graph.input if i.name not in stored],
                      [o.name for o in model.graph.output], spec, backbone_spec)
    if bundle.embedding is None or BACKBONE not in bundle.inputs:
        raise ModelMismatch(f"{path}: no backbone to run apart (no embedding output)")
    cut = onnx.utils.Extractor(model).extract_model([bundle.inputs[BACKBONE]],
                                                    [bundle.embedding.output])
    graph.parent.mkdir(parents=True, exist_ok=True)
    part = graph.with_suffix(f".{os.getpid()}.part")
    part.write_bytes(cut.SerializeToString())
    os.replace(part, graph)  # a child never opens half a file
    prune_graphs(graph.parent)
    return graph


def prune_graphs(folder: Path, keep: int = KEEP_GRAPHS) -> list[Path]:
    """Delete the cut graphs in `folder` beyond the `keep` most recently used, except any
    used within GRAPH_IN_USE_SECONDS. Returns the deleted files."""
    graphs = []
    for path in folder.glob("*.onnx"):
        try:
            graphs.append((path.stat().st_mtime, path))
        except FileNotFoundError:  # pruned by another process meanwhile
            continue
    graphs.sort(reverse=True)
    cutoff = time.time() - GRAPH_IN_USE_SECONDS
    deleted = []
    for used, path in graphs[keep:]:
        if used < cutoff:
            path.unlink(missing_ok=True)
            deleted.append(path)
    if deleted:
        log.info("removed %d backbone graph(s) of bundles no longer used from %s",
                 len(deleted), folder)
    return deleted


def _cut(path: Path, model, bundle: Bundle):
    """The bundle's graph from its members' inputs, the embedding output in place of the
    patches, to its members' outputs; None without an embedding output or when that is
    not the whole of the members."""
    import onnx

    if bundle.embedding is None:
        return None
    patches, embedding = bundle.inputs[BACKBONE], bundle.embedding.output
    inputs = [name for kind, name in bundle.inputs.items()
              if kind != BACKBONE and kind in bundle.member_needs]
    if BACKBONE in bundle.member_needs:
        inputs.append(embedding)
    outputs = list(dict.fromkeys(m.output for m in bundle.members))
    try:
        cut = onnx.utils.Extractor(model).extract_model(inputs, outputs)
    except Exception as err:  # onnx raises plain Exceptions for an uncuttable graph
        log.info("%s cannot be cut at %s (%s); run on patches", path.name, embedding, err)
        return None
    if any(patches in node.input for node in cut.graph.node):
        log.info("%s: a member does not go through %s; run on patches", path.name, embedding)
        return None
    return cut


def member_caches(classifier: Classifier, caches: Mapping[str, FeatureCache],
                  embeddings: FeatureCache) -> dict[str, FeatureCache]:
    """Kind -> the cache each of `classifier`'s members takes its windows from: the
    embedding cache for an EmbeddedClassifier's backbone member, else `caches[kind]`.
    A kind with no cache in `caches` is left out (its songs then have no features)."""
    found = {}
    for kind in classifier.bundle.member_needs:
        if kind == BACKBONE and isinstance(classifier, EmbeddedClassifier):
            found[kind] = embeddings
        elif kind in caches:
            found[kind] = caches[kind]
    return found


def cached_features(fingerprint: str, caches: Mapping[str, FeatureCache]
                    ) -> dict[str, object] | None:
    """{kind: cached windows} for every cache in `caches` (member_caches), or None when
    any of them lacks the song."""
    found = {}
    for kind, cache in caches.items():
        value = cache.get(fingerprint) if fingerprint else None
        if value is None:
            return None
        found[kind] = value
    return found
