"""Better ears, measured: backbone extraction throughput against the seed CNN's, and the
nightly tournament (cnn, backbone head, ensemble) on a generated library.

    .venv/bin/python bench/ears.py [--part extraction|tournament|all] [--songs-per-format 3]
        [--processes 2] [--genres 10] [--songs-per-genre 24] [--epochs 10] [--hard]

The tournament part (bench/ears_tournament.py): see its docstring.

Extraction part:

On bench/decode.py's generated library (3-7 minute songs in every format; cached in
bench/out/decode-library/), songs/s of, per song:
  - cnn:      decode 5 x 1 s clips at 22,050 Hz + log spectrograms + the seed CNN (ORT);
  - backbone: decode 5 x 3 s patches at 16 kHz + log mel (daemon.audio.features) + the ONNX
              musicnn backbone (ORT), embedding = mean over patches;
each in one process at one ORT thread (the daemon's setting), then in --processes worker
processes; plus where a backbone song's time goes and ORT's time per patch. The CNN's
weights are untrained (its speed does not depend on them). The backbone is converted once
into bench/out/backbone.onnx (needs `make backbone`). Figures, not a pass/fail test; the
machine may be shared, so the load average is printed too.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode import LIBRARY, build_library  # noqa: E402

from daemon.audio.decode import decode_clips  # noqa: E402
from daemon.audio.features import (  # noqa: E402
    BACKBONE_SPEC,
    DEFAULT_SPEC,
    backbone_patches,
    song_features,
)

OUT = Path(__file__).resolve().parent / "out"
COLD_BACKFILL_SONGS = 15_000

_sessions: dict[str, object] = {}


def _session(model: Path):
    """An ORT session set up as the daemon's Classifier sets its own up."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.enable_cpu_mem_arena = False
    options.log_severity_level = 3
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def _load(models: dict[str, Path]) -> None:
    for family, path in models.items():
        _sessions[family] = _session(path)


def cnn_song(path: Path) -> dict[str, float]:
    started = time.perf_counter()
    clips = decode_clips(path, DEFAULT_SPEC)[1]
    decoded = time.perf_counter()
    features = song_features(clips, DEFAULT_SPEC)
    featured = time.perf_counter()
    session = _sessions["cnn"]
    session.run(None, {session.get_inputs()[0].name: features})
    done = time.perf_counter()
    return {"decode": decoded - started, "features": featured - decoded, "model": done - featured}


def backbone_song(path: Path) -> dict[str, float]:
    started = time.perf_counter()
    windows = decode_clips(path, BACKBONE_SPEC)[1]
    decoded = time.perf_counter()
    patches = backbone_patches(windows, BACKBONE_SPEC)
    featured = time.perf_counter()
    embedding = _sessions["backbone"].run(["penultimate"], {"patches": patches})[0].mean(0)
    done = time.perf_counter()
    assert np.isfinite(embedding).all(), path
    return {"decode": decoded - started, "features": featured - decoded, "model": done - featured}


STEPS = {"cnn": cnn_song, "backbone": backbone_song}


def _pooled(family: str, path: Path) -> dict[str, float]:
    return STEPS[family](path)


def cnn_model(path: Path) -> Path:
    """The seed CNN, untrained, exported as the trainer exports it."""
    if not path.exists():
        from trainer.export import to_onnx
        from trainer.model import build_model

        path.write_bytes(to_onnx(build_model(10, DEFAULT_SPEC.input_shape)).SerializeToString())
    return path


def backbone_model(path: Path) -> Path:
    if not path.exists():
        from trainer.backbone import convert, demo_patches

        done = convert(path, demo_patches())
        print(f"converted the backbone in {done.seconds:.1f} s ({done.size / 1e6:.1f} MB)")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--songs-per-format", type=int, default=3)
    parser.add_argument("--masters-per-format", type=int, default=1)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--library", type=Path, default=LIBRARY)
    parser.add_argument("--part", choices=("extraction", "tournament", "all"), default="all")
    parser.add_argument("--genres", type=int, default=10)
    parser.add_argument("--songs-per-genre", type=int, default=24)
    parser.add_argument("--artists-per-genre", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--hard", action="store_true",
                        help="tournament on songs mixing their genre with another's and noise")
    args = parser.parse_args(argv)
    if args.part in ("extraction", "all"):
        extraction(args)
    if args.part in ("tournament", "all"):
        from ears_tournament import tournament

        tournament(args)
    return 0


def extraction(args: argparse.Namespace) -> None:
    """Songs/s of decode + features + model, CNN vs backbone, 1 and N processes."""

    OUT.mkdir(exist_ok=True)
    models = {"cnn": cnn_model(OUT / "seed-cnn-untrained.onnx"),
              "backbone": backbone_model(OUT / "backbone.onnx")}
    songs = build_library(args.library, args.songs_per_format, args.masters_per_format)
    print(f"{len(songs)} songs in {len({s.suffix for s in songs})} formats; "
          f"cpus={os.cpu_count()}, load average {os.getloadavg()[0]:.1f} at start", flush=True)
    _load(models)

    rates: dict[str, dict[str, float]] = {}
    for family, step in STEPS.items():
        step(songs[0])  # first-open and first-run costs out of the measurement
        started = time.perf_counter()
        parts = [step(song) for song in songs]
        wall = time.perf_counter() - started
        rates[family] = {"1 process": len(songs) / wall}
        share = {k: sum(p[k] for p in parts) / len(songs) for k in parts[0]}
        print(f"{family:8} 1 process: {len(songs) / wall:5.1f} songs/s  (per song: "
              + ", ".join(f"{k} {1000 * v:.0f} ms" for k, v in share.items()) + ")",
              flush=True)

    with ProcessPoolExecutor(args.processes, initializer=_load, initargs=(models,)) as pool:
        for family in STEPS:
            list(pool.map(_pooled, [family] * args.processes * 2, songs))  # warm
            started = time.perf_counter()
            list(pool.map(_pooled, [family] * len(songs), songs))
            rate = len(songs) / (time.perf_counter() - started)
            rates[family][f"{args.processes} processes"] = rate
            print(f"{family:8} {args.processes} processes: {rate:5.1f} songs/s", flush=True)

    patches = backbone_patches(decode_clips(songs[0], BACKBONE_SPEC)[1])
    session = _sessions["backbone"]
    runs = 5
    started = time.perf_counter()
    for _ in range(runs):
        session.run(None, {"patches": patches})
    per_patch = (time.perf_counter() - started) / (runs * len(patches))
    print(f"\nbackbone ORT per 3-s patch, 1 thread: {1000 * per_patch:.0f} ms")

    print(f"\n{'':12} {'cnn songs/s':>12} {'backbone songs/s':>17} {'backbone/cnn':>13}")
    for setting in rates["cnn"]:
        cnn, ours = rates["cnn"][setting], rates["backbone"][setting]
        print(f"{setting:12} {cnn:12.1f} {ours:17.1f} {ours / cnn:12.2f}x")
    best = max(rates["backbone"].values())
    print(f"cold backfill of {COLD_BACKFILL_SONGS:,} songs through the backbone at "
          f"{best:.1f} songs/s: {COLD_BACKFILL_SONGS / best / 60:.0f} min (target: 8 songs/s,"
          f" <= 35 min)")
    print(f"\nload average at end: {os.getloadavg()[0]:.1f} (cpus={os.cpu_count()})")


if __name__ == "__main__":
    sys.exit(main())
