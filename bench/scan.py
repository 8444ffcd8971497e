"""Benchmark: `genretagger scan` over a 15,000-file library.

    baseline   os.walk + os.stat of the same tree (the least any inventory can cost)
    tags-only  scan_library(check_end=False): walk + mutagen tags/duration + genre map
    full       scan_library(): the above plus the short decode near each song's end that
               finds truncated files (the default of `genretagger scan`)
    1 thread   the full scan with one reader thread, to show what the pool buys

The library is a few tiny real songs per format (2 s mono, real encoders) copied
under 15,000 names in Artist/Album folders, each copy tagged with its own title, artist and
a raw genre spelling (a quarter untagged), plus covers, notes and a few broken files.
Cached under bench/out/scan/. The page cache is warm (the tree was just built or read), so
this measures our CPU cost; a network drive adds its latency per open, which the thread
pool overlaps. Not pass/fail.

    .venv/bin/python bench/scan.py [--files 15000] [--threads 8] [--skip-single]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon.cli.demo import FORMATS, SPELLINGS, encode, synthesize  # noqa: E402
from daemon.library.scan import scan_library  # noqa: E402
from daemon.tags.genres import load_genre_map  # noqa: E402
from daemon.tags.write import write_tags  # noqa: E402

OUT = Path(__file__).resolve().parent / "out" / "scan"
MASTERS_PER_FORMAT = 2
FILES_PER_ALBUM = 12
SECONDS = 2.0
SR = 22_050


def build_library(root: Path, n: int) -> None:
    marker = root / ".built"
    if marker.exists() and marker.read_text() == str(n):
        return
    shutil.rmtree(root, ignore_errors=True)
    masters_dir = root.parent / "masters"
    masters_dir.mkdir(parents=True, exist_ok=True)
    genres = list(SPELLINGS)
    masters = []
    for ext in FORMATS:
        for m in range(MASTERS_PER_FORMAT):
            path = masters_dir / f"master{m}{ext}"
            if not path.exists():
                genre = genres[(len(masters)) % len(genres)]
                encode(path, synthesize(genre, SECONDS, SR, seed=m, channels=1), SR)
            masters.append(path)
    started = time.monotonic()
    for i in range(n):
        artist = f"Artist {i // 120:03d}"
        album = root / artist / f"Album {i // FILES_PER_ALBUM:04d}"
        if i % FILES_PER_ALBUM == 0:
            album.mkdir(parents=True, exist_ok=True)
            (album / "cover.jpg").write_bytes(b"\xff\xd8jpeg")
            (album / ".DS_Store").write_bytes(b"\x00" * 16)
        master = masters[i % len(masters)]
        path = album / f"{i % FILES_PER_ALBUM:02d} Song {i}{master.suffix}"
        shutil.copyfile(master, path)
        genre = genres[(i // 7) % len(genres)]
        spelling = SPELLINGS[genre][i % len(SPELLINGS[genre])] if i % 4 else None
        write_tags(path, title=f"Song {i}", artist=artist, album=album.name, genre=spelling)
        if i % 1000 == 999:
            print(f"  built {i + 1}/{n} files ({time.monotonic() - started:.0f} s)",
                  flush=True)
    broken = root / "Incoming"
    broken.mkdir(exist_ok=True)
    (broken / "empty.mp3").write_bytes(b"")
    (broken / "random.mp3").write_bytes(os.urandom(40_000))
    (broken / "text.flac").write_text("not audio\n" * 100)
    marker.write_text(str(n))


def baseline(root: Path) -> int:
    count = 0
    for folder, _dirs, files in os.walk(root):
        for name in files:
            os.stat(os.path.join(folder, name))
            count += 1
    return count


def timed(func, *args, **kwargs):
    started = time.perf_counter()
    cpu = time.process_time()
    result = func(*args, **kwargs)
    return result, time.perf_counter() - started, time.process_time() - cpu


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench/scan.py")
    parser.add_argument("--files", type=int, default=15_000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--skip-single", action="store_true",
                        help="skip the one-thread run (the slowest)")
    args = parser.parse_args()

    root = OUT / f"library-{args.files}"
    print(f"library: {root}", flush=True)
    build_library(root, args.files)
    genre_map = load_genre_map()

    baseline(root)  # warm the page cache and the dentry cache for every run alike
    entries, base_s, _ = timed(baseline, root)
    print(f"baseline os.walk+stat: {entries} entries in {base_s:.3f} s "
          f"({entries / base_s:,.0f} entries/s)", flush=True)

    runs = [("tags-only", {"check_end": False, "threads": args.threads}),
            ("full", {"check_end": True, "threads": args.threads})]
    if not args.skip_single:
        runs.append(("full, 1 thread", {"check_end": True, "threads": 1}))
    for label, options in runs:
        report, wall, cpu = timed(scan_library, root, genre_map, False, **options)
        s = report.summary()
        print(f"{label:>15}: {s['files']} files in {wall:.2f} s = {s['files'] / wall:,.0f} "
              f"files/s, CPU {cpu:.1f} s, {wall / base_s:,.0f}x the bare walk; "
              f"{s['tagged']} tagged, {s['untagged']} untagged, {s['errors']} errors",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
