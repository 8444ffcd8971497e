"""The trainer: tagged library -> dataset -> the seed CNN -> evaluated, calibrated ONNX bundle.

Commands: `python -m trainer train|evaluate ...` (trainer.cli). Training needs the
[trainer] extra (tensorflow, tf2onnx, matplotlib): `trainer.fit`, `trainer.model` and
`trainer.export` import TensorFlow; `trainer.cli`, `trainer.train`, `trainer.dataset` and
`trainer.evaluate` import without it (the daemon's nightly gate uses the last two).
"""

from __future__ import annotations

from importlib import metadata

try:
    TRAINER_VERSION = metadata.version("genretagger")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    TRAINER_VERSION = "0+source"
