""""Sounds like" at station size: Neighbours build time, refresh cost and memory at 15,000
reference songs, and the time of one nearest() query.

    .venv/bin/python bench/neighbours.py [--songs 15000] [--seeds 12]

The embeddings are real but few: --seeds synthesised songs of each demo genre run through
the converted musicnn backbone (needs `make backbone`), then TILED to --songs entries,
each tile perturbed by Gaussian noise of 5% of the embedding's spread per value (so no two
references are equal). They are written to a real embedding cache (float16 .npy per
song, as the worker writes them) and the labels to a real SQLite file. Measured:

  - first refresh: the labelled-tracks query + reading every cache entry (cold build);
  - a refresh with nothing changed (what the component does every minute);
  - a refresh after 50 new labels;
  - nearest(k=3) per query, and its ratio to the cold build;
  - memory: the matrix bytes, and the Python heap Neighbours holds (tracemalloc).

Figures, not a pass/fail test.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daemon.audio.featurecache import FeatureCache  # noqa: E402
from daemon.audio.features import (  # noqa: E402
    BACKBONE_SPEC,
    EMBEDDING_SPEC,
    backbone_patches,
    clip_starts,
)
from daemon.cli.demo import VOICES, synthesize  # noqa: E402
from daemon.core.db.engine import open_database  # noqa: E402
from daemon.core.db.models import Track  # noqa: E402
from daemon.core.states import TrackState  # noqa: E402
from daemon.suggest.neighbours import Neighbours  # noqa: E402


def real_embeddings(seeds: int) -> list[tuple[str, np.ndarray]]:
    """(genre, per-patch embedding) of `seeds` synthesised 12-s songs per demo genre."""
    import onnxruntime as ort

    from daemon.learn.backbone_file import default_dir

    session = ort.InferenceSession(str(default_dir() / "backbone.onnx"),
                                   providers=["CPUExecutionProvider"])
    spec, sr = BACKBONE_SPEC, BACKBONE_SPEC.sample_rate
    out = []
    for genre in VOICES:
        for seed in range(seeds):
            audio = synthesize(genre, 12.0, sr, seed, channels=1)[:, 0]
            starts = [int(s * sr) for s in clip_starts(len(audio) / sr, spec)]
            windows = np.stack([audio[s:s + spec.patch_samples] for s in starts])
            out.append((genre, session.run(["penultimate"],
                                           {"patches": backbone_patches(windows)})[0]))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--songs", type=int, default=15_000)
    parser.add_argument("--seeds", type=int, default=12)
    args = parser.parse_args()
    started = time.perf_counter()
    base = real_embeddings(args.seeds)
    print(f"{len(base)} real embeddings ({args.seeds} songs x {len(VOICES)} genres) in "
          f"{time.perf_counter() - started:.1f} s; tiled to {args.songs} references")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="bench-neighbours-") as tmp:
        cache = FeatureCache(Path(tmp) / "features", EMBEDDING_SPEC)
        engine, sessions = open_database(f"sqlite:///{tmp}/genretagger.db")
        rows = []
        for i in range(args.songs + 50):
            genre, embedding = base[i % len(base)]
            noisy = embedding + rng.normal(0, 0.05 * embedding.std(), embedding.shape)
            fp = f"{i:064x}"
            cache.put(fp, noisy.astype(np.float32))
            rows.append(dict(path=f"{genre}/{i:05d} some artist - some title.mp3", size=1,
                             mtime=1.0, fingerprint=fp, state=TrackState.TAGGED,
                             canonical_genre=genre if i < args.songs else None))
        with sessions() as session, session.begin():
            session.bulk_insert_mappings(Track, rows)
        # Cache folders written just now count as "still changing" for 2 s.
        time.sleep(2.1)

        tracemalloc.start()
        neighbours = Neighbours(Path(tmp) / "features")
        t0 = time.perf_counter()
        first = neighbours.refresh(sessions)
        build = time.perf_counter() - t0
        heap, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        t0 = time.perf_counter()
        idle = neighbours.refresh(sessions)
        idle_s = time.perf_counter() - t0
        with sessions() as session, session.begin():
            for track in session.query(Track).filter(Track.canonical_genre.is_(None)):
                track.confirmed_genre = "Jazz"
        t0 = time.perf_counter()
        more = neighbours.refresh(sessions)
        more_s = time.perf_counter() - t0
        queries = [e for _, e in base[:50]]
        t0 = time.perf_counter()
        for q in queries:
            neighbours.nearest(q, k=3)
        query_s = (time.perf_counter() - t0) / len(queries)
        engine.dispose()

    print(f"cold build (refresh #1): {build:.2f} s for {first['songs']} songs "
          f"({1e6 * build / max(1, first['songs']):.0f} us per song)")
    print(f"refresh, nothing changed: {1000 * idle_s:.1f} ms "
          f"({idle_s / build:.3f} x the cold build); counts {idle}")
    print(f"refresh after 50 new labels: {1000 * more_s:.1f} ms; added {more['added']}")
    print(f"nearest(k=3): {1000 * query_s:.2f} ms per query "
          f"({query_s / build:.5f} x the cold build)")
    print(f"memory: matrix {neighbours.matrix_bytes / 2**20:.1f} MiB (float32, "
          f"{len(neighbours)} rows used of {neighbours.matrix_bytes // (4 * 200)}); "
          f"Python heap held after the build {heap / 2**20:.1f} MiB "
          f"({heap / max(1, len(neighbours)):.0f} bytes per song)")
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
