"""Keep the daemon's heap from holding on to memory it no longer uses (glibc only).

The daemon's large buffers are short-lived: a batch of features (~250 KB a song) and
onnxruntime's activations (~2.5 MB a clip). glibc serves them from its heap once they
pass its dynamic mmap threshold, and a freed heap chunk under a live one cannot go back
to the OS: after a backfill the daemon held 80-150 MB it never used again. Two levers:

    bound_heap()           buffers over 1 MB get their own mapping, returned when freed
                           (classification ~25% slower; it is far from the bottleneck)
    release_free_memory()  malloc_trim(0) once a burst of work ends

A decoder child is the other way round: it does the same costly job song after song, so
`steady_heap()` keeps one song's buffers on its heap for the next.

On a C library without these functions both are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 1 << 20
# A decoder child's buffers (the backbone's activations are ~9 MB each) stay on its heap;
# a bigger one (a 150 MB cover picture) still gets its own mapping, returned when freed.
STEADY_MMAP_BYTES = 32 << 20
STEADY_TRIM_BYTES = 64 << 20


def _libc():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


_LIBC = _libc()


def bound_heap() -> bool:
    """Serve allocations over 1 MB from their own mappings in this process. Call it in the
    daemon's own process only (decoder children use steady_heap)."""
    mallopt = getattr(_LIBC, "mallopt", None)
    if mallopt is None:
        return False
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    if not ok:
        log.debug("mallopt(M_MMAP_THRESHOLD) refused; heap left as it is")
    return ok


def steady_heap() -> bool:
    """Keep buffers up to 32 MB on this process's heap, and up to 64 MB of it free for the
    next job, instead of fresh mappings the kernel has to zero every time: in a decoder
    child running the backbone that zeroing took ~60 ms of a song's ~330 (bench/daemon.py),
    for ~10 MB more held between songs. Also fixes glibc's threshold, whose drift (up to
    the largest buffer freed) otherwise lets the heap fragment and grow song by song."""
    mallopt = getattr(_LIBC, "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, STEADY_MMAP_BYTES)
                and mallopt(M_TRIM_THRESHOLD, STEADY_TRIM_BYTES))


def release_free_memory() -> None:
    """Hand freed heap back to the OS (after a backfill, a retraining swap, ...)."""
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)
