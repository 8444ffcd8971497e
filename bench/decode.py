"""Decode + features throughput: seeking clip windows vs the naive full decode.

    .venv/bin/python bench/decode.py [--songs-per-format 13] [--naive-per-format 2]

Generates (once; cached in bench/out/decode-library/) a library of 3-7 minute songs in
every format: a few masters per format encoded by the real encoders, linked under new
names. Then, in the same run, measures songs/s of
  - seek:  daemon.audio.jobs.extract (read_clips: seek + decode 5 x 1 s windows, + features),
           in this process;
  - pool:  the same through ExtractPool with --processes children;
  - naive: librosa.load of the whole file at 22,050 Hz, then the same clips and features,
           on a sample of each format;
and prints songs/s per format and the ratio seek/naive. Figures, not a pass/fail test; the
machine may be shared, so the load average is printed too.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daemon.audio.extract import ExtractPool  # noqa: E402
from daemon.audio.features import DEFAULT_SPEC, clip_starts, song_features  # noqa: E402
from daemon.audio.jobs import Extracted, extract  # noqa: E402
from daemon.cli.demo import VOICES, encode_masters  # noqa: E402

LIBRARY = Path(__file__).resolve().parent / "out" / "decode-library"


def build_library(root: Path, songs_per_format: int, masters_per_format: int,
                  seed: int = 7) -> list[Path]:
    """Masters per format (3-7 min, 44.1 kHz stereo; Opus 48 kHz), then links to them
    under new names until each format has songs_per_format songs. Cached."""
    genres = list(VOICES)
    masters_dir, songs_dir = root / "masters", root / "songs"
    masters_dir.mkdir(parents=True, exist_ok=True)
    songs_dir.mkdir(parents=True, exist_ok=True)
    songs = []
    by_format = encode_masters(masters_dir, masters_per_format, genres, 44_100, seed)
    for ext, masters in by_format.items():
        for i in range(songs_per_format):
            song = songs_dir / f"Song {i + 1:03d}{ext}"
            if not song.exists():
                try:
                    os.link(masters[i % len(masters)], song)
                except OSError:  # a filesystem without hard links: copy
                    song.write_bytes(masters[i % len(masters)].read_bytes())
            songs.append(song)
    return songs


def naive_extract(path: Path) -> np.ndarray:
    """The baseline: librosa.load of the whole file, then the same clips and features."""
    import librosa

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # audioread fallback for M4A/WMA warns
        samples, sr = librosa.load(path, sr=DEFAULT_SPEC.sample_rate, mono=True)
    n = DEFAULT_SPEC.clip_samples
    starts = clip_starts(len(samples) / sr, DEFAULT_SPEC, path)
    clips = np.stack([samples[int(round(s * sr)):][:n] for s in starts])
    return song_features(clips, DEFAULT_SPEC)


def timed(func, paths) -> dict[str, list[float]]:
    """Seconds per song, by format (the extension)."""
    seconds: dict[str, list[float]] = defaultdict(list)
    for path in paths:
        started = time.perf_counter()
        func(path)
        seconds[path.suffix].append(time.perf_counter() - started)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--songs-per-format", type=int, default=13)
    parser.add_argument("--masters-per-format", type=int, default=2)
    parser.add_argument("--naive-per-format", type=int, default=2)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--library", type=Path, default=LIBRARY)
    args = parser.parse_args(argv)

    print(f"library: {args.library}", flush=True)
    songs = build_library(args.library, args.songs_per_format, args.masters_per_format)
    by_format = defaultdict(list)
    for song in songs:
        by_format[song.suffix].append(song)
    print(f"{len(songs)} songs, {len(by_format)} formats; cpus={os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.1f} at start", flush=True)

    extract(songs[0])  # imports and first-open costs out of the measurement
    seek = timed(extract, songs)
    print(f"seek, 1 process: {len(songs) / sum(map(sum, seek.values())):.1f} songs/s",
          flush=True)

    with ExtractPool(args.processes, nice=0) as pool:
        for _ in pool.map(songs[:args.processes * 2]):  # children up and warm
            pass
        started = time.perf_counter()
        results = list(pool.map(songs))
        pool_seconds = time.perf_counter() - started
    failed = [r for _, r in results if not isinstance(r, Extracted)]
    print(f"seek, ExtractPool({args.processes}): {len(songs) / pool_seconds:.1f} songs/s"
          f"{f'  ({len(failed)} failed: {failed[:2]})' if failed else ''}", flush=True)

    sample = [p for paths in by_format.values() for p in paths[:args.naive_per_format]]
    naive_extract(sample[0])  # librosa's imports (numba) out of the measurement
    naive = timed(naive_extract, sample)
    print(f"naive (librosa.load, full decode), 1 process: "
          f"{len(sample) / sum(map(sum, naive.values())):.2f} songs/s on {len(sample)} songs")

    print(f"\n{'format':8} {'songs':>5} {'seek songs/s':>13} {'naive songs/s':>14} "
          f"{'seek/naive':>11}")
    for ext in by_format:
        seek_rate = len(seek[ext]) / sum(seek[ext])
        naive_rate = len(naive[ext]) / sum(naive[ext])
        print(f"{ext[1:]:8} {len(seek[ext]):5d} {seek_rate:13.1f} {naive_rate:14.2f} "
              f"{seek_rate / naive_rate:10.0f}x")
    seek_all = len(songs) / sum(map(sum, seek.values()))
    # Same per-format mix for both: the naive sample's mean time per format.
    naive_all = len(by_format) / sum(np.mean(v) for v in naive.values())
    seek_mix = len(by_format) / sum(np.mean(v) for v in seek.values())
    print(f"{'all':8} {len(songs):5d} {seek_all:13.1f} {naive_all:14.2f} "
          f"{seek_mix / naive_all:10.0f}x")
    print(f"\nload average at end: {os.getloadavg()[0]:.1f} (cpus={os.cpu_count()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
