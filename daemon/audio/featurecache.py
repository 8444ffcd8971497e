"""The feature cache: each song's model input, stored once, found by its fingerprint.

One cache per spec -- any spec with a `.key` and a per-window `.input_shape`: the CNN's
FeatureSpec (clips, F, T, 1), the backbone's BackboneSpec (patches, frames, mel bands),
the backbone embedding's EmbeddingSpec (patches, dim). Layout:
root/<spec.key>/<fp[:2]>/<fp>.npy, an entry of shape (windows, *spec.input_shape).
Features are stored as float16 (half the disk; the CNN's are in [0, 1] and the
backbone's log mel bands within 0..~10, where float16 keeps ~3 significant digits);
embeddings as float32 (800 bytes a patch, and "sounds like" and the head trainer want
them as the backbone gave them). A different spec gets its own folder, so a spec
change (a window count too) never serves stale features. Writes are atomic (temp file +
rename), so a reader never sees half a file and a killed trainer leaves no debris that
counts as an entry.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Protocol

import numpy as np

from daemon.audio.features import EmbeddingSpec

log = logging.getLogger(__name__)


class CachedSpec(Protocol):
    """What a cache needs of a spec: a stable key and the shape of one window's entry."""

    @property
    def key(self) -> str: ...

    @property
    def input_shape(self) -> tuple[int, ...]: ...


class FeatureCache:
    """Song features (or embeddings) on disk keyed by (spec, fingerprint)."""

    def __init__(self, root: Path | str, spec: CachedSpec):
        self.root = Path(root)
        self.spec = spec
        self.folder = self.root / spec.key
        self.stored = np.float32 if isinstance(spec, EmbeddingSpec) else np.float16

    def fits(self, array: np.ndarray) -> bool:
        """The array is (windows >= 1, *spec.input_shape)."""
        return (array.ndim == 1 + len(self.spec.input_shape) and len(array) > 0
                and array.shape[1:] == tuple(self.spec.input_shape))

    def path(self, fp: str) -> Path:
        """Where the entry for fingerprint `fp` lives (whether or not it exists)."""
        return self.folder / fp[:2] / f"{fp}.npy"

    def has(self, fp: str) -> bool:
        return self.path(fp).is_file()

    def get(self, fp: str) -> np.ndarray | None:
        """Fingerprint -> (windows, *spec.input_shape) float32, or None when absent or
        unreadable.

        An unreadable or wrongly shaped entry (disk trouble, a foreign file) is removed
        and reported as absent, so the song is simply decoded again.
        """
        path = self.path(fp)
        try:
            features = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            log.warning("feature cache entry %s unreadable (%s); dropping it", path, err)
            path.unlink(missing_ok=True)
            return None
        if not self.fits(features):
            log.warning("feature cache entry %s has shape %s; dropping it", path, features.shape)
            path.unlink(missing_ok=True)
            return None
        return features.astype(np.float32)

    def put(self, fp: str, features: np.ndarray) -> None:
        """Store (windows, *spec.input_shape) features for `fp`, atomically. Raises
        ValueError for another shape."""
        features = np.asarray(features)
        if not self.fits(features):
            raise ValueError(f"features of shape {features.shape} do not fit "
                             f"(windows, {', '.join(map(str, self.spec.input_shape))}) "
                             f"for this cache's spec")
        path = self.path(fp)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{fp}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, features.astype(self.stored), allow_pickle=False)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def link(self, old_fp: str, new_fp: str) -> bool:
        """Make `new_fp` serve `old_fp`'s features (our tag write changed bytes, not audio).

        Hard link when the filesystem allows, else a copy. Returns False when there is
        nothing under `old_fp` to link.
        """
        if old_fp == new_fp:
            return self.has(old_fp)
        source, target = self.path(old_fp), self.path(new_fp)
        if not source.is_file():
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{new_fp}.link.tmp")
        tmp.unlink(missing_ok=True)
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
        return True
