"""Benchmark: one nightly retrain (warm start) on a generated library of >= 2,000 songs with
100 new confirmed labels, and how much of it is spent decoding audio.

    .venv/bin/python bench/retrain.py [--songs 2000] [--epochs 1] [--labels 100]

Steps, all through the real code paths:
  1. a library of --songs files: a few synthesised masters per genre and format, copied
     under new names with different artist/title tags (cached in bench/out/);
  2. a fresh state dir: reconcile (daemon.library.reconcile) fills the DB;
  3. BASELINE, the cold first training (Retrainer.run("initial")): every tagged song is
     decoded into the feature cache;
  4. the worker suggests genres for the untagged songs (the daemon's daily work: it puts
     their features into the cache), then --labels of them are confirmed via
     daemon.review.decisions;
  5. the NIGHTLY run (Retrainer.run("nightly")): policy -> trainer subprocess with warm
     start -> gate -> swap -> re-score. Target: 0 songs decoded.
Figures: wall times, decoded songs, the decoding share, and a linear extrapolation to
15,000 songs (walk and epochs scale with songs; start-up and export do not).
--epochs defaults to 1 to keep the benchmark to minutes; the per-epoch time is printed so
the nightly's configured epochs (early stopping, at most retrain.epochs) can be multiplied.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from daemon.cli.demo import encode, synthesize  # noqa: E402
from daemon.core.config import parse_config  # noqa: E402

OUT = ROOT / "bench" / "out"
GENRES = ("Blues", "Classical", "Electronic", "Hip-Hop", "Metal")
FORMATS = (".mp3", ".ogg", ".flac")
MASTERS_PER_FORMAT = 2
UNTAGGED_SHARE = 0.08


def make_library(root: Path, songs: int, seconds: float) -> dict[str, str]:
    """`songs` files under `root` (cached): {relative path: true genre}."""
    from daemon.tags.write import write_tags

    index = root / "truth.json"
    if index.exists():
        return json.loads(index.read_text())
    shutil.rmtree(root, ignore_errors=True)
    masters_dir = root.parent / f"{root.name}-masters"
    masters_dir.mkdir(parents=True, exist_ok=True)
    masters: dict[str, list[Path]] = {g: [] for g in GENRES}
    for g_index, genre in enumerate(GENRES):
        for f_index, ext in enumerate(FORMATS):
            for m in range(MASTERS_PER_FORMAT):
                path = masters_dir / f"{genre}-{m}{ext}"
                if not path.exists():
                    seed = 1000 * g_index + 10 * f_index + m
                    encode(path, synthesize(genre, seconds, 22_050, seed), 22_050)
                masters[genre].append(path)
    truth = {}
    for i in range(songs):
        genre = GENRES[i % len(GENRES)]
        master = masters[genre][(i // len(GENRES)) % len(masters[genre])]
        artist = f"{genre} Artist {i // (len(GENRES) * 3):04d}"  # ~3 songs per artist
        rel = f"{artist}/{genre} Song {i:05d}{master.suffix}"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(master, path)
        tagged = (i * 7919) % 100 >= UNTAGGED_SHARE * 100
        write_tags(path, title=f"{genre} Song {i}", artist=artist, album=f"{artist} LP",
                   genre=genre if tagged else None)
        truth[rel] = genre
    index.write_text(json.dumps(truth))
    return truth


def trainer_figures(summary: dict) -> tuple[dict, dict, dict]:
    return (summary.get("trainer_cache") or {}, summary.get("trainer_timings") or {},
            summary.get("trainer_training_set") or {})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--songs", type=int, default=2000)
    parser.add_argument("--labels", type=int, default=100, help="new confirmed labels")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=20.0, help="song length")
    args = parser.parse_args()

    from sqlalchemy import select

    from daemon.core.db.engine import open_database
    from daemon.core.db.models import Suggestion, Track, TrainingRun
    from daemon.learn.retrainer import Retrainer
    from daemon.library.reconcile import Library
    from daemon.review import decisions as review
    from daemon.suggest.active import active_model
    from daemon.suggest.worker import Worker
    from daemon.tags.genres import load_genre_map

    library = OUT / f"retrain-library-{args.songs}"
    started = time.perf_counter()
    truth = make_library(library, args.songs, args.seconds)
    print(f"library: {len(truth)} songs in {library} "
          f"({time.perf_counter() - started:.0f} s to make or find)", flush=True)

    state = OUT / "retrain-state"
    shutil.rmtree(state, ignore_errors=True)
    config = parse_config({
        "library": {"root": str(library), "settle_seconds": 0},
        "state_dir": str(state), "min_songs_per_genre": 20,
        "review": {"write_tags": False},
        "retrain": {"epochs": args.epochs, "min_new_labels": args.labels,
                    "timeout_minutes": 600},
    }, "bench config")
    _engine, sessions = open_database(config.db_url)

    t = time.perf_counter()
    walker = Library(config, sessions, load_genre_map(None))
    walker.reconcile()
    walker.settle_due(now=time.time() + 60)
    reconcile_s = time.perf_counter() - t
    with sessions() as session:
        untagged = session.scalar(select(Track.id).where(Track.canonical_genre.is_(None))
                                  .limit(1)) is not None
    print(f"reconcile: {reconcile_s:.1f} s", flush=True)

    retrainer = Retrainer(config, sessions)
    t = time.perf_counter()
    cold = retrainer.run("initial")
    cold_s = time.perf_counter() - t
    print(f"cold first training: {cold['status']} in {cold_s:.0f} s ({cold['reason']})",
          flush=True)
    if cold["status"] != "promoted":
        return 1

    # The daemon's daily work: suggestions for the untagged songs (features into the cache).
    t = time.perf_counter()
    worker = Worker(config, sessions)
    worker.start()
    try:
        while untagged:
            with sessions() as session:
                waiting = session.scalar(select(Track.id).where(
                    Track.state.in_(("queued", "working", "retrying"))).limit(1))
            if waiting is None:
                break
            time.sleep(1)
    finally:
        worker.close()
    suggest_s = time.perf_counter() - t
    with sessions() as session:
        pending = session.execute(select(Suggestion.id, Suggestion.genre, Track.path)
                                  .join(Track).where(Suggestion.status == "pending")).all()
    confirm = pending[:args.labels]
    for suggestion_id, genre, path in confirm:
        if genre == truth[path]:
            review.accept(sessions, config, [suggestion_id], who="bench")
        else:
            review.override(sessions, config, suggestion_id, truth[path], who="bench")
    print(f"worker: {len(pending)} suggestions in {suggest_s:.0f} s; confirmed {len(confirm)}",
          flush=True)

    t = time.perf_counter()
    nightly = retrainer.run("nightly")
    nightly_s = time.perf_counter() - t
    print(f"nightly retrain: {nightly['status']} in {nightly_s:.0f} s ({nightly['reason']})",
          flush=True)
    with sessions() as session:
        runs = {r.id: r for r in session.scalars(select(TrainingRun))}
        model = active_model(session)
    cold_cache, cold_times, _ = trainer_figures(runs[cold["id"]].summary)
    night_cache, night_times, night_set = trainer_figures(runs[nightly["id"]].summary)
    summary = runs[nightly["id"]].summary

    songs = args.songs
    train_clips = (night_set.get("clips") or {}).get("train", 0)
    decode_cold = cold_times.get("features_s", 0.0)
    per_song_decode = decode_cold / max(1, cold_cache.get("decoded", 0))
    walk = night_times.get("features_s", 0.0)
    fit = night_times.get("fit_s", 0.0)
    trainer_total = night_times.get("total_s", 0.0)
    after_trainer = max(0.0, (summary.get("seconds") or nightly_s) - trainer_total)
    other = max(0.0, trainer_total - walk - fit)
    print("\n== nightly retrain (warm start) ==")
    print(f"songs in library          {songs}")
    print(f"new confirmed labels      {len(confirm)}")
    print(f"trainer warm start        {summary.get('trainer_warm_start')}")
    print(f"epochs                    {args.epochs}")
    print(f"wall time                 {nightly_s:8.1f} s   (cold first training "
          f"{cold_s:.1f} s; ratio {nightly_s / cold_s:.2f})")
    print(f"  dataset walk + cache    {walk:8.1f} s   (songs decoded: "
          f"{night_cache.get('decoded')}, from cache: {night_cache.get('cached')})")
    print(f"  fit incl. TF start-up   {fit:8.1f} s   ({train_clips} training clips, "
          f"{train_clips * args.epochs / max(fit, 1e-9):.0f} clips/s)")
    print(f"  calibrate+export+write  {other:8.1f} s")
    print(f"  gate+register+rescore   {after_trainer:8.1f} s   "
          f"(holdout {summary['gate'].get('holdout_songs')} songs, "
          f"rescored {(summary.get('rescored') or {}).get('rescored')})")
    share = 0.0 if not night_cache.get("decoded") else walk / nightly_s
    print(f"decoding share            {100 * share:8.1f} %   (target 0: no unchanged song "
          "decoded)")
    print(f"cold run decoding         {decode_cold:8.1f} s   ({cold_cache.get('decoded')} songs,"
          f" {1000 * per_song_decode:.0f} ms/song)")
    print(f"new model                 v{model.version:04d} {model.status}")

    k = 15_000 / songs
    epoch_15k = fit / args.epochs * k
    fixed = other + 0.0
    est = walk * k + epoch_15k * args.epochs + fixed + after_trainer * k
    print(f"\n== extrapolated to 15,000 songs (x{k:.1f}) ==")
    print(f"walk + cache lookups      {walk * k:8.0f} s")
    print(f"one epoch                 {epoch_15k:8.0f} s   ({train_clips * k:.0f} clips)")
    print(f"gate+register+rescore     {after_trainer * k:8.0f} s")
    print(f"nightly, {args.epochs} epoch(s)        {est:8.0f} s = {est / 60:.1f} min")
    for epochs in (10, 30):  # early stopping usually ends well before retrain.epochs (30)
        total = walk * k + epoch_15k * epochs + fixed + after_trainer * k
        print(f"nightly, {epochs} epochs         {total:8.0f} s = {total / 3600:.1f} h")
    # The daemon passes --time-budget (90% of retrain.timeout_minutes): fitting stops in
    # time for export and the gate, so a long night ends in a model, not a kill.
    from daemon.core.config import RetrainConfig
    from daemon.learn.trainer_process import TRAINER_BUDGET_SHARE
    from trainer.train import fit_deadline

    timeout = RetrainConfig().timeout_minutes
    fit_seconds = fit_deadline(0.0, TRAINER_BUDGET_SHARE * timeout) - walk * k - fixed
    print(f"timeout {timeout:g} min: the trainer's time budget fits "
          f"{max(0, int(fit_seconds // epoch_15k))} epochs, then it exports (early stopping "
          "may end sooner)")
    print(f"cold first run would decode {15_000} songs: ~{per_song_decode * 15_000 / 60:.0f} min"
          " on this machine (the nightly decodes none)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
