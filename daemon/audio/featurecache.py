"""The feature cache: each song's model input, stored once, found by its fingerprint.

Layout: root/<spec.key>/<fp[:2]>/<fp>.npy, float16 (half the disk, and the features are
in [0, 1] where float16 keeps ~3 decimal digits). A different FeatureSpec gets its own
folder, so a spec change never serves stale features. Writes are atomic (temp file +
rename), so a reader never sees half a file and a killed trainer leaves no debris that
counts as an entry.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from daemon.audio.features import FeatureSpec

log = logging.getLogger(__name__)


class FeatureCache:
    """Song features on disk keyed by (FeatureSpec, fingerprint)."""

    def __init__(self, root: Path | str, spec: FeatureSpec):
        self.root = Path(root)
        self.spec = spec
        self.folder = self.root / spec.key

    def path(self, fp: str) -> Path:
        """Where the entry for fingerprint `fp` lives (whether or not it exists)."""
        return self.folder / fp[:2] / f"{fp}.npy"

    def has(self, fp: str) -> bool:
        return self.path(fp).is_file()

    def get(self, fp: str) -> np.ndarray | None:
        """Fingerprint -> (clips, F, T, 1) float32, or None when absent or unreadable.

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
        if features.shape[1:] != tuple(self.spec.input_shape):
            log.warning("feature cache entry %s has shape %s; dropping it", path, features.shape)
            path.unlink(missing_ok=True)
            return None
        return features.astype(np.float32)

    def put(self, fp: str, features: np.ndarray) -> None:
        """Store (clips, F, T, 1) features for `fp` as float16, atomically."""
        if features.shape[1:] != tuple(self.spec.input_shape):
            raise ValueError(f"features of shape {features.shape} do not fit "
                             f"{self.spec.input_shape} for this cache's spec")
        path = self.path(fp)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{fp}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, features.astype(np.float16), allow_pickle=False)
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
