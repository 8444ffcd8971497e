"""The nightly tournament's wall time, cold and warm, stage by stage, extrapolated to a
15,000-song station; and judging on cached embeddings against judging on patches.

    .venv/bin/python bench/nightly.py [--genres 10] [--songs-per-genre 12] [--epochs 3]
        [--reuse]

On daemon.cli.demo's make_library (--genres x --songs-per-genre songs of 20-40 s, cached
in bench/out/ears-library-plain-*/, shared with bench/ears_tournament.py), in this
process, through the real code:
  - night 1, cold (empty caches): trainer.train.train, --family all;
  - night 2, warm (every song's features and embedding cached), warm start from night 1
    as the retrainer runs it;
  - the model runs of night 2's judging (the test songs through the three families'
    bundles), of the gate after it (the candidate and the active model, night 1's
    held-out fit, on the holdout) and of re-scoring (the served model on every song, as
    when every song has a pending suggestion), each two ways in the same process: the
    whole bundle on cached patches (the backbone again on every song, as before) and the
    bundle cut at its embedding output on cached embeddings (now).
Figures, not a pass/fail test; the load average is printed: the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.ears_tournament import OUT, STATION_SONGS, library, night  # noqa: E402

# Stages that do not grow with the songs: writing the bundles (parity checks on a fixed
# number of clips and patches) and, on cached embeddings, judging: loading each bundle
# and cutting its graph, the model runs themselves well under 1 ms a song (the "gate"
# rows measure them). Every other stage is taken as linear in songs.
FIXED = ("bundles", "judge + context")


def stages(report: dict) -> dict[str, float]:
    """Where a night's time went (seconds), from its report: the trainer's own timings and
    each family's fitting seconds."""
    t = report["timings"]
    rows = {r["family"]: r["train_seconds"] for r in report["tournament"]["rows"]}
    fit = {f"fit {family}": rows[family] for family in ("cnn", "backbone") if family in rows}
    return {"features (walk, decode, cache)": t["decode_s"], "embeddings": t["embed_s"],
            **fit, "fit other (calibration, scoring)": t["fit_s"] - sum(fit.values()),
            "bundles": t["bundles_s"], "judge + context": t["judge_s"],
            "refit + served bundle": t["refit_s"]}


def timed(job) -> tuple[float, object]:
    started = time.perf_counter()
    value = job()
    return time.perf_counter() - started, value


def after_night(base: Path, cache: Path) -> dict[str, dict[str, float]]:
    """The model runs of the warm night's judging and of the gate and re-scoring after
    it, on patches and on embeddings: seconds, songs and the largest difference between
    the two ways."""
    import dataclasses

    import numpy as np

    from daemon.audio.featurecache import FeatureCache
    from daemon.audio.features import BACKBONE, BACKBONE_SPEC, CNN, DEFAULT_SPEC, EMBEDDING_SPEC
    from daemon.learn.gate import holdout_probs, read_split
    from daemon.suggest.classifier import Classifier
    from daemon.suggest.embedded import cached_features, load_on_embeddings, member_caches
    from daemon.suggest.stored_bundles import HELD_OUT
    from trainer.dataset import LabelledSong
    from trainer.tournament import FAMILIES, judge_bundle
    from trainer.train import WINDOWS

    caches = {CNN: FeatureCache(cache, dataclasses.replace(DEFAULT_SPEC, clips_per_song=WINDOWS)),
              BACKBONE: FeatureCache(cache, dataclasses.replace(BACKBONE_SPEC,
                                                                clips_per_song=WINDOWS))}
    embeddings = FeatureCache(cache, EMBEDDING_SPEC)
    split = base / "night2" / "split.json"
    test = read_split(split, "test")
    every = [s.fingerprint for part in ("train", "validation", "test", "context")
             for s in read_split(split, part)]

    def models(bundle: Path, fps: list[str]):
        def run(way: str):
            model = (Classifier.load if way == "patches" else load_on_embeddings)(bundle)
            feeding = member_caches(model, caches, embeddings)
            return holdout_probs(model, [cached_features(fp, feeding) for fp in fps],
                                 list(model.classes))
        return run

    def tournament(way: str):
        songs = [LabelledSong(Path(s.path), s.path, s.genre, "", s.fingerprint) for s in test]
        bundles = [base / "night2" / f"{f}.onnx" for f in FAMILIES]
        genres = sorted({s.genre for s in test})
        return np.concatenate([judge_bundle(b, songs, caches, genres, embeddings=None if
                                            way == "patches" else embeddings)[0]
                               for b in bundles])

    jobs = {"judge: 3 bundles": (tournament, len(test)),
            "gate: candidate": (models(base / "night2" / HELD_OUT, [s.fingerprint for s in test]),
                                len(test)),
            "gate: active": (models(base / "night1" / HELD_OUT, [s.fingerprint for s in test]),
                             len(test)),
            "rescore: every song": (models(base / "night2" / "model.onnx", every), len(every))}
    figures = {}
    for name, (job, songs) in jobs.items():
        probs, row = {}, {"songs": songs}
        for way in ("patches", "embeddings"):
            row[way], probs[way] = timed(lambda job=job, way=way: job(way))
        row["max_diff"] = float(np.abs(probs["patches"] - probs["embeddings"]).max())
        figures[name] = row
    return figures


def extrapolate(seconds: dict[str, float], songs: int) -> dict[str, float]:
    """Linear in songs but for FIXED stages."""
    scale = STATION_SONGS / songs
    return {k: v if k in FIXED else v * scale for k, v in seconds.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--genres", type=int, default=10)
    parser.add_argument("--songs-per-genre", type=int, default=12)
    parser.add_argument("--artists-per-genre", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--reuse", action="store_true",
                        help="take both nights from the last run's reports (same library)")
    args = parser.parse_args()
    args.hard = False
    root = library(args)
    base = OUT / "nightly"
    cache = base / "cache"
    songs = sum(1 for p in root.rglob("*") if p.is_file() and p.name != ".complete")
    print(f"== nightly tournament: {songs} songs ({args.genres} genres x "
          f"{args.songs_per_genre}), epochs {args.epochs}, cpus {os.cpu_count()}; load "
          f"average {os.getloadavg()[0]:.1f}", flush=True)
    if args.reuse:
        cold, warm = (json.loads((base / name / "report.json").read_text())
                      for name in ("night1", "night2"))
    else:
        shutil.rmtree(base, ignore_errors=True)
        cold = night(root, base / "night1", cache, args.epochs, None)
        print(f"cold night: {cold['wall_s']:.0f} s; load average {os.getloadavg()[0]:.1f}",
              flush=True)
        warm = night(root, base / "night2", cache, args.epochs, base / "night1")
        print(f"warm night: {warm['wall_s']:.0f} s; load average {os.getloadavg()[0]:.1f}",
              flush=True)
    for name, report in (("cold", cold), ("warm", warm)):
        print(f"{name} cache: {json.dumps(report['cache'], sort_keys=True)}")
    gate_rescore = after_night(base, cache)

    columns = {"cold": stages(cold), "warm": stages(warm)}
    for name in ("gate: candidate", "gate: active", "rescore: every song"):
        for night_name in columns:  # the same work after either night (judging is in
            # the trainer's own "judge + context")
            columns[night_name][name] = gate_rescore[name]["embeddings"]
    print(f"\n{'stage':36} {'cold s':>8} {'warm s':>8} {'cold 15k min':>13} "
          f"{'warm 15k min':>13}")
    wide = {k: extrapolate(v, songs) for k, v in columns.items()}
    for stage in columns["cold"]:
        print(f"{stage:36} {columns['cold'][stage]:8.1f} {columns['warm'][stage]:8.1f} "
              f"{wide['cold'][stage] / 60:13.1f} {wide['warm'][stage] / 60:13.1f}")
    for name in ("cold", "warm"):
        total = sum(columns[name].values())
        print(f"{name} total {total:.0f} s = {songs / total:.2f} songs/s; at "
              f"{STATION_SONGS:,} songs {sum(wide[name].values()) / 60:.0f} min "
              f"(fit at {args.epochs} epochs; early stopping may take more)")
    print("\nthe warm night's judging (the test songs through the three families' bundles), "
          "the gate and re-scoring after it: the whole bundle on cached patches (before) vs "
          "cut at its embedding output on cached embeddings (now):")
    for name, row in gate_rescore.items():
        print(f"  {name:22} {row['songs']:4d} songs: patches {row['patches']:6.2f} s, "
              f"embeddings {row['embeddings']:6.2f} s (x{row['patches'] / row['embeddings']:.0f}"
              f"); max |diff| {row['max_diff']:.1e}; at {STATION_SONGS:,} songs "
              f"{row['patches'] * STATION_SONGS / songs / 60:.1f} -> "
              f"{row['embeddings'] * STATION_SONGS / songs / 60:.1f} min")
    print(f"load average at end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
