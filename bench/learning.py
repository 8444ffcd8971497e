"""The learning loop on a messy station, measured on songs by artists it has never seen.

    .venv/bin/python bench/learning.py [--part served|fewshot|all] [--max-songs 30]
        [--mix 0.6] [--unseen 6] [--epochs 4] [--seed 3]

--part served: a messy station (tests/messy.py: genres of 1 to --max-songs songs, 1-6
artists each, wrong tags, tagless album-mates, a one-artist genre, a one-song genre) is
trained by the real trainer (`python -m trainer train`, the tournament of every family:
what the nightly run does; its wall time is printed). Then, on --unseen songs per genre
by new artists: the served model.onnx's song accuracy through the daemon's Classifier,
against the reference of the same run: the same backbone embeddings and the same head
(trainer.head.fit_head, C chosen by its own cross-validation) fitted on every labelled
song of the served genres. Also printed: the held-out fit's figures (what the gate and
the model page show) and how many songs each was fitted on.

--part fewshot: 1, 3, 5 and 10 songs per genre (one pool of songs; each library holds
the first k of each genre, by up to 3 artists): the served model (--family backbone,
--min-songs-backbone 1) against the head fitted on all k songs per genre, both on the
unseen songs. A library too small to train says why instead.

Context with and without (songs with tagged album-mates) is measured by bench/context.py.
Figures, not a pass/fail test. Everything under bench/out/learning (kept between runs:
encoded songs and the feature cache are reused).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from messy import GENRES, make_messy_station, make_unseen_artists  # noqa: E402

from daemon.audio.featurecache import FeatureCache  # noqa: E402
from daemon.audio.features import BACKBONE_SPEC, DEFAULT_SPEC  # noqa: E402
from daemon.suggest.bundle import read_metadata  # noqa: E402
from daemon.tags.genres import load_genre_map  # noqa: E402
from trainer.dataset import find_labelled_songs, load_features  # noqa: E402
from trainer.evaluate import evaluate_model  # noqa: E402
from trainer.families import embed_songs, open_backbone  # noqa: E402
from trainer.head import fit_head, song_embedding  # noqa: E402
from trainer.train import WINDOWS  # noqa: E402

OUT = Path(__file__).resolve().parent / "out" / "learning"


def train(library: Path, out: Path, cache: Path, *args: str) -> tuple[float, str | None]:
    """`python -m trainer train` -> (wall seconds, None or why it made no model)."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "trainer", "train", "--library", str(library),
                           "--out", str(out), "--cache", str(cache), *args],
                          capture_output=True, text=True)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        why = (out / "not_trained.json")
        return seconds, (json.loads(why.read_text())["reason"] if why.is_file()
                         else done.stderr.strip().splitlines()[-1])
    return seconds, None


def embedded(library: Path, cache: Path) -> tuple[list, np.ndarray]:
    """The library's labelled songs and their mean backbone embeddings (the trainer's
    caches and code: trainer.dataset, trainer.families)."""
    backbone = open_backbone(cache, True, _windows(BACKBONE_SPEC))
    songs, _ = find_labelled_songs(library, load_genre_map(None))
    songs, _, _ = load_features(songs, FeatureCache(cache, _windows(DEFAULT_SPEC)),
                                patches=backbone.patches, embeddings=backbone.embeddings)
    embed_songs(songs, backbone)
    return songs, np.stack([song_embedding(backbone.embeddings.get(s.fingerprint))
                            for s in songs])


def _windows(spec):
    import dataclasses

    return dataclasses.replace(spec, clips_per_song=WINDOWS)


def reference(library: Path, unseen: Path, cache: Path, classes: list[str]) -> tuple[float, int]:
    """The same embedding + head fitted on every labelled song of `classes`: (accuracy on
    the unseen songs of those genres, songs fitted on)."""
    songs, x = embedded(library, cache)
    keep = [i for i, s in enumerate(songs) if s.genre in classes]
    head = fit_head(x[keep], [songs[i].genre for i in keep],
                    [songs[i].artist_key for i in keep], classes)
    test, xt = embedded(unseen, cache)
    mine = [i for i, s in enumerate(test) if s.genre in classes]
    predicted = head.probabilities(xt[mine]).argmax(axis=1)
    truth = [classes.index(test[i].genre) for i in mine]
    return float(np.mean(predicted == np.array(truth))), len(keep)


def served_part(args) -> None:
    base = OUT / f"served-{args.seed}-{args.max_songs}-{args.mix:g}"
    library, unseen, cache, out = (base / "library", base / "unseen", OUT / "cache",
                                   base / "run")
    if not library.exists():
        station = make_messy_station(library, seed=args.seed, max_songs=args.max_songs,
                                     mix=args.mix)
        print(f"station: {len(station.songs)} songs, {len(station.tagged())} tagged, "
              f"{sum(s.wrong for s in station.songs)} wrongly; per genre "
              f"{dict(station.tagged_per_genre())}")
    if not unseen.exists():
        make_unseen_artists(unseen, GENRES, args.unseen, mix=args.mix)
    shutil.rmtree(out, ignore_errors=True)
    seconds, why = train(library, out, cache, "--epochs", str(args.epochs), "--min-songs", "8",
                         "--seed", str(args.seed))
    if why:
        print(f"not trained ({seconds:.0f} s): {why}")
        return
    report = json.loads((out / "report.json").read_text())
    meta = read_metadata(out / "model.onnx")
    classes = list(meta["classes"])
    served = evaluate_model(out / "model.onnx", unseen, cache_dir=cache)
    held = evaluate_model(out / "held_out.onnx", unseen, cache_dir=cache)
    ref, ref_songs = reference(library, unseen, cache, classes)
    print(f"nightly (the trainer's tournament run) wall time: {seconds:.0f} s "
          f"(timings {report['timings']})")
    print(f"winner {report['family']}; genres {', '.join(classes)}; left out "
          f"{report['left_out']}; not tested {list(report['training_set']['not_tested'])}")
    print(f"held-out fit: {report['training_set']['songs']['train']} training songs; "
          f"figures on its {report['metrics']['test']['n_songs']} test songs: accuracy "
          f"{report['metrics']['test']['song_accuracy']:.3f}")
    print(f"on {served['n_songs']} unseen-artist songs: served (refit on "
          f"{meta['fitted_on_songs']} songs) {served['accuracy']:.3f}; held-out fit "
          f"{held['accuracy']:.3f}; reference head on every label ({ref_songs} songs) "
          f"{ref:.3f}; served - reference {100 * (served['accuracy'] - ref):+.1f} points")


def fewshot_part(args) -> None:
    base = OUT / f"fewshot-{args.mix:g}"
    pool, unseen, cache = base / "pool", base / "unseen", OUT / "cache"
    genres = GENRES[:4]
    if not pool.exists():
        make_unseen_artists(pool, genres, 10, seed=7, mix=args.mix)  # 3 artists per genre
    if not unseen.exists():
        make_unseen_artists(unseen, genres, args.unseen, seed=1000, mix=args.mix, artists=2)
        for folder in unseen.iterdir():  # other artists than the pool's
            folder.rename(folder.with_name(folder.name.replace("Newcomer", "Stranger")))
    print(f"few-shot: {len(genres)} genres, served (--family backbone) vs the head on all "
          "k songs per genre, on unseen artists")
    for k in (1, 3, 5, 10):
        library = base / f"k{k}"
        if not library.exists():
            for genre in genres:
                for path in sorted(pool.glob(f"{genre} Newcomer */*")):
                    if int(path.name[:2]) <= k:
                        target = library / path.relative_to(pool)
                        target.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(path, target)
        out = base / f"run-k{k}"
        shutil.rmtree(out, ignore_errors=True)
        seconds, why = train(library, out, cache, "--family", "backbone",
                             "--min-songs-backbone", "1", "--seed", str(args.seed))
        ref, ref_songs = reference(library, unseen, cache, sorted(genres))
        if why:
            print(f"  k={k:>2}: not trained ({why}); reference head {ref:.3f}")
            continue
        meta = read_metadata(out / "model.onnx")
        served = evaluate_model(out / "model.onnx", unseen, cache_dir=cache)
        print(f"  k={k:>2}: served {served['accuracy']:.3f} (fitted on "
              f"{meta['fitted_on_songs']} songs); reference {ref:.3f} ({ref_songs} songs); "
              f"{100 * (served['accuracy'] - ref):+.1f} points; {seconds:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("served", "fewshot", "all"), default="all")
    parser.add_argument("--max-songs", type=int, default=30)
    parser.add_argument("--mix", type=float, default=0.6)
    parser.add_argument("--unseen", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if args.part in ("served", "all"):
        served_part(args)
    if args.part in ("fewshot", "all"):
        fewshot_part(args)


if __name__ == "__main__":
    main()
