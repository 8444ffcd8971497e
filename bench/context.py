"""The album/artist context, measured: song accuracy audio-only vs with context on a
generated station whose albums are fully, partly and not at all tagged.

    .venv/bin/python bench/context.py [--part accuracy|tagless|view|all] [--genres 4]
        [--albums 6] [--songs 5] [--mix 0.8] [--wrong 0.1] [--epochs 4] [--requests 200]

A training library (like the station's songs, all tagged, 4 albums of 6 songs per genre,
one artist each) trains a CNN with the real trainer (--family cnn --no-backbone: the
weight and smoothing it fits on its context split land in the bundle). A
separate station library (real encoded files) has, per genre, --albums albums of --songs
songs: a third fully tagged, a third partly (its first two songs untagged), a third not
tagged at all. Each song's audio is its genre mixed with another genre's at --mix, so the
sound alone is sometimes wrong. Every untagged song is scored through the daemon's
Classifier, then with its album's tagged mates (daemon.suggest.mates.Mates,
daemon.suggest.context) at the bundle's fitted values (else the config defaults).
Printed: accuracy audio-only vs with context on all untagged songs, and apart on songs
whose album has a tagged mate and on songs whose album has none (the prior must do no
harm there: the two figures must be equal). Figures, not a pass/fail test.

--part tagless: the same shapes, but as a station's drive holds them and the daemon sees
them: a tagged song carries its genre, album and artist tags, an untagged one NO tags at
all. The daemon's own Library scans it into a real SQLite database (album identities by
daemon.library.albums: a tagless file joins the album its folder's tagged songs agree on),
and the untagged songs are scored by the daemon's Classifier, then given the context the
worker gives them (daemon.suggest.mates.with_context: the mates it counts, the bundle's
fitted weight). Printed: accuracy audio-only vs with context on untagged songs with >= 2
tagged album-mates, with one, and with none (no harm: the figures must be equal), and how
many got a context at all, against the rule before migration 0006 (each tagless file on
its folder's own album) in the same run.

--part view: the "By album" page's latency at 15,000 tracks / 5,000 pending against the
song view in the same run (bench/context_view.py, which also runs on its own).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daemon.audio.featurecache import FeatureCache  # noqa: E402
from daemon.audio.features import CNN, DEFAULT_SPEC  # noqa: E402
from daemon.audio.fingerprint import fingerprint  # noqa: E402
from daemon.cli.demo import VOICES, encode, synthesize  # noqa: E402
from daemon.core.config import ContextConfig  # noqa: E402
from daemon.suggest.bundle import read_metadata  # noqa: E402
from daemon.suggest.context import combine, context_prior  # noqa: E402
from daemon.suggest.mates import Mates  # noqa: E402
from daemon.tags.write import write_tags  # noqa: E402
from trainer.dataset import LabelledSong, load_features  # noqa: E402
from trainer.tournament import judge_bundle  # noqa: E402

OUT = Path(__file__).resolve().parent / "out" / "context"
SR = 22_050


def station(root: Path, genres: tuple[str, ...], albums: int, songs: int, mix: float,
            seed: int, tag: bool = False) -> list[tuple[LabelledSong, str, bool]]:
    """(song, album, tagged) per song of the station library, written as real files
    (`tag`: every song tagged with its genre, album and artist = the album's name)."""
    rng = np.random.default_rng(seed)
    out = []
    for g, genre in enumerate(genres):
        for a in range(albums):
            album = f"{genre} Album {a + 1}"
            kind = a % 3  # 0 fully, 1 partly, 2 not tagged
            for i in range(songs):
                path = root / album / f"{i + 1:02d}.flac"
                other = genres[(g + 1 + int(rng.integers(len(genres) - 1))) % len(genres)]
                if not path.exists():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    seed_i = int(rng.integers(1 << 31))
                    audio = (synthesize(genre, 6.0, SR, seed_i)
                             + mix * synthesize(other, 6.0, SR, seed_i + 1))
                    encode(path, audio / (1 + mix), SR)
                    if tag:
                        write_tags(path, title=f"{album} {i + 1}", artist=album,
                                   album=album, genre=genre)
                tagged = tag or kind == 0 or (kind == 1 and i >= 2)
                rel = path.relative_to(root).as_posix()
                out.append((LabelledSong(path, rel, genre, album, fingerprint(path)), album,
                            tagged))
    return out


def train(library: Path, out: Path, cache: Path, epochs: int) -> Path:
    if not (out / "model.onnx").exists():
        subprocess.run([sys.executable, "-m", "trainer", "train", "--library", str(library),
                        "--out", str(out), "--cache", str(cache), "--epochs", str(epochs),
                        "--min-songs", "4", "--family", "cnn", "--no-backbone"], check=True)
    return out / "model.onnx"


def accuracy(args: argparse.Namespace) -> None:
    genres = tuple(VOICES)[:args.genres]
    base = OUT / f"g{args.genres}-a{args.albums}-s{args.songs}-m{args.mix}"
    started = time.monotonic()
    # The training library sounds like the station (mixed genres), every song tagged:
    # 4 albums (artists) of 6 songs per genre, so big enough albums give the trainer its
    # context split.
    station(base / "train", genres, 4, 6, args.mix, seed=3, tag=True)
    bundle = train(base / "train", base / "model", base / "cache", args.epochs)
    songs = station(base / "station", genres, args.albums, args.songs, args.mix, seed=7)
    print(f"library and model ready in {time.monotonic() - started:.0f} s", flush=True)
    cache = FeatureCache(base / "cache", DEFAULT_SPEC)
    load_features([s for s, _, _ in songs], cache)
    metadata = read_metadata(bundle)
    classes = tuple(metadata["classes"])
    fitted = metadata.get("context") or {}
    weight = float(fitted.get("weight", ContextConfig().weight))
    smoothing = float(fitted.get("smoothing", ContextConfig().smoothing))
    untagged = [s for s, _, tagged in songs if not tagged]
    probs, _ = judge_bundle(bundle, untagged, {CNN: cache}, classes)
    album_counts: dict[str, dict[str, int]] = {}
    for song, album, tagged in songs:
        if tagged:
            counts = album_counts.setdefault(album, {})
            counts[song.genre] = counts.get(song.genre, 0) + 1
    truth = np.array([classes.index(s.genre) for s in untagged])
    combined, has_mate = probs.copy(), np.zeros(len(untagged), bool)
    for i, song in enumerate(untagged):
        mates = Mates(album_counts.get(song.artist_key, {}), {})
        if mates:
            has_mate[i] = True
            combined[i] = combine(probs[i], context_prior(mates.counts(), classes, smoothing),
                                  weight)
    fit = json.loads((bundle.parent / "report.json").read_text()).get("context") or {}
    how = (f"fitted by the trainer on the {fit.get('fitted_on')}, {fit.get('songs', 0)} "
           "held-out songs" if fitted else "config defaults: not fitted")
    print(f"context: weight {weight:g}, smoothing {smoothing:g} ({how})")
    for label, rows in (("all untagged songs", np.ones(len(untagged), bool)),
                        ("album has a tagged mate", has_mate),
                        ("album has no tagged mate", ~has_mate)):
        n = int(rows.sum())
        if not n:
            continue
        audio = float((probs[rows].argmax(1) == truth[rows]).mean())
        both = float((combined[rows].argmax(1) == truth[rows]).mean())
        print(f"  {label:<26} {n:>4} songs: accuracy {audio:6.1%} audio-only -> "
              f"{both:6.1%} with context (x{both / audio if audio else float('nan'):.2f})")


def tagless_station(root: Path, genres: tuple[str, ...], albums: int, songs: int,
                    mix: float, wrong: float, seed: int) -> dict[str, str]:
    """The station library of --part tagless as real files: per genre, --albums albums of
    --songs songs by one artist each, a third fully tagged, a third partly (its first two
    songs have no tags at all), a third with no tags at all; a tagged song's genre tag is
    another genre's at the rate `wrong` (--wrong). {rel: true genre}."""
    rng = np.random.default_rng(seed)
    truth = {}
    for g, genre in enumerate(genres):
        for a in range(albums):
            album, artist = f"{genre} Album {a + 1}", f"{genre} Band {a + 1}"
            kind = a % 3  # 0 fully, 1 partly, 2 not tagged
            for i in range(songs):
                path = root / album / f"{i + 1:02d}.flac"
                other = genres[(g + 1 + int(rng.integers(len(genres) - 1))) % len(genres)]
                seed_i = int(rng.integers(1 << 31))
                tag = other if rng.random() < wrong else genre
                if not path.exists():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    audio = (synthesize(genre, 6.0, SR, seed_i)
                             + mix * synthesize(other, 6.0, SR, seed_i + 1))
                    encode(path, audio / (1 + mix), SR)
                    if kind == 0 or (kind == 1 and i >= 2):
                        write_tags(path, title=f"{album} {i + 1}", artist=artist,
                                   album=album, genre=tag)
                truth[path.relative_to(root).as_posix()] = genre
    return truth


def tagless(args: argparse.Namespace) -> None:
    from sqlalchemy import select

    from daemon.core.config import parse_config
    from daemon.core.db.engine import open_database
    from daemon.core.db.models import Track
    from daemon.library.albums import album_folder, album_key
    from daemon.library.reconcile import Library
    from daemon.suggest.mates import mates_for, settings_for, with_context
    from daemon.tags.genres import load_genre_map

    genres = tuple(VOICES)[:args.genres]
    base = OUT / f"g{args.genres}-a{args.albums}-s{args.songs}-m{args.mix}"
    started = time.monotonic()
    station(base / "train", genres, 4, 6, args.mix, seed=3, tag=True)
    bundle = train(base / "train", base / "model", base / "cache", args.epochs)
    root = base / f"tagless-w{args.wrong}"
    truth = tagless_station(root, genres, args.albums, args.songs, args.mix, args.wrong,
                            seed=7)
    db = root.parent / f"{root.name}.db"
    db.unlink(missing_ok=True)
    config = parse_config({"library": {"root": str(root), "settle_seconds": 1.0},
                           "state_dir": str(base / "state")}, "bench")
    engine, sessions = open_database(f"sqlite:///{db}")
    library = Library(config, sessions, load_genre_map())
    try:
        library.reconcile(now=0.0)
        while library.settle_due(now=10.0):
            pass
    finally:
        library.close()
    with sessions() as session:
        rows = session.execute(select(Track.id, Track.path, Track.fingerprint)
                               .where(Track.canonical_genre.is_(None))
                               .order_by(Track.path)).all()
    print(f"library scanned and model ready in {time.monotonic() - started:.0f} s: "
          f"{len(truth)} songs, {len(rows)} without tags", flush=True)
    untagged = [LabelledSong(root / rel, rel, truth[rel], "", fp) for _, rel, fp in rows]
    cache = FeatureCache(base / "cache", DEFAULT_SPEC)
    load_features(untagged, cache)
    metadata = read_metadata(bundle)
    classes = tuple(metadata["classes"])
    probs, _ = judge_bundle(bundle, untagged, {CNN: cache}, classes)
    ids = [track_id for track_id, _, _ in rows]
    settings = settings_for(config, metadata)
    with sessions() as session:
        combined, contexts = with_context(session, ids, probs, classes, settings)
        mates = mates_for(session, ids)
        # The baseline, in the same run: the rule before migration 0006, each tagless file
        # on its own folder's album (rolled back).
        for track_id, rel, _ in rows:
            session.get(Track, track_id).album_key = album_key("folder", album_folder(rel))
        session.flush()
        before = sum(c is not None for c in with_context(session, ids, probs, classes,
                                                         settings)[1])
        session.rollback()
    engine.dispose()
    on_album = np.array([sum(mates[i].album.values()) for i in ids])
    got = np.array([c is not None for c in contexts])
    truth_ix = np.array([classes.index(s.genre) for s in untagged])
    print(f"context: weight {settings.weight:g}, smoothing {settings.smoothing:g}; "
          f"{int(got.sum())} of {len(ids)} untagged songs got a context ({before} with "
          "each tagless file on its folder's own album, the rule before migration 0006)")
    for label, rows_ in (("all untagged songs", np.ones(len(ids), bool)),
                         (">= 2 tagged album-mates", on_album >= 2),
                         ("1 tagged album-mate", on_album == 1),
                         ("no tagged mate", ~got)):
        n = int(rows_.sum())
        if not n:
            continue
        audio = float((probs[rows_].argmax(1) == truth_ix[rows_]).mean())
        both = float((combined[rows_].argmax(1) == truth_ix[rows_]).mean())
        print(f"  {label:<26} {n:>4} songs: accuracy {audio:6.1%} audio-only -> "
              f"{both:6.1%} with context ({(both - audio) * 100:+.1f} points)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("accuracy", "tagless", "view", "all"),
                        default="all")
    parser.add_argument("--genres", type=int, default=4)
    parser.add_argument("--albums", type=int, default=6)
    parser.add_argument("--songs", type=int, default=5)
    parser.add_argument("--mix", type=float, default=0.8)
    parser.add_argument("--wrong", type=float, default=0.1,
                        help="--part tagless: share of tagged songs whose genre tag is wrong")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--requests", type=int, default=200, help="album view requests")
    args = parser.parse_args()
    if args.part in ("accuracy", "all"):
        accuracy(args)
    if args.part in ("tagless", "all"):
        tagless(args)
    if args.part in ("view", "all"):
        import context_view  # bench/ is on sys.path when this runs as a script

        context_view.bench(args.requests)


if __name__ == "__main__":
    main()
