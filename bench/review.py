"""Benchmark: the review page with 15,000 tracks / 5,000 pending suggestions, and write-back.

Page latency: the real WebServer (waitress in a thread) on a real SQLite file, requested
over one keep-alive HTTP connection, a few hundred times per page:

    static      /static/style.css: the server's floor (no DB, no template)
    queue       / (most sure first), / least sure first, a genre + folder filter, page 90
    bulk        /bulk?threshold=90 (the count shown before a bulk accept)
    history     /history (3,000 decisions)
    baseline    the queue page's SQL with the (status, confidence) index disabled
                (SQLite's unary "+"), run directly: what the index saves per page

Write-back: `write_genre_atomically` on N local files (the genre fields read first, as
the Writer does; copy in the same folder, set the tag, fsync, re-read, rename, fsync the
folder), then undo: the same files' genre fields put back (`restore_copy`), each against a
plain copy + fsync + rename of the same files (the least an atomic rewrite can cost); and
the Writer component end to end (decisions in the DB -> tags in files -> Track rows
updated), then every decision undone and the Writer putting every file back.

Cached under bench/out/review/. Not pass/fail.

    .venv/bin/python bench/review.py [--requests 300] [--files 100] [--writes-only]
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import insert, select, text  # noqa: E402

from daemon.cli.demo import FORMATS, VOICES, encode, synthesize  # noqa: E402
from daemon.core.config import parse_config  # noqa: E402
from daemon.core.db.engine import open_database  # noqa: E402
from daemon.core.db.models import Decision, Suggestion, Track, utcnow  # noqa: E402

OUT = Path(__file__).resolve().parent / "out" / "review"
TRACKS, PENDING, DECISIONS = 15_000, 5_000, 3_000
GENRES = tuple(VOICES)


def build_db(state: Path, library: Path) -> None:
    marker = state / ".built"
    if marker.exists() and marker.read_text() == f"{TRACKS}/{PENDING}/{DECISIONS}":
        return
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    library.mkdir(parents=True, exist_ok=True)
    engine, _ = open_database(f"sqlite:///{state / 'genretagger.db'}")
    rng = random.Random(1)
    now = utcnow()
    tracks, suggestions, decisions = [], [], []
    for i in range(TRACKS):
        fmt = FORMATS[i % len(FORMATS)].lstrip(".")
        genre = GENRES[i % len(GENRES)]
        state_name = "suggested" if i < PENDING else ("reviewed" if i < PENDING + DECISIONS
                                                      else "tagged")
        tracks.append(dict(
            id=i + 1, path=f"Artist {i // 120:03d}/Album {i // 12:04d}/Song {i:05d}.{fmt}",
            size=4_000_000 + i, mtime=1.7e9 + i, fingerprint=f"{i:032x}", format=fmt,
            duration=180.0 + i % 120, title=f"Song {i}", artist=f"Artist {i // 120:03d}",
            album=f"Album {i // 12:04d}", raw_genre=genre if state_name == "tagged" else None,
            canonical_genre=genre if state_name == "tagged" else None, state=state_name,
            attempts=0, first_seen=now, last_seen=now, state_changed_at=now))
        if i < PENDING + DECISIONS:
            top = sorted(((g, rng.random()) for g in rng.sample(GENRES, 3)),
                         key=lambda t: -t[1])
            total = sum(c for _, c in top) * rng.uniform(1.0, 1.6)
            top = [[g, round(c / total, 4)] for g, c in top]
            suggestions.append(dict(
                id=i + 1, track_id=i + 1, genre=top[0][0], confidence=top[0][1], top=top,
                status="pending" if i < PENDING else "accepted", created_at=now))
        if PENDING <= i < PENDING + DECISIONS:
            decisions.append(dict(
                track_id=i + 1, suggestion_id=i + 1, action="accept", how="single",
                genre=suggestions[-1]["genre"], who="music director", at=now, undone=False,
                write_status="written", write_attempts=1))
    with engine.begin() as conn:
        conn.execute(insert(Track), tracks)
        conn.execute(insert(Suggestion), suggestions)
        conn.execute(insert(Decision), decisions)
    engine.dispose()
    marker.write_text(f"{TRACKS}/{PENDING}/{DECISIONS}")


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return (statistics.median(ordered) * 1000,
            ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] * 1000)


def time_get(conn: http.client.HTTPConnection, url: str, n: int, before=None) -> list[float]:
    """n GETs of url on one keep-alive connection -> seconds each; before(i), when given,
    runs ahead of request i, outside the timing."""
    times = []
    for i in range(n):
        if before is not None:
            before(i)
        started = time.perf_counter()
        conn.request("GET", url)
        response = conn.getresponse()
        body = response.read()
        times.append(time.perf_counter() - started)
        if response.status != 200:
            raise SystemExit(f"{url}: HTTP {response.status}: {body[:200]!r}")
    return times


def time_sql(engine, sql: str, n: int) -> list[float]:
    times = []
    with engine.connect() as conn:
        for _ in range(n):
            started = time.perf_counter()
            conn.execute(text(sql)).fetchall()
            times.append(time.perf_counter() - started)
    return times


QUEUE_SQL = ("SELECT s.*, t.* FROM suggestions s JOIN tracks t ON s.track_id = t.id "
             "WHERE s.status = 'pending' ORDER BY {key} DESC, s.id LIMIT 50 OFFSET 0")


def bench_pages(config, sessions, engine, requests: int) -> None:
    from daemon.review.web import WebServer

    server = WebServer(config, sessions, port=0)
    server.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        pages = [
            ("static", "/static/style.css"),
            ("queue (most sure first)", "/"),
            ("queue (least sure first)", "/?sort=uncertain"),
            ("queue (genre + folder filter)", "/?genre=Jazz&folder=Artist%20010"),
            ("queue (page 90 of 100)", "/?page=90"),
            ("bulk count", "/bulk?threshold=90"),
            ("history", "/history"),
        ]
        time_get(conn, "/", 10)  # warm up templates, SQLite page cache
        print(f"page latency over {requests} requests each (one keep-alive connection):")
        results = {}
        for name, url in pages:
            p50, p95 = percentiles(time_get(conn, url, requests))
            results[name] = (p50, p95)
            print(f"  {name:<32} p50 {p50:7.1f} ms   p95 {p95:7.1f} ms")
        conn.close()
    finally:
        server.close()
    idx = percentiles(time_sql(engine, QUEUE_SQL.format(key="s.confidence"), requests))
    noidx = percentiles(time_sql(engine, QUEUE_SQL.format(key="+s.confidence"), requests))
    print(f"  {'SQL: queue page query':<32} p50 {idx[0]:7.1f} ms   p95 {idx[1]:7.1f} ms")
    print(f"  {'SQL: same, index disabled':<32} p50 {noidx[0]:7.1f} ms   p95 {noidx[1]:7.1f} ms"
          f"   ({noidx[0] / max(idx[0], 1e-6):.1f}x the indexed query)")
    q95 = results["queue (most sure first)"][1]
    print(f"queue page p95 {q95:.1f} ms (target <= 150 ms); "
          f"{q95 / max(results['static'][1], 1e-6):.1f}x the static file, "
          f"{q95 / max(results['history'][1], 1e-6):.2f}x the history page")


def make_masters(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    masters = []
    for i, ext in enumerate(FORMATS):
        path = folder / f"master{ext}"
        if not path.exists():
            encode(path, synthesize(GENRES[i % len(GENRES)], 180.0, 22_050, seed=i), 22_050)
        masters.append(path)
    return masters


def fresh_copies(masters: list[Path], folder: Path, n: int) -> list[Path]:
    from daemon.tags.write import write_tags

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    paths = []
    for i in range(n):
        master = masters[i % len(masters)]
        path = folder / f"song {i:04d}{master.suffix}"
        shutil.copyfile(master, path)
        write_tags(path, title=f"Song {i}", artist="Bench", genre="Misc")
        paths.append(path)
    return paths


def plain_atomic_copy(path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.copy{path.suffix}")
    shutil.copyfile(path, tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(fd)
    os.close(fd)


def bench_writes(n: int) -> None:
    from daemon.audio.fingerprint import fingerprint
    from daemon.review import decisions as review
    from daemon.review.writeback import Writer, build_copy
    from daemon.tags.replace import check_target, new_version, put_in_place, verify
    from daemon.tags.restore import PutBack, genre_fields
    from daemon.tags.write import write_genre_atomically

    masters = make_masters(OUT / "masters")
    size_mb = sum(m.stat().st_size for m in masters) / len(masters) / 1e6
    print(f"write-back of {n} files (3-minute songs, {size_mb:.1f} MB average, all 8 formats):")
    paths = fresh_copies(masters, OUT / "writes", n)
    started = time.perf_counter()
    for path in paths:
        plain_atomic_copy(path)
    base = n / (time.perf_counter() - started)
    print(f"  baseline: copy + fsync + rename      {base:7.1f} files/s")
    started = time.perf_counter()
    recorded = []
    for i, path in enumerate(paths):
        recorded.append(genre_fields(path))  # what the Writer's write job reads first
        write_genre_atomically(path, GENRES[i % len(GENRES)])
    ours = n / (time.perf_counter() - started)
    print(f"  write (fields read + write)          {ours:7.1f} files/s   "
          f"({ours / base:.2f}x the baseline)")
    started = time.perf_counter()
    for path, fields in zip(paths, recorded, strict=True):
        change, target = PutBack(fields), check_target(path)  # the Writer's stages
        with new_version(target):
            verify(target, change, build_copy(target, change))
            put_in_place(target)
    back = n / (time.perf_counter() - started)
    print(f"  undo: genre fields put back          {back:7.1f} files/s   "
          f"({back / base:.2f}x the baseline)")

    # The Writer end to end: accepted suggestions in a fresh DB -> files -> Track rows.
    state, library = OUT / "writer-state", OUT / "writes"
    shutil.rmtree(state, ignore_errors=True)
    config = parse_config({"library": {"root": str(library)}, "state_dir": str(state)})
    engine, sessions = open_database(config.db_url)
    ids = []
    with sessions() as session, session.begin():
        for path in paths:
            st = path.stat()
            track = Track(path=path.name, size=st.st_size, mtime=st.st_mtime,
                          fingerprint=fingerprint(path), format=path.suffix[1:],
                          state="suggested")
            session.add(track)
            session.flush()
            suggestion = Suggestion(track_id=track.id, genre="Jazz", confidence=0.9,
                                    top=[["Jazz", 0.9]], status="pending")
            session.add(suggestion)
            session.flush()
            ids.append(suggestion.id)
    review.accept(sessions, config, ids, who="bench")
    writer = Writer(config, sessions)
    started = time.perf_counter()
    written = 0
    while True:
        round_ = writer.run_once()
        written += round_.written
        if not round_.written and not round_.failed:
            break
    rate = written / (time.perf_counter() - started)
    print(f"  Writer (DB + write + fingerprint)    {rate:7.1f} files/s   "
          f"({rate / base:.2f}x the baseline; {written} written)")
    # Undo every one of them: the Writer puts each file back as it was.
    with sessions() as session:
        accepted = list(session.scalars(select(Decision.id).where(
            Decision.action == "accept")))
    for decision_id in accepted:
        review.undo(sessions, config, decision_id, who="bench")
    started = time.perf_counter()
    undone = 0
    while True:
        round_ = writer.run_once()
        undone += round_.written
        if not round_.written and not round_.failed:
            break
    rate = undone / (time.perf_counter() - started)
    print(f"  Writer undo (DB + put back + fp)     {rate:7.1f} files/s   "
          f"({rate / base:.2f}x the baseline; {undone} put back)")
    engine.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--writes-only", action="store_true",
                        help="only the write-back and undo figures")
    args = parser.parse_args()
    if args.writes_only:
        bench_writes(args.files)
        return 0
    state, library = OUT / "state", OUT / "library"
    started = time.monotonic()
    build_db(state, library)
    print(f"DB: {TRACKS} tracks, {PENDING} pending suggestions, {DECISIONS} decisions "
          f"(ready in {time.monotonic() - started:.1f} s)")
    config = parse_config({"library": {"root": str(library)}, "state_dir": str(state)})
    engine, sessions = open_database(config.db_url)
    bench_pages(config, sessions, engine, args.requests)
    engine.dispose()
    bench_writes(args.files)
    return 0


if __name__ == "__main__":
    sys.exit(main())
