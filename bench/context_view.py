"""Benchmark: the review page's "By album" view with 15,000 tracks in ~1,200 albums and 5,000
pending suggestions, against the song view in the same run (the baseline).

A real SQLite file (rows bulk-inserted as the worker and the record step leave them: every
track with its album_key; the 5,000 pending songs spread over the albums at random, the
rest tagged, some albums' tagged songs disagreeing), the real WebServer (waitress in a
thread), requested over one keep-alive HTTP connection a few hundred times per page:

    song view    / (most sure first): the baseline
    albums       /albums (most in agreement first), by most pending, a genre filter,
                 page 20, the consistency audit's confirm step for one album
    albums (after every change)  /albums with a track moved before each request, so the
                 page's aggregate is never reused (list_albums' cache) and is redone
    SQL          list_albums() alone (the aggregate + the page's songs), no HTTP/template

Target: album page p95 <= 150 ms, like the song view. Cached under bench/out/context_view/.
Not pass/fail.

    .venv/bin/python bench/context_view.py [--requests 200]
"""

from __future__ import annotations

import argparse
import http.client
import random
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import insert, update  # noqa: E402

from daemon.core.config import parse_config  # noqa: E402
from daemon.core.db.engine import open_database  # noqa: E402
from daemon.core.db.models import Suggestion, Track, utcnow  # noqa: E402
from daemon.library.albums import album_key  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from review import percentiles, time_get  # noqa: E402  (bench/review.py: the song view's bench)

OUT = Path(__file__).resolve().parent / "out" / "context_view"
TRACKS, ALBUMS, PENDING = 15_000, 1_200, 5_000
GENRES = ("Blues", "Classical", "Country", "Electronic", "Folk", "Hip-Hop", "Jazz", "Metal",
          "Pop", "Rock")
# One album in this many has a tagged song whose genre differs from the album's.
MIXED_EVERY = 15


def _album_of(i: int) -> int:
    return i * ALBUMS // TRACKS


def build_db(state: Path) -> None:
    marker = state / ".built"
    if marker.exists() and marker.read_text() == f"{TRACKS}/{ALBUMS}/{PENDING}":
        return
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    engine, _ = open_database(f"sqlite:///{state / 'genretagger.db'}")
    rng = random.Random(13)
    now = utcnow()
    pending = set(rng.sample(range(TRACKS), PENDING))
    tracks, suggestions = [], []
    for i in range(TRACKS):
        a = _album_of(i)
        artist, album = f"Artist {a // 10:03d}", f"Album {a:04d}"
        genre = GENRES[a % len(GENRES)]
        tag = GENRES[(a + 1) % len(GENRES)] if a % MIXED_EVERY == 0 and i % 2 else genre
        is_pending = i in pending
        tracks.append(dict(
            id=i + 1, path=f"{artist}/{album}/{i:05d} Song.mp3", size=4_000_000 + i,
            mtime=1.7e9 + i, fingerprint=f"{i:032x}", format="mp3", duration=200.0,
            title=f"Song {i}", artist=artist, album=album, album_artist=artist,
            album_key=album_key("album", album.lower(), artist.lower()), compilation=False,
            raw_genre=None if is_pending else tag, canonical_genre=None if is_pending else tag,
            state="suggested" if is_pending else "tagged", attempts=0, first_seen=now,
            last_seen=now, state_changed_at=now))
        if is_pending:
            # Mostly the album's genre, sometimes another: albums with disagreeing songs.
            first = genre if rng.random() < 0.8 else rng.choice(GENRES)
            rest = [g for g in GENRES if g != first]
            c = round(rng.uniform(0.4, 0.99), 4)
            top = [[first, c], [rest[0], round((1 - c) * 0.7, 4)],
                   [rest[1], round((1 - c) * 0.3, 4)]]
            suggestions.append(dict(id=len(suggestions) + 1, track_id=i + 1, genre=first,
                                    confidence=c, top=top, status="pending", created_at=now))
    with engine.begin() as conn:
        conn.execute(insert(Track), tracks)
        conn.execute(insert(Suggestion), suggestions)
    engine.dispose()
    marker.write_text(f"{TRACKS}/{ALBUMS}/{PENDING}")


def changed(engine, i: int) -> None:
    """Something the album list depends on moved (a track's state change time)."""
    with engine.begin() as conn:
        conn.execute(update(Track).where(Track.id == 1 + i % TRACKS)
                     .values(state_changed_at=utcnow()))


def bench(requests: int) -> None:
    from daemon.review.albums import AlbumFilter, count_mixed, list_albums
    from daemon.review.web import WebServer
    from daemon.review.web.albums import PAGE_SIZE

    state, library = OUT / "state", OUT / "library"
    library.mkdir(parents=True, exist_ok=True)
    build_db(state)
    config = parse_config({"library": {"root": str(library)}, "state_dir": str(state)})
    engine, sessions = open_database(config.db_url)
    with sessions() as session:
        albums, total = list_albums(session, limit=1)
        mixed = count_mixed(session)
    key = albums[0].key
    print(f"{TRACKS} tracks in {ALBUMS} albums, {PENDING} pending suggestions: "
          f"{total} albums to review, {mixed} with disagreeing tagged songs")
    server = WebServer(config, sessions, port=0)
    server.start()
    results = {}
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        pages = [
            ("song view (baseline)", "/"),
            ("albums (most agreeing first)", "/albums"),
            ("albums (most pending first)", "/albums?sort=pending"),
            ("albums (genre filter)", "/albums?genre=Jazz"),
            ("albums (page 20)", "/albums?page=20"),
            ("album confirm step", f"/albums/{key}/confirm?genre=Jazz&scope=relabel"),
        ]
        for _, url in pages:
            time_get(conn, url, 5)  # warm up templates, SQLite page cache
        print(f"page latency over {requests} requests each (one keep-alive connection):")
        for name, url in pages:
            p50, p95 = percentiles(time_get(conn, url, requests))
            results[name] = (p50, p95)
            print(f"  {name:<32} p50 {p50:7.1f} ms   p95 {p95:7.1f} ms")
        # A decision or a new suggestion between two requests: the aggregate is redone.
        p50, p95 = percentiles(time_get(conn, "/albums", requests,
                                        before=lambda i: changed(engine, i)))
        results["albums (after every change)"] = (p50, p95)
        print(f"  {'albums (after every change)':<32} p50 {p50:7.1f} ms   p95 {p95:7.1f} ms")
        conn.close()
    finally:
        server.close()
    times = []
    with sessions() as session:
        for _ in range(requests):
            started = time.perf_counter()
            list_albums(session, AlbumFilter(), limit=PAGE_SIZE)
            times.append(time.perf_counter() - started)
    p50, p95 = percentiles(times)
    print(f"  {f'SQL: list_albums ({PAGE_SIZE} albums)':<32} p50 {p50:7.1f} ms   p95 {p95:7.1f} ms")
    engine.dispose()
    base, album = results["song view (baseline)"][1], results["albums (most agreeing first)"][1]
    worst = max(p95 for name, (_, p95) in results.items() if name.startswith("albums"))
    cold = results["albums (after every change)"][1]
    print(f"album page p95 {album:.1f} ms, {cold:.1f} ms after every change (worst album view "
          f"{worst:.1f} ms; target <= 150 ms); {album / max(base, 1e-6):.2f}x / "
          f"{cold / max(base, 1e-6):.2f}x the song view's {base:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    bench(parser.parse_args().requests)


if __name__ == "__main__":
    main()
