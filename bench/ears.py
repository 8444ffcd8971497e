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
              musicnn backbone (ORT) as `make backbone` writes it (front end rewritten,
              trainer/rewrite.py), embedding = mean over patches;
  - converted: the same with the backbone as tf2onnx wrote it (the rewrite's baseline);
each in one process at one ORT thread (the daemon's setting), then in --processes worker
processes; plus where a backbone song's time goes, ORT's time per patch of both graphs
(interleaved rounds) and the cosine and largest difference between their embeddings on
every decoded song. The CNN's weights are untrained (its speed does not depend on them).
Both backbones are converted once into bench/out/ (needs `make backbone`). Figures, not a
pass/fail test; the machine may be shared, so the load average is printed too.
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
    from daemon.audio.embedding import cpu_session

    return cpu_session(str(model), threads=1, arena=False)


def _load(models: dict[str, Path]) -> None:
    from daemon.core.threads import limit_math_threads

    limit_math_threads(1)  # as in a decoder child
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


def backbone_song(path: Path, graph: str = "backbone") -> dict[str, float]:
    started = time.perf_counter()
    windows = decode_clips(path, BACKBONE_SPEC)[1]
    decoded = time.perf_counter()
    patches = backbone_patches(windows, BACKBONE_SPEC)
    featured = time.perf_counter()
    embedding = _sessions[graph].run(["penultimate"], {"patches": patches})[0].mean(0)
    done = time.perf_counter()
    assert np.isfinite(embedding).all(), path
    return {"decode": decoded - started, "features": featured - decoded, "model": done - featured}


def converted_song(path: Path) -> dict[str, float]:
    return backbone_song(path, "converted")


# "backbone" is the graph `make backbone` writes (front end rewritten, trainer/rewrite.py);
# "converted" the same network as tf2onnx wrote it, the baseline of the rewrite.
STEPS = {"cnn": cnn_song, "converted": converted_song, "backbone": backbone_song}


def _pooled(family: str, path: Path) -> dict[str, float]:
    return STEPS[family](path)


def cnn_model(path: Path) -> Path:
    """The seed CNN, untrained, exported as the trainer exports it."""
    if not path.exists():
        from trainer.export import to_onnx
        from trainer.model import build_model

        path.write_bytes(to_onnx(build_model(10, DEFAULT_SPEC.input_shape)).SerializeToString())
    return path


def backbone_model(path: Path, rewrite: bool = True) -> Path:
    """The ONNX backbone as `make backbone` writes it, or (rewrite=False) as tf2onnx wrote
    it; converted once into bench/out/, re-converted when the graph form differs."""
    import onnx

    from trainer.backbone import GRAPH_AS_CONVERTED, GRAPH_REWRITTEN, convert, demo_patches

    wanted = GRAPH_REWRITTEN if rewrite else GRAPH_AS_CONVERTED
    if path.exists():
        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False)
                 .metadata_props}
        if props.get("backbone_graph") == wanted:
            return path
    done = convert(path, demo_patches(), rewrite=rewrite)
    print(f"converted the backbone ({wanted}) in {done.seconds:.1f} s "
          f"({done.size / 1e6:.1f} MB)")
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
              "converted": backbone_model(OUT / "backbone-as-converted.onnx", rewrite=False),
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

    rewrite_parity(songs)

    print(f"\n{'':12} {'cnn songs/s':>12} {'converted':>10} {'rewritten':>10} "
          f"{'rewritten/converted':>20} {'rewritten/cnn':>14}")
    for setting in rates["cnn"]:
        cnn, plain, ours = (rates[f][setting] for f in ("cnn", "converted", "backbone"))
        print(f"{setting:12} {cnn:12.1f} {plain:10.1f} {ours:10.1f} {ours / plain:19.2f}x "
              f"{ours / cnn:13.2f}x")
    best = max(rates["backbone"].values())
    print(f"cold backfill of {COLD_BACKFILL_SONGS:,} songs through the backbone at "
          f"{best:.1f} songs/s: {COLD_BACKFILL_SONGS / best / 60:.0f} min (target: 8 songs/s,"
          f" <= 35 min)")
    print(f"\nload average at end: {os.getloadavg()[0]:.1f} (cpus={os.cpu_count()})")


def rewrite_parity(songs: list[Path], rounds: int = 5, batch: int = 8) -> None:
    """ms per 3-s patch of the converted and the rewritten backbone (interleaved rounds,
    one ORT thread, `batch` patches a run), and how far apart their song embeddings are
    on every decoded song."""
    patches = [backbone_patches(decode_clips(song, BACKBONE_SPEC)[1]) for song in songs]
    every = np.concatenate(patches)
    timed = np.resize(every, (batch * 4, *every.shape[1:]))
    seconds = {"converted": [], "backbone": []}
    for _ in range(rounds):
        for graph in seconds:
            session = _sessions[graph]
            started = time.perf_counter()
            for i in range(0, len(timed), batch):
                session.run(["penultimate"], {"patches": timed[i:i + batch]})
            seconds[graph].append((time.perf_counter() - started) / len(timed))
    plain, ours = (1000 * float(np.median(seconds[g])) for g in ("converted", "backbone"))
    print(f"\nbackbone ORT per 3-s patch, 1 thread, batch {batch} (median of {rounds} "
          f"interleaved rounds): converted {plain:.1f} ms, rewritten {ours:.1f} ms "
          f"({plain / ours:.2f}x)")
    cosines, worst = [], 0.0
    for song in patches:
        a, b = (_sessions[g].run(["penultimate"], {"patches": song})[0]
                for g in ("converted", "backbone"))
        worst = max(worst, float(np.abs(a - b).max() / max(1.0, np.abs(a).max())))
        x, y = a.mean(0), b.mean(0)
        cosines.append(float(x @ y / np.linalg.norm(x) / np.linalg.norm(y)))
    print(f"song embeddings, rewritten vs converted, {len(patches)} decoded songs: "
          f"min cosine {min(cosines):.7f}, max relative difference per patch {worst:.1e}")


if __name__ == "__main__":
    sys.exit(main())
