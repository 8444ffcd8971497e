"""The daemon never loads TensorFlow, Keras or tf2onnx: import every daemon module and look."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import importlib, pkgutil, sys
import daemon
names = [m.name for m in pkgutil.walk_packages(daemon.__path__, "daemon.")]
for name in names:
    importlib.import_module(name)
# The parts of the trainer the daemon uses (the nightly gate) must not load it either.
importlib.import_module("trainer.evaluate")
importlib.import_module("trainer.dataset")
loaded = sorted(m for m in sys.modules
                if m.split(".")[0] in ("tensorflow", "keras", "tf2onnx", "tf_keras"))
print(len(names), loaded[:5])
sys.exit(1 if loaded else 0)
"""


def test_no_daemon_module_imports_tensorflow():
    run = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    count = int(run.stdout.split()[0])
    assert count >= 10  # the walk really found the daemon's modules
