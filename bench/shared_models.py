"""Models shared through PostgreSQL: what storing a bundle and rebuilding a host's copy of it
cost, against copying the same folder on local disk, in one run.

    .venv/bin/python bench/shared_models.py [--megabytes 20] [--rounds 3]

A throwaway PostgreSQL server (tests/pgcluster.py, Unix socket only, stopped afterwards);
a real bundle (tests/helpers.genre_bundle) with a model.keras of random bytes beside it,
so the folder weighs about `--megabytes` as a bundle with the backbone does. Measured:
  local copy   shutil.copytree of the folder (the baseline)
  store        registry.register_bundle on PostgreSQL: the folder copied into models_dir,
               loaded, and its files sent to the database in 1 MB rows
  fetch        local_bundle into an empty state dir: rows streamed, hashed, fsynced,
               renamed into place (the first use on a new host)
  check        local_bundle again with the copy in place (every later use: sizes and a
               hash memo)
Python's peak allocation during a fetch (tracemalloc) shows that no whole bundle is held
in memory. Figures and ratios, not pass/fail; the machine may be shared.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "tests"))  # pgcluster, helpers: the tests' server and bundle


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    from helpers import genre_bundle
    from pgcluster import Cluster

    from daemon.core.config import parse_config
    from daemon.core.db.engine import open_database
    from daemon.learn import registry
    from daemon.suggest.stored_bundles import local_bundle

    base = Path(tempfile.mkdtemp(prefix="bench-shared-models-"))
    cluster = Cluster().start()
    try:
        bundle = genre_bundle(base / "run", ("Classical", "Hip-Hop", "Metal"), "Metal")
        (bundle / "model.keras").write_bytes(os.urandom(int(args.megabytes * 1e6)))
        size = sum(p.stat().st_size for p in bundle.iterdir()) / 1e6
        (base / "library").mkdir()
        url = cluster.new_database()
        engine, sessions = open_database(url)

        def config(name: str):
            return parse_config({"library": {"root": str(base / "library")},
                                 "state_dir": str(base / name), "database_url": url}, "bench")

        leader = config("leader")
        copies, stores, fetches, checks, peaks = [], [], [], [], []
        for i in range(args.rounds):
            copies.append(timed(lambda i=i: shutil.copytree(bundle, base / f"copy{i}")))
            started = time.perf_counter()
            model = registry.register_bundle(sessions, leader, bundle)
            stores.append(time.perf_counter() - started)
            other = config(f"host{i}")
            tracemalloc.start()
            fetches.append(timed(lambda o=other, m=model: local_bundle(sessions, o, m)))
            peaks.append(tracemalloc.get_traced_memory()[1] / 1e6)
            tracemalloc.stop()
            checks.append(timed(lambda o=other, m=model: local_bundle(sessions, o, m)))
        engine.dispose()
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)

    load = os.getloadavg()[0]
    copy = statistics.median(copies)
    print(f"bundle {size:.1f} MB, {args.rounds} rounds, medians (load {load:.1f} on "
          f"{os.cpu_count()} cores)")
    print(f"  local copy  {copy * 1000:8.1f} ms   1.0x")
    for name, values in (("store", stores), ("fetch", fetches), ("check", checks)):
        value = statistics.median(values)
        print(f"  {name:<10}  {value * 1000:8.1f} ms  {value / copy:5.1f}x")
    print(f"  fetch's peak Python allocation: {max(peaks):.1f} MB for a {size:.1f} MB bundle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
