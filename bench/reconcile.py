"""Benchmark: one reconciliation walk over 15,000 unchanged files, and what watching them
costs when nothing happens.

    baseline   os.walk + os.stat of the same tree (the least any walk can cost)
    reconcile  Library.reconcile() against a migrated SQLite file that knows every file
               (target <= 2 s)
    poll       one PollingObserver pass (snapshot + diff, as the watcher runs it on a
               network mount): CPU seconds, and the share of one core at poll_seconds
    settle     one idle tick of the settle loop (settle_due + the root check)

Tiny files stand in for songs: reconcile and the poller only stat them. The tree is
cached under bench/out/reconcile/ (a fresh database is built each run). Not pass/fail.

    .venv/bin/python bench/reconcile.py [--files 15000] [--rounds 3] [--poll-seconds 30]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

from sqlalchemy import insert
from watchdog.utils.dirsnapshot import DirectorySnapshot, DirectorySnapshotDiff

# Run as a script, bench/ comes first on sys.path, where bench/daemon.py would stand in
# for the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon.core.config import parse_config  # noqa: E402
from daemon.core.db.engine import open_database, transaction  # noqa: E402
from daemon.core.db.models import Track, utcnow  # noqa: E402
from daemon.core.paths import stored_path  # noqa: E402
from daemon.library.reconcile import Library  # noqa: E402
from daemon.library.watcher import Watcher  # noqa: E402
from daemon.tags.genres import load_genre_map  # noqa: E402

OUT = Path(__file__).resolve().parent / "out" / "reconcile"
FILES_PER_ALBUM = 12
FORMATS = (".mp3", ".flac", ".m4a", ".ogg")


def build_tree(root: Path, n: int) -> None:
    """n tiny "songs" in Artist/Album folders, plus the covers and notes a real share has."""
    marker = root / ".built"
    if marker.exists() and marker.read_text() == str(n):
        return
    shutil.rmtree(root, ignore_errors=True)
    for i in range(n):
        album = root / f"Artist {i // 120:03d}" / f"Album {i // FILES_PER_ALBUM:04d}"
        if i % FILES_PER_ALBUM == 0:
            album.mkdir(parents=True, exist_ok=True)
            (album / "cover.jpg").write_bytes(b"\xff\xd8jpeg")
        (album / f"{i % FILES_PER_ALBUM:02d} Song {i}{FORMATS[i % 4]}").write_bytes(
            i.to_bytes(4, "little") * 64)
    marker.write_text(str(n))


def baseline_walk(root: Path) -> int:
    count = 0
    for folder, _dirs, files in os.walk(root):
        for name in files:
            os.stat(os.path.join(folder, name))
            count += 1
    return count


def seed_database(library: Library, root: Path) -> int:
    """Every library file as an unchanged, already-classified track (one transaction)."""
    rows, now = [], utcnow()
    for folder, _dirs, files in os.walk(root):
        for name in files:
            if not name.endswith(FORMATS):
                continue
            path = os.path.join(folder, name)
            st = os.stat(path)
            rows.append({"path": stored_path(os.path.relpath(path, root)), "size": st.st_size,
                         "mtime": st.st_mtime, "state": "suggested", "attempts": 0,
                         "first_seen": now, "last_seen": now, "state_changed_at": now})
    with transaction(library.sessions) as session:
        session.execute(insert(Track), rows)
    return len(rows)


def timed(func, rounds: int) -> tuple[list[float], list[float], object]:
    """(wall seconds, CPU seconds, last result) for `rounds` calls."""
    walls, cpus, result = [], [], None
    for _ in range(rounds):
        wall, cpu = time.perf_counter(), time.process_time()
        result = func()
        cpus.append(time.process_time() - cpu)
        walls.append(time.perf_counter() - wall)
    return walls, cpus, result


def poll_once(root: Path):
    """What one PollingObserver pass does (the watcher's: lstat + scandir), then the diff."""
    previous = DirectorySnapshot(str(root), recursive=True, stat=os.lstat, listdir=os.scandir)

    def one_pass():
        nonlocal previous
        snapshot = DirectorySnapshot(str(root), recursive=True, stat=os.lstat,
                                     listdir=os.scandir)
        DirectorySnapshotDiff(previous, snapshot)
        previous = snapshot

    return one_pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=15_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--poll-seconds", type=float, default=30.0)
    parser.add_argument("--reconcile-minutes", type=float, default=15.0)
    args = parser.parse_args(argv)

    root, state = OUT / "library", OUT / "state"
    t = time.perf_counter()
    build_tree(root, args.files)
    print(f"tree: {args.files} songs (+ covers) under {root} "
          f"(ready in {time.perf_counter() - t:.1f} s)")
    shutil.rmtree(state, ignore_errors=True)
    config = parse_config({"library": {"root": str(root), "poll_seconds": args.poll_seconds},
                           "state_dir": str(state)})
    engine, sessions = open_database(config.db_url)
    library = Library(config, sessions, load_genre_map())
    known = seed_database(library, root)

    baseline_walk(root)  # warm the dentry/inode caches for both contenders alike
    base_wall, base_cpu, count = timed(lambda: baseline_walk(root), args.rounds)
    rec_wall, rec_cpu, result = timed(library.reconcile, args.rounds)
    assert result.unchanged == known and not result.guarded, result
    poll_wall, poll_cpu, _ = timed(poll_once(root), args.rounds)

    watcher = Watcher(config.library, library)
    watcher.check_root()  # arms an observer on the root, as the settle loop does

    def idle_tick():
        for _ in range(100):
            watcher.check_root()
            library.settle_due()

    tick_wall, tick_cpu, _ = timed(idle_tick, args.rounds)
    watcher.close()
    engine.dispose()

    best = min
    print(f"files stat'ed: {count}, tracks known: {known}, rounds: {args.rounds} (best shown)")
    print(f"baseline os.walk+stat : {best(base_wall):6.3f} s wall  {best(base_cpu):6.3f} s CPU")
    print(f"Library.reconcile()   : {best(rec_wall):6.3f} s wall  {best(rec_cpu):6.3f} s CPU"
          f"   x{best(rec_wall) / best(base_wall):.1f} baseline   target <= 2 s: "
          f"{'met' if best(rec_wall) <= 2 else 'MISSED'}")
    print(f"  (median {statistics.median(rec_wall):.3f} s; result {result.files} files, "
          f"{result.unchanged} unchanged, {result.new} new, {result.missing} missing)")
    per_poll = best(poll_cpu)
    print(f"one polling pass      : {best(poll_wall):6.3f} s wall  {per_poll:6.3f} s CPU"
          f"   x{best(poll_wall) / best(base_wall):.1f} baseline")
    tick = best(tick_cpu) / 100
    idle = {
        f"polling every {args.poll_seconds:g} s": per_poll / args.poll_seconds,
        "settle loop, 1 tick/s": tick,
        f"reconcile every {args.reconcile_minutes:g} min":
            best(rec_cpu) / (args.reconcile_minutes * 60),
    }
    print("idle CPU with these files known (share of one core):")
    for what, share in idle.items():
        print(f"  {what:26s} {share * 100:7.3f} %")
    total = sum(idle.values())
    print(f"  {'total on a network mount':26s} {total * 100:7.3f} %   target < 2 %: "
          f"{'met' if total < 0.02 else 'MISSED'}")
    print(f"  {'total on a local disk':26s} {(total - idle[next(iter(idle))]) * 100:7.3f} %"
          "   (inotify instead of polling)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
