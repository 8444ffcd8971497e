"""How many threads numpy's linear algebra (OpenBLAS and the like) may use in a process.

OpenBLAS starts one thread per core and keeps them spinning for a while after each call.
In a decoder child (the children are already one per core) and beside onnxruntime in the
service, those threads only take the cores from the work that counts: in a decoder that
runs the backbone, the log-mel's matrix product took 19 ms a song instead of 2, and the
backbone 186 ms instead of 147 (tests/audio/test_extract.py watches a child's threads;
bench/daemon.py prints the CPU a song costs). So each process
states its own count: one in a child, `classifier.threads` in the service.
"""

from __future__ import annotations

from threadpoolctl import threadpool_limits


def limit_math_threads(threads: int) -> None:
    """At most `threads` threads for every BLAS and OpenMP library loaded in this process,
    from now on (libraries loaded later keep their own defaults)."""
    threadpool_limits(limits=max(1, int(threads)))
