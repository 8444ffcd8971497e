"""The trainer: tagged library -> dataset -> the seed CNN -> evaluated, calibrated ONNX bundle.

Commands: `python -m trainer train|evaluate ...` (trainer.cli). Training needs the
[trainer] extra (tensorflow, tf2onnx, matplotlib, scikit-learn): `trainer.fit` and
`trainer.model` import TensorFlow, `trainer.export` only to convert a Keras model;
`trainer.cli`, `trainer.train`, `trainer.dataset` and `trainer.evaluate` import without it
(the daemon's nightly gate uses the last two), and the backbone's head and bundles
(`trainer.head`, `trainer.bundles`) need onnx, onnxruntime and scikit-learn only.
"""

from __future__ import annotations

from importlib import metadata

try:
    TRAINER_VERSION = metadata.version("genretagger")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    TRAINER_VERSION = "0+source"
