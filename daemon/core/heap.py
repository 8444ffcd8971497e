"""Keep the daemon's heap from holding on to memory it no longer uses (glibc only).

The daemon's large buffers are short-lived: a batch of features (~250 KB a song) and
onnxruntime's activations (~2.5 MB a clip). glibc serves them from its heap once they
pass its dynamic mmap threshold, and a freed heap chunk under a live one cannot go back
to the OS: after a backfill the daemon held 80-150 MB it never used again. Two levers:

    bound_heap()           buffers over 1 MB get their own mapping, returned when freed
                           (classification ~25% slower; it is far from the bottleneck)
    release_free_memory()  malloc_trim(0) once a burst of work ends

On a C library without these functions both are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # mallopt parameter number (malloc.h)
MMAP_THRESHOLD_BYTES = 1 << 20


def _libc():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


_LIBC = _libc()


def bound_heap() -> bool:
    """Serve allocations over 1 MB from their own mappings in this process: the daemon's
    own, and each decoder child (whose backbone runs in onnxruntime's arena instead)."""
    mallopt = getattr(_LIBC, "mallopt", None)
    if mallopt is None:
        return False
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    if not ok:
        log.debug("mallopt(M_MMAP_THRESHOLD) refused; heap left as it is")
    return ok


def release_free_memory() -> None:
    """Hand freed heap back to the OS (after a backfill, a retraining swap, ...)."""
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)
