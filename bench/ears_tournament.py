"""The nightly tournament measured on a generated library (bench/ears.py --part tournament).

On daemon.cli.demo's make_library (--genres x --songs-per-genre songs, --artists-per-genre
artists each; cached in bench/out/ears-library-*/), or with --hard on songs that mix their
genre with another genre and noise (hard_library), in this process:
  - night 1: trainer.train.train, --family all, cold caches: per family song accuracy and
    macro-F1 on the artist-disjoint holdout (the tournament table), training seconds, and
    where the run's time went (decode, embed, fit, bundles, judge);
  - inference songs/s of each family's bundle through the daemon's Classifier (features
    from the cache, one ORT thread, the embedding output run as the worker runs it);
  - night 2: the same run on warm caches (warm start from night 1, as the retrainer does);
  - the few-shot curve: CNN and backbone head trained on 1, 3, 5, 10 songs per genre
    (spread over the genre's training artists), judged on the same test songs;
  - the nightly wall time extrapolated to 15,000 songs (see `extrapolate`).
Figures, not a pass/fail test. Load average printed: the machine may be shared.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from argparse import Namespace
from collections import defaultdict
from pathlib import Path

import numpy as np

from daemon.audio.featurecache import FeatureCache
from daemon.audio.features import BACKBONE, BACKBONE_SPEC, CNN, DEFAULT_SPEC, EMBEDDING_SPEC
from daemon.cli.demo import VOICES, encode, make_library, synthesize
from daemon.learn.metrics import song_metrics
from daemon.suggest.classifier import Classifier, song_probabilities
from daemon.tags.write import write_tags

OUT = Path(__file__).resolve().parent / "out"
STATION_SONGS = 15_000
FEW_SHOT = (1, 3, 5, 10)
# Share of the songs in the test split (trainer.split.TEST_SHARE, stratified).
TEST_SHARE = 0.15


def hard_library(root: Path, genres: tuple[str, ...], per_genre: int, artists: int,
                 seed: int = 11, sr: int = 22_050) -> None:
    """make_library's layout and tags, each song its genre's sound under another genre's
    (a different one per song, as loud) and noise at half their RMS: the demo's own songs
    are separable by any model, these are not."""
    rng = np.random.default_rng(seed)
    for genre in genres:
        others = [g for g in genres if g != genre]
        for i in range(per_genre):
            artist = f"{genre} Artist {i % artists + 1}"
            path = root / artist / f"{genre} Song {i + 1:03d}.flac"
            path.parent.mkdir(parents=True, exist_ok=True)
            seconds = float(rng.uniform(20, 40))
            song = synthesize(genre, seconds, sr, int(rng.integers(1 << 31)))
            song = song + synthesize(str(rng.choice(others)), seconds, sr,
                                     int(rng.integers(1 << 31)))[:len(song)]
            song = song + rng.normal(0, 0.5 * float(np.sqrt(np.mean(song ** 2))), song.shape)
            encode(path, (song / max(1e-9, float(np.abs(song).max())) * 0.9).astype(np.float32),
                   sr)
            write_tags(path, title=f"{genre} Song {i + 1}", artist=artist,
                       album=f"{artist} Sessions", genre=genre)


def library(args: Namespace) -> Path:
    kind = "hard" if args.hard else "plain"
    root = OUT / f"ears-library-{kind}-{args.genres}x{args.songs_per_genre}"
    if not (root / ".complete").exists():
        shutil.rmtree(root, ignore_errors=True)
        started = time.perf_counter()
        genres = tuple(VOICES)[:args.genres]
        if args.hard:
            hard_library(root, genres, args.songs_per_genre, args.artists_per_genre)
        else:
            make_library(root, songs_per_genre=args.songs_per_genre, genres=genres,
                         untagged_share=0.0, seconds=(20, 40),
                         artists_per_genre=args.artists_per_genre, broken=0, seed=11)
        (root / ".complete").write_text("")
        print(f"library generated in {time.perf_counter() - started:.0f} s")
    return root


def night(root: Path, out: Path, cache: Path, epochs: int, warm_start: Path | None,
          **options) -> dict:
    """One trainer.train.train run; `options` go to it (e.g. songs_per_epoch)."""
    from trainer.train import train

    started = time.perf_counter()
    report = train(root, out, cache_dir=cache, epochs=epochs, min_songs=10, seed=3,
                   warm_start=warm_start, progress=False, **options)
    report["wall_s"] = time.perf_counter() - started
    return report


def inference(out: Path, families: list[str], cache: Path, songs: list[str]) -> dict[str, float]:
    """Songs/s of each bundle through the Classifier (cached inputs, 1 thread)."""
    caches = {CNN: FeatureCache(cache, DEFAULT_SPEC), BACKBONE: FeatureCache(cache, BACKBONE_SPEC)}
    rates = {}
    for family in families:
        classifier = Classifier.load(out / f"{family}.onnx", threads=1)
        kinds = classifier.needs | ({BACKBONE} if classifier.has_embedding else set())
        inputs = [{k: caches[k].get(fp) for k in kinds} for fp in songs]
        classifier.predict(inputs[:2])
        started, done = time.perf_counter(), 0
        while time.perf_counter() - started < 3.0 or done < len(inputs):
            for i in range(0, len(inputs), 8):  # the worker's batches
                classifier.predict(inputs[i:i + 8])
            done += len(inputs)
        rates[family] = done / (time.perf_counter() - started)
    return rates


def pick(songs, k: int, seed: int):
    """k training songs per genre, spread over its artists (round robin, seeded)."""
    rng = np.random.default_rng(seed)
    by_genre = defaultdict(lambda: defaultdict(list))
    for s in songs:
        by_genre[s.genre][s.artist_key].append(s)
    chosen = []
    for genre in sorted(by_genre):
        artists = [list(v) for _, v in sorted(by_genre[genre].items())]
        for a in artists:
            rng.shuffle(a)
        rng.shuffle(artists)
        taken, i = [], 0
        while len(taken) < k and any(artists):
            if artists[i % len(artists)]:
                taken.append(artists[i % len(artists)].pop())
            i += 1
        chosen += taken
    return chosen


def few_shot(split: dict, cache: Path, epochs: int) -> list[dict]:
    """CNN vs backbone head trained on k songs per genre, on the same test songs."""
    from trainer.dataset import LabelledSong
    from trainer.families import window_probs
    from trainer.fit import configure, fit, predict_clips
    from trainer.head import fit_head, song_embedding

    configure(3, os.cpu_count())
    feats, embs = FeatureCache(cache, DEFAULT_SPEC), FeatureCache(cache, EMBEDDING_SPEC)
    as_songs = {name: [LabelledSong(Path(r["path"]), r["path"], r["genre"],
                                    r["path"].rsplit("/", 1)[0], r["fingerprint"])
                       for r in rows] for name, rows in split.items()}
    test, validation = as_songs["test"], as_songs["validation"]
    classes = tuple(sorted({s.genre for s in as_songs["train"]}))
    truth = [s.genre for s in test]
    rows = []
    for k in FEW_SHOT:
        train = pick(as_songs["train"], k, seed=k)
        started = time.perf_counter()
        model, _ = fit(train, validation, classes, feats, epochs=epochs, seed=3, verbose=0)
        cnn_s = time.perf_counter() - started
        cnn = song_metrics(song_probabilities(predict_clips(model, test, feats, len(classes))),
                           truth, classes)
        started = time.perf_counter()
        means = np.stack([song_embedding(embs.get(s.fingerprint)) for s in train])
        head = fit_head(means, [s.genre for s in train], [s.artist_key for s in train], classes)
        head_s = time.perf_counter() - started
        bb = song_metrics(song_probabilities(window_probs(head, test, embs)), truth, classes)
        rows.append({"k": k, "train_songs": len(train), "cnn": cnn, "backbone": bb,
                     "cnn_s": cnn_s, "head_s": head_s})
        print(f"  {k:>2} songs/genre ({len(train):>3} songs): cnn accuracy {cnn['accuracy']:.3f}"
              f" macro-F1 {cnn['macro_f1']:.3f} ({cnn_s:.0f} s) | backbone head accuracy "
              f"{bb['accuracy']:.3f} macro-F1 {bb['macro_f1']:.3f} ({head_s:.2f} s)", flush=True)
    return rows


def extrapolate(first: dict, second: dict, n: int) -> dict[str, float]:
    """Nightly wall time at STATION_SONGS songs, phase by phase.

    Linear in songs: decoding and embedding (first night only: cached after, a later
    night decodes and embeds only the new songs), the CNN's fit (songs x epochs), the
    head's fit, judging (the test songs, ~15%, through every bundle: the backbone and
    ensemble bundles on the songs' cached embeddings). About constant: writing the
    bundles (parity checks on a fixed number of clips and patches) beyond the ensemble's
    scoring. The second night's decode/embed are taken as measured (walk + cache reads).
    """
    scale = STATION_SONGS / n
    t1, t2 = first["timings"], second["timings"]
    one = {"decode": t1["decode_s"] * scale, "embed": t1["embed_s"] * scale,
           "fit": t1["fit_s"] * scale, "bundles": t1["bundles_s"], "judge": t1["judge_s"] * scale}
    two = {"decode+embed (cached)": (t2["decode_s"] + t2["embed_s"]) * scale,
           "fit": t2["fit_s"] * scale, "bundles": t2["bundles_s"],
           "judge": t2["judge_s"] * scale}
    return {"first": one, "second": two}


def tournament(args: Namespace) -> None:
    root = library(args)
    base = OUT / f"ears-tournament-{'hard' if args.hard else 'plain'}"
    shutil.rmtree(base, ignore_errors=True)
    cache = base / "cache"
    n_files = sum(1 for p in root.rglob("*") if p.is_file() and p.name != ".complete")
    print(f"\n== tournament ({'hard' if args.hard else 'plain'} library): {n_files} songs "
          f"({args.genres} genres x {args.songs_per_genre}, "
          f"{args.artists_per_genre} artists each), epochs {args.epochs}; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    first = night(root, base / "night1", cache, args.epochs, None)
    second = night(root, base / "night2", cache, args.epochs, base / "night1")
    table = first["tournament"]
    split = json.loads((base / "night1" / "split.json").read_text())
    test_fps = [r["fingerprint"] for r in split["test"]]
    rates = inference(base / "night1", [r["family"] for r in table["rows"]], cache, test_fps)
    print(f"\nnight 1 (cold caches), {table['holdout_songs']} artist-disjoint test songs; "
          f"winner {table['winner']}")
    print(f"{'family':10} {'accuracy':>9} {'macro-F1':>9} {'ECE':>6} {'train s':>8} "
          f"{'infer songs/s':>14}")
    for row in table["rows"]:
        print(f"{row['family']:10} {row['accuracy']:9.3f} {row['macro_f1']:9.3f} "
              f"{row['ece']:6.3f} {row['train_seconds']:8.1f} {rates[row['family']]:14.1f}")
    for name, report in (("night 1", first), ("night 2", second)):
        t = report["timings"]
        print(f"{name}: wall {report['wall_s']:.0f} s = decode {t['decode_s']} + embed "
              f"{t['embed_s']} + fit {t['fit_s']} + bundles {t['bundles_s']} + judge "
              f"{t['judge_s']} s; cache {json.dumps(report['cache'], sort_keys=True)}")
    print("\nfew-shot (same test songs; CNN "
          f"{args.epochs} epochs from scratch, head = standardise + logistic regression):")
    few_shot(split, cache, args.epochs)
    model = extrapolate(first, second, n_files)
    for night_name, phases in model.items():
        total = sum(phases.values())
        print(f"{night_name} night at {STATION_SONGS:,} songs: {total / 60:.0f} min ("
              + ", ".join(f"{k} {v / 60:.1f}" for k, v in phases.items()) + " min)")
    print(f"load average at end: {os.getloadavg()[0]:.1f} (cpus={os.cpu_count()})")
