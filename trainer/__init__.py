"""The trainer: tagged library -> dataset -> the seed CNN -> evaluated, calibrated ONNX bundle.

Needs the [trainer] extra (tensorflow, tf2onnx, matplotlib) for `trainer.train`,
`trainer.fit`, `trainer.model`, `trainer.export`. `trainer.dataset` and
`trainer.evaluate` import without TensorFlow (the daemon's nightly gate uses them).
"""

from __future__ import annotations

from importlib import metadata

try:
    TRAINER_VERSION = metadata.version("genretagger")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    TRAINER_VERSION = "0+source"
