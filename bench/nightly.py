"""The nightly tournament's wall time, cold and warm, stage by stage, without and with the
CNN's ceiling of songs an epoch, extrapolated to a 15,000-song station; held-out quality
without and with the ceiling; and judging on cached embeddings against judging on patches.

    .venv/bin/python bench/nightly.py [--part all|quality] [--library plain|messy]
        [--genres 10] [--songs-per-genre 12] [--epochs 30] [--songs-per-epoch 40] [--reuse]

--part quality: the CNN alone (no backbone), one cold night without and one with the
ceiling on the same split: its held-out accuracy, macro-F1 and recall per genre.

--library plain: daemon.cli.demo's make_library (--genres x --songs-per-genre songs of
20-40 s, cached in bench/out/ears-library-plain-*/, shared with bench/ears_tournament.py).
--library messy: tests/messy.py's station (--max-songs, --mix, --seed: genres of very
different sizes, wrong tags, tagless album-mates, one-artist and one-song genres; songs
of 6-9 s, so its decoding stage says little about a station's). In this process, through
the real code, twice (in separate caches): without a ceiling (every training song every
epoch, as before; the refit goes on from the held-out fit and the stopper's smallest gain,
trainer.fit.MIN_IMPROVEMENT, holds in both) and with --songs-per-epoch, a ceiling small
enough that this library exceeds it:
  - night 1, cold (empty caches): trainer.train.train, --family all;
  - night 2, warm (every song's features and embedding cached), warm start from night 1
    as the retrainer runs it;
  - the model runs of night 2's judging (the test songs through the three families'
    bundles), of the gate after it (the candidate and the active model, night 1's
    held-out fit, on the holdout) and of re-scoring (the served model on every song, as
    when every song has a pending suggestion), each two ways in the same process: the
    whole bundle on cached patches (the backbone again on every song, as before) and the
    bundle cut at its embedding output on cached embeddings (now). With the ceiling only.

Extrapolation to 15,000 songs. The CNN's fits (the held-out fit and the refit) from
their epochs: epochs run x (seconds per song of an epoch's training pass x the songs an
epoch trains on at the station + seconds per song of its validation pass x the
validation songs). Without a ceiling those songs grow with the station (linear); with
it they stop at the trainer's default songs_per_epoch (trainer.train.SONGS_PER_EPOCH):
a song above the ceiling costs nothing more per epoch. The epoch counts are this run's:
an epoch at the station's ceiling is ~75x the steps of one here, so early stopping there
needs no more epochs than here (it stops at patience + 1 at the least). Decoding,
embedding, calibration and scoring (predictions on every validation and test song) and
the refit's other parts (the head, the served bundle) stay linear in songs; writing the
bundles and judging on cached embeddings are fixed. The CNN refit at the station: without
the ceiling, as it was before (from the start, the held-out fit's best epoch count over
every song); with it, its own epochs, or on a night the CNN did not win (no CNN refit),
the most it may run (the held-out fit's best epoch count under the ceiling). Figures,
not a pass/fail test; the load average is printed: the machine may be shared.
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
sys.path.insert(0, str(ROOT / "tests"))

from bench.ears_tournament import OUT, STATION_SONGS, library, night  # noqa: E402
from trainer.train import SONGS_PER_EPOCH  # noqa: E402

# Stages that do not grow with the songs: writing the bundles (parity checks on a fixed
# number of clips and patches), judging on cached embeddings (loading each bundle and
# cutting its graph; the model runs themselves well under 1 ms a song: the "gate" rows
# measure them) and a fit's setup (the model, the statistics sample). The CNN's epochs
# are extrapolated from their cost per epoch; every other stage is linear in songs.
FIXED = ("bundles", "judge + context", "fit cnn: setup")


def held_out_fit(report: dict) -> dict | None:
    cnn = report["families"].get("cnn")
    return cnn["fit"] if cnn else None


def refit(report: dict) -> dict | None:
    return report["served"].get("cnn_fit")


def stages(report: dict) -> dict[str, float]:
    """Where a night's time went (seconds), from its report: the trainer's own timings,
    each family's fitting seconds and the CNN fits' epochs."""
    t = report["timings"]
    rows = {r["family"]: r["train_seconds"] for r in report["tournament"]["rows"]}
    fit = held_out_fit(report)
    epochs = sum(fit["epoch_seconds"]) if fit else 0.0
    refit_epochs = sum(refit(report)["epoch_seconds"]) if refit(report) else 0.0
    fitting = {"fit cnn: epochs": epochs, "fit cnn: setup": rows.get("cnn", 0.0) - epochs,
               "fit backbone": rows.get("backbone", 0.0)}
    return {"features (walk, decode, cache)": t["decode_s"], "embeddings": t["embed_s"],
            **fitting, "fit other (calibration, scoring)": t["fit_s"] - rows.get("cnn", 0.0)
            - rows.get("backbone", 0.0), "bundles": t["bundles_s"],
            "judge + context": t["judge_s"], "refit cnn: epochs": refit_epochs,
            "refit other + served bundle": t["refit_s"] - refit_epochs}


def per_epoch(fit: dict) -> tuple[float, float, float]:
    """(seconds per song of an epoch's training pass, per song of its validation pass,
    fixed seconds an epoch: the BatchNorm statistics' update on a fixed sample)."""
    epochs = len(fit["epoch_seconds"])
    validation = sum(fit.get("validation_seconds") or [])
    statistics = sum(fit.get("statistics_seconds") or [])
    trained = sum(fit["epoch_seconds"]) - validation - statistics
    return (trained / (epochs * fit["songs_per_epoch"]),
            validation / (epochs * max(1, fit.get("validation_songs", 0))), statistics / epochs)


def at_station(fit: dict | None, shares: tuple[float, float], ceiling: int | None,
               epochs: int | None = None, training_only: bool = False,
               costs: tuple[float, float] | None = None) -> float:
    """Seconds of a CNN fit's epochs at STATION_SONGS: `shares` of the library it trains
    and validates on, `epochs` (default: the fit's own) each bounded by `ceiling`;
    training_only: the training passes alone (a refit has no validation). costs: (fixed
    seconds, seconds per song) of a training pass (epoch_costs); without, the fit's own
    seconds per song, its per-epoch overhead counted as if per song (an upper bound)."""
    if not fit:
        return 0.0
    songs = [STATION_SONGS * share for share in shares]
    if ceiling is not None:
        songs = [min(n, ceiling) for n in songs]
    train_s, val_s, fixed = per_epoch(fit)
    overhead = 0.0
    if costs is not None:
        overhead, train_s = costs
    if training_only:
        val_s = fixed = 0.0
    return (epochs or fit["epochs_run"]) * (overhead + train_s * songs[0] + val_s * songs[1]
                                            + fixed)


def epoch_costs(fits: list[dict]) -> tuple[float, float] | None:
    """(fixed seconds, seconds per song) of an epoch's training pass, fitted (least
    squares) over the epochs of `fits`, which train on different numbers of songs (with
    and without the ceiling): an epoch's own overhead (its iterator, the shuffle buffer
    filling) is then not taken as a cost per song. None if they do not differ."""
    import numpy as np

    sizes, seconds = [], []
    for fit in fits:
        n = len(fit["epoch_seconds"])
        for e, v, st in zip(fit["epoch_seconds"], fit.get("validation_seconds") or [0.0] * n,
                            fit.get("statistics_seconds") or [0.0] * n, strict=True):
            sizes.append(fit["songs_per_epoch"])
            seconds.append(e - v - st)
    if len(set(sizes)) < 2:
        return None
    per_song, fixed = np.polyfit(sizes, seconds, 1)
    return max(0.0, float(fixed)), float(per_song)


def shares(report: dict, songs: int) -> dict[str, tuple[float, float]]:
    """The library's shares each CNN fit trains and validates on."""
    split = (report["families"].get("cnn") or {}).get("training_set", {}).get("songs", {})
    return {"fit cnn: epochs": (split.get("train", 0) / songs,
                                split.get("validation", 0) / songs),
            "refit cnn: epochs": (report["served"]["songs"] / songs, 0.0)}


def refit_at_station(report: dict, songs: int, ceiling: int | None,
                     costs: tuple[float, float] | None = None) -> tuple[float, str]:
    """The CNN refit's seconds at STATION_SONGS and how they were had. Without a ceiling,
    the refit as it was: from the start, the held-out fit's best epoch count over every
    song (at the held-out fit's training cost per song). With it: the refit's own epochs;
    on a night the CNN did not win (no CNN refit), the most it may run: the held-out
    fit's best epoch count under the ceiling."""
    fit, everything = held_out_fit(report), (report["served"]["songs"] / songs, 0.0)
    if not fit:
        return 0.0, "no CNN"
    if ceiling is None or refit(report) is None:
        seconds = at_station(fit, everything, ceiling, fit["best_epoch"], training_only=True,
                             costs=costs)
        return seconds, (f"as before: {fit['best_epoch']} epochs from the start"
                         if ceiling is None else f"at most {fit['best_epoch']} epochs")
    return (at_station(refit(report), everything, ceiling, training_only=True, costs=costs),
            "measured epochs")


def extrapolate(report: dict, seconds: dict[str, float], songs: int,
                ceiling: int | None, costs: tuple[float, float] | None = None
                ) -> dict[str, float]:
    """Seconds of each stage at STATION_SONGS: FIXED stay, the CNN's epochs from their
    cost per epoch under `ceiling` (the trainer's own, or None as before), the rest
    linear."""
    scale = STATION_SONGS / songs
    wide = {k: v if k in FIXED else v * scale for k, v in seconds.items()}
    wide["fit cnn: epochs"] = at_station(held_out_fit(report),
                                         shares(report, songs)["fit cnn: epochs"], ceiling,
                                         costs=costs)
    wide["refit cnn: epochs"] = refit_at_station(report, songs, ceiling, costs)[0]
    return wide


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


def make_messy(args: argparse.Namespace) -> Path:
    """tests/messy.py's station, generated once per (--max-songs, --mix, --seed)."""
    from messy import make_messy_station

    root = OUT / f"nightly-messy-{args.max_songs}-{args.mix:g}-{args.seed}"
    if not (root / ".complete").exists():
        shutil.rmtree(root, ignore_errors=True)
        make_messy_station(root, seed=args.seed, max_songs=args.max_songs, mix=args.mix)
        (root / ".complete").write_text("")
    return root


def two_nights(root: Path, base: Path, args: argparse.Namespace,
               ceiling: int | None) -> tuple[dict, dict]:
    """Night 1 (cold) and night 2 (warm) under `ceiling`, or from the last run's reports."""
    if args.reuse:
        return tuple(json.loads((base / name / "report.json").read_text())
                     for name in ("night1", "night2"))
    shutil.rmtree(base, ignore_errors=True)
    reports = []
    for name, warm_start in (("night1", None), ("night2", base / "night1")):
        report = night(root, base / name, base / "cache", args.epochs, warm_start,
                       songs_per_epoch=ceiling)
        print(f"  {name} ({'cold' if warm_start is None else 'warm'}): "
              f"{report['wall_s']:.0f} s; load average {os.getloadavg()[0]:.1f}", flush=True)
        reports.append(report)
    return reports[0], reports[1]


def print_epochs(runs: dict[str, dict], songs: int) -> None:
    """Each CNN fit's epochs and cost per epoch, here and at the station."""
    print(f"\n{'CNN fit':30} {'epochs':>6} {'best':>5} {'songs/ep':>8} {'val':>5} "
          f"{'s/epoch':>8} {'15k min/epoch':>14} {'15k min':>8}")
    for name, report in runs.items():
        ceiling = None if name.startswith("no ceiling") else SONGS_PER_EPOCH
        parts = shares(report, songs)
        for label, fit in (("fit", held_out_fit(report)), ("refit", refit(report))):
            if not fit:
                continue
            key = "fit cnn: epochs" if label == "fit" else "refit cnn: epochs"
            total = at_station(fit, parts[key], ceiling)
            mean = sum(fit["epoch_seconds"]) / fit["epochs_run"]
            print(f"{name + ' ' + label:30} {fit['epochs_run']:6d} "
                  f"{fit.get('best_epoch', fit['epochs_run']):5d} {fit['songs_per_epoch']:8d} "
                  f"{fit.get('validation_songs', 0):5d} {mean:8.2f} "
                  f"{total / fit['epochs_run'] / 60:14.2f} {total / 60:8.1f}")


def print_quality(runs: dict[str, dict]) -> None:
    """Each night's held-out figures per family (the tournament's test songs)."""
    print(f"\n{'held-out quality':30} {'family':9} {'accuracy':>9} {'macro-F1':>9} "
          f"{'test songs':>10}")
    for name, report in runs.items():
        table = report["tournament"]
        for row in table["rows"]:
            mark = " (winner)" if row["family"] == table["winner"] else ""
            print(f"{name:30} {row['family']:9} {row['accuracy']:9.3f} "
                  f"{row['macro_f1']:9.3f} {table['holdout_songs']:10d}{mark}")


def quality(root: Path, args: argparse.Namespace) -> None:
    """The CNN alone (no backbone), one cold night without and one with the ceiling, on
    the same split and feature cache: its held-out figures and epochs side by side."""
    base = OUT / f"nightly-quality-{args.library}"
    shutil.rmtree(base, ignore_errors=True)
    print(f"\n{'CNN alone':16} {'epochs':>6} {'best':>5} {'songs/ep':>8} {'accuracy':>9} "
          f"{'macro-F1':>9} {'test songs':>10}  recall per genre")
    for label, ceiling in (("no ceiling", None),
                           (f"ceiling {args.songs_per_epoch}", args.songs_per_epoch)):
        report = night(root, base / label.replace(" ", "-"), base / "cache", args.epochs,
                       None, songs_per_epoch=ceiling, family="cnn", backbone=False)
        fit, test = report["families"]["cnn"]["fit"], report["metrics"]["test"]
        recall = ", ".join(f"{g} {r:.2f}" if r is not None else f"{g} -"
                           for g, r in sorted(test["recall"].items()))
        print(f"{label:16} {fit['epochs_run']:6d} {fit['best_epoch']:5d} "
              f"{fit['songs_per_epoch']:8d} {test['song_accuracy']:9.3f} "
              f"{test['macro_f1']:9.3f} {test['n_songs']:10d}  {recall}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=("all", "quality"), default="all",
                        help="quality: the CNN alone, cold, without and with the ceiling")
    parser.add_argument("--library", choices=("plain", "messy"), default="plain")
    parser.add_argument("--genres", type=int, default=10)
    parser.add_argument("--songs-per-genre", type=int, default=12)
    parser.add_argument("--artists-per-genre", type=int, default=4)
    parser.add_argument("--max-songs", type=int, default=80, help="messy: the largest genre")
    parser.add_argument("--mix", type=float, default=0.6, help="messy: another genre mixed in")
    parser.add_argument("--seed", type=int, default=3, help="messy: the station's seed")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--songs-per-epoch", type=int, default=40,
                        help="the ceiling measured here (the station's is "
                             f"{SONGS_PER_EPOCH:,})")
    parser.add_argument("--reuse", action="store_true",
                        help="take every night from the last run's reports (same library)")
    args = parser.parse_args()
    args.hard = False
    root = library(args) if args.library == "plain" else make_messy(args)
    songs = sum(1 for p in root.rglob("*") if p.is_file() and p.name != ".complete")
    print(f"== nightly tournament: {args.library} library, {songs} songs, epochs "
          f"{args.epochs} (early stopping), ceiling {args.songs_per_epoch} songs an epoch "
          f"here, {SONGS_PER_EPOCH:,} at the station; cpus {os.cpu_count()}; load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    if args.part == "quality":
        quality(root, args)
        return 0
    runs: dict[str, dict] = {}
    bases = {}
    for label, ceiling in (("no ceiling", None),
                           (f"ceiling {args.songs_per_epoch}", args.songs_per_epoch)):
        bases[label] = OUT / f"nightly-{args.library}" / ("before" if ceiling is None
                                                          else "after")
        print(f"{label}:", flush=True)
        cold, warm = two_nights(root, bases[label], args, ceiling)
        runs[f"{label}, cold"], runs[f"{label}, warm"] = cold, warm
    for name, report in runs.items():
        print(f"{name} cache: {json.dumps(report['cache'], sort_keys=True)}")
    after = bases[f"ceiling {args.songs_per_epoch}"]
    gate_rescore = after_night(after, after / "cache")
    print_epochs(runs, songs)
    print_stages(runs, gate_rescore, songs)
    print_quality(runs)
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


def print_stages(runs: dict[str, dict], gate_rescore: dict, songs: int) -> None:
    """Seconds per stage here and minutes at the station, each night without and with
    the ceiling (the CNN refit at the station: refit_at_station), the CNN's training
    passes at the cost per song and per epoch fitted over both runs' epochs of the same
    night (epoch_costs); the totals also at each fit's own cost per song (an upper bound)."""
    columns, wide, bound, costs = {}, {}, {}, {}
    for kind in ("cold", "warm"):
        costs[kind] = epoch_costs([f for name, r in runs.items() if name.endswith(kind)
                                   for f in (held_out_fit(r), refit(r)) if f])
        if costs[kind]:
            print(f"{kind} nights' training passes: {costs[kind][0]:.2f} s an epoch + "
                  f"{costs[kind][1] * 1000:.1f} ms a song ({costs[kind][1] * 1000 / 8:.1f} ms "
                  "a clip at 8 windows)")
    for name, report in runs.items():
        columns[name] = stages(report)
        ceiling = None if name.startswith("no ceiling") else SONGS_PER_EPOCH
        wide[name] = extrapolate(report, columns[name], songs, ceiling, costs[name[-4:]])
        bound[name] = extrapolate(report, columns[name], songs, ceiling)
        for row in ("gate: candidate", "gate: active", "rescore: every song"):
            columns[name][row] = gate_rescore[row]["embeddings"]
            wide[name][row] = bound[name][row] = columns[name][row] * STATION_SONGS / songs
    names = list(runs)
    print(f"\n{'stage':36}" + "".join(f" {n[-4:] + (' +c' if 'no' not in n else ''):>9}"
                                       for n in names) + "   seconds here | min at 15k:"
          + "".join(f" {n[-4:] + (' +c' if 'no' not in n else ''):>9}" for n in names))
    for stage in columns[names[0]]:
        print(f"{stage:36}" + "".join(f" {columns[n][stage]:9.1f}" for n in names) + " " * 16
              + "".join(f" {wide[n][stage] / 60:9.1f}" for n in names))
    for name in names:
        total = sum(columns[name].values())
        ceiling = None if name.startswith("no ceiling") else SONGS_PER_EPOCH
        how = refit_at_station(runs[name], songs, ceiling)[1]
        print(f"{name:24} total {total:5.0f} s here; at {STATION_SONGS:,} songs "
              f"{sum(wide[name].values()) / 60:4.0f} min (at most "
              f"{sum(bound[name].values()) / 60:.0f}; CNN refit: {how})")


if __name__ == "__main__":
    sys.exit(main())
