"""What the worker feeds the model: each song's input by feature kind, from the caches.

A model needs one or both feature kinds (`classifier.needs`: the CNN's clips, the
backbone's patches). Each kind has its own cache by fingerprint; a song may find one kind
cached and not the other, and only the missing kinds are decoded (one pass for all of
them, daemon.audio.decode.decode_song). Embeddings a model computes go to the embedding
cache, where "sounds like" and the head trainer read them.

Windows per song is the config's (`classifier.windows_per_song`): it replaces
clips_per_song in both specs, so the cache keys follow it and an entry of another window
count is never served.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from daemon.audio.featurecache import FeatureCache
from daemon.audio.features import (
    BACKBONE,
    BACKBONE_SPEC,
    CNN,
    DEFAULT_SPEC,
    EMBEDDING_SPEC,
    BackboneSpec,
    EmbeddingSpec,
    FeatureSpec,
)

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class WindowSpecs:
    """The specs the worker makes features by, with the config's windows per song."""

    cnn: FeatureSpec
    backbone: BackboneSpec

    @classmethod
    def for_windows(cls, windows: int, spec: FeatureSpec = DEFAULT_SPEC,
                    backbone_spec: BackboneSpec = BACKBONE_SPEC) -> WindowSpecs:
        return cls(dataclasses.replace(spec, clips_per_song=windows),
                   dataclasses.replace(backbone_spec, clips_per_song=windows))

    @property
    def windows(self) -> int:
        return self.cnn.clips_per_song

    def by_kind(self) -> dict[str, FeatureSpec | BackboneSpec]:
        return {CNN: self.cnn, BACKBONE: self.backbone}


class SongInputs:
    """The feature caches by kind plus the embedding cache, all under one root."""

    def __init__(self, root: Path | str, specs: WindowSpecs,
                 embedding_spec: EmbeddingSpec = EMBEDDING_SPEC):
        self.specs = specs
        self.caches = {kind: FeatureCache(root, spec) for kind, spec in specs.by_kind().items()}
        self.embeddings = FeatureCache(root, embedding_spec)

    def cache(self, kind: str, on_embeddings: bool = False) -> FeatureCache:
        """The cache of `kind`'s inputs; the backbone's is the embedding cache for a
        model that takes per-patch embeddings (its backbone run in the decoders)."""
        return self.embeddings if on_embeddings and kind == BACKBONE else self.caches[kind]

    def cached(self, fp: str, kinds: Iterable[str], on_embeddings: bool = False
               ) -> dict[str, np.ndarray]:
        """{kind: input} of the `kinds` found cached for fingerprint `fp`."""
        found = {}
        for kind in kinds:
            value = self.cache(kind, on_embeddings).get(fp)
            if value is not None:
                found[kind] = value
        return found

    def store(self, fp: str, by_kind: dict[str, np.ndarray], name: str,
              on_embeddings: bool = False) -> None:
        """Cache freshly extracted inputs; a full disk costs a re-decode later, no more."""
        for kind, value in by_kind.items():
            try:
                self.cache(kind, on_embeddings).put(fp, value)
            except (OSError, ValueError) as err:
                log.warning("feature cache (%s): cannot store %s: %s", kind, name, err)

    def link(self, old_fp: str, new_fp: str) -> None:
        """Make `new_fp` serve `old_fp`'s entries in every cache (our tag write changed
        the file's bytes, not its audio)."""
        for cache in (*self.caches.values(), self.embeddings):
            cache.link(old_fp, new_fp)

    def keep_embeddings(self, songs: list[tuple[str | None, str]],
                        embeddings: list[np.ndarray] | None) -> list[np.ndarray | None]:
        """The model's per-patch embeddings of `songs` ((fingerprint, name) pairs) to the
        embedding cache (unless there already); returns each song's mean embedding, None
        where it has none (no fingerprint, or the model embeds nothing: `embeddings` None)."""
        if embeddings is None:
            return [None] * len(songs)
        means: list[np.ndarray | None] = []
        for (fp, name), per_patch in zip(songs, embeddings, strict=True):
            if not fp or not len(per_patch):
                means.append(None)
                continue
            means.append(per_patch.mean(axis=0))
            try:
                if not self.embeddings.has(fp):
                    self.embeddings.put(fp, per_patch)
            except (OSError, ValueError) as err:
                log.warning("embedding cache: cannot store %s: %s", name, err)
        return means
