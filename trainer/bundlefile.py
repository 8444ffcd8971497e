"""The bundle file itself, without TensorFlow: metadata_props encoding, the atomic write,
and the error for a graph onnxruntime does not reproduce. trainer.export (Keras -> ONNX)
and the TF-free builders (trainer.coldstart, trainer.backbone) share them.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import onnx

from daemon.core.errors import GenretaggerError


class ParityError(GenretaggerError):
    """onnxruntime and the reference disagree on the same inputs: the export is not trusted."""


def metadata_props(metadata: dict) -> dict[str, str]:
    """Bundle metadata -> string props (non-strings JSON-encoded, as read_metadata decodes)."""
    return {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True)
            for k, v in metadata.items()}


def write_model(proto: onnx.ModelProto, path: Path) -> None:
    """Write an ONNX model to `path` atomically: a temp file beside it, fsync, rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(proto.SerializeToString())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
