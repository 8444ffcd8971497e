"""`genretagger scan DIR`: a read-only inventory of a music library.

    list    walk DIR with os.scandir (hidden, temporary and non-audio files skipped by the
            same rules as the daemon's library walk)
    inspect per file, in a small thread pool (a network drive answers each open slowly, so
            files are read side by side): tags and audio header as the daemon reads them
            (daemon.audio.song.read_song: the duration it stores), and a short decode just
            before the header's end, which finds truncated files
            (not for Ogg Vorbis/Opus: mutagen measures them from their last page, so a
            truncated one is merely shorter)
    map     raw genre -> canonical genre through the station's genre map (daemon.tags.genres)
    sum up  files by format, tagged / untagged / error counts, genre distribution, and the
            raw genres that map to nothing (candidates for genres.toml)

Nothing is written. A bad file is a line in the report with its reason, never a stop. A
file whose read stalls (a dead network mount) is reported as timed out after
`file_timeout` seconds; its thread is a daemon thread and cannot hold the command open.

Exit codes of `genretagger scan`: 0 the scan ran (whatever the files were like), 1 DIR is
missing, not a folder or cannot be listed, 2 usage error.

`--json` prints one object (stable; new keys may be added, none removed or renamed):

    {
      "root": "/srv/music",                      absolute path of DIR
      "files": [                                 sorted by path
        {
          "path": "Artist/Song.mp3",             relative to root, "/"-separated; bytes that
                                                 are not UTF-8 shown as \\xNN
          "status": "tagged",                    "tagged" | "untagged" | "error"
          "format": "mp3",                       mp3 flac ogg opus m4a wav aiff wma (from the
                                                 content), another lower-case name, or null
          "duration": 215.4,                     seconds, or null
          "title": "Song", "artist": "Artist", "album": null,
          "raw_genres": ["(17)"],                genre values as stored (ID3 numbers resolved)
          "genre": "Rock",                       canonical genre, or null when untagged/error
          "error": null,                         the reason, when status is "error"
          "skipped": false,                      true: a song's name, but not read (a folder,
                                                 FIFO, socket, device, broken link, loop, or
                                                 a link leading outside DIR; error says which)
          "not_song": null                       why the file is not a song ([library]
                                                 exclude, min_song_seconds; the daemon never
                                                 queues or trains on it), or null
        }, ...
      ],
      "summary": {
        "files": 1234,                           entries with an audio extension (= len(files))
        "tagged": 1000, "untagged": 200, "errors": 34,
        "formats": {"flac": 300, "mp3": 900},    files per format (errors of unknown format
                                                 are not counted here)
        "genres": {"Jazz": 120, "Rock": 400},    canonical genre -> files (songs only)
        "unmapped": {"Funk": 12},                raw genre of untagged songs -> files
        "not_songs": 40,                         files with a not_song reason
        "skipped": 56,                           hidden, temporary or non-audio names
        "not_read": {"symlink loop": 1},         entries with "skipped": true, by reason
        "unlistable": ["Private"],               folders that could not be listed
        "seconds": 12.3                          wall time of the scan
      }
    }
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from tqdm import tqdm

from daemon.audio import decode as audio
from daemon.audio.song import read_song
from daemon.core.config import AUDIO_EXTENSIONS
from daemon.core.errors import FileError
from daemon.core.paths import display, stored_path
from daemon.core.songrules import SongRules
from daemon.library.walk import examine, is_library_file, library_folders
from daemon.tags.genres import GenreMap
from daemon.tags.read import TrackTags

# Reads in flight at once: enough to hide a network drive's latency, few enough not to
# flood a small NAS. Parsing is mostly Python, so more threads would not add CPU speed.
THREADS = 8
# A file whose read takes longer than this (a stalled mount) is reported and left behind.
FILE_TIMEOUT = 60.0
# The end check decodes this much audio ending this far before the header's end.
END_WINDOW = 0.25
END_MARGIN = 0.5
END_CHECK_SR = 22_050  # the feature rate: no resampling for files already at it
# Formats whose duration mutagen measures from the last page of the stream: a truncated
# file is simply shorter, never longer than its audio, so the end check has nothing to find.
MEASURED_TO_THE_END = frozenset({"ogg", "opus"})


@dataclass(frozen=True)
class FileReport:
    """One file of the inventory; see the module docstring for the meaning of each field."""

    path: str
    format: str | None = None
    duration: float | None = None
    title: str | None = None
    artist: str | None = None
    album: str | None = None
    raw_genres: tuple[str, ...] = ()
    genre: str | None = None
    error: str | None = None
    skipped: bool = False  # a song's name, but never opened (error says why)
    not_song: str | None = None  # why it is not a song (daemon.core.songrules), or None

    @property
    def status(self) -> str:
        if self.error is not None:
            return "error"
        return "tagged" if self.genre is not None else "untagged"

    def to_json(self) -> dict:
        return {"path": self.path, "status": self.status, "format": self.format,
                "duration": None if self.duration is None else round(self.duration, 3),
                "title": self.title, "artist": self.artist, "album": self.album,
                "raw_genres": list(self.raw_genres), "genre": self.genre, "error": self.error,
                "skipped": self.skipped, "not_song": self.not_song}


@dataclass
class ScanReport:
    """The whole inventory: files sorted by path, plus what the walk skipped."""

    root: str
    files: list[FileReport] = field(default_factory=list)
    skipped: int = 0
    unlistable: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict:
        status = Counter(f.status for f in self.files)
        songs = [f for f in self.files if f.not_song is None]
        return {
            "files": len(self.files),
            "tagged": status["tagged"],
            "untagged": status["untagged"],
            "errors": status["error"],
            "formats": dict(sorted(Counter(f.format for f in self.files if f.format).items())),
            "genres": dict(sorted(Counter(f.genre for f in songs if f.genre).items())),
            "unmapped": dict(Counter(g for f in songs if f.status == "untagged"
                                     for g in f.raw_genres).most_common()),
            "not_songs": len(self.files) - len(songs),
            "skipped": self.skipped,
            "not_read": dict(sorted(Counter(f.error for f in self.files if f.skipped).items())),
            "unlistable": list(self.unlistable),
            "seconds": round(self.seconds, 3),
        }

    def to_json(self) -> dict:
        return {"root": self.root, "files": [f.to_json() for f in self.files],
                "summary": self.summary()}


@dataclass
class Listing:
    """What the walk found: (relative path, absolute path) of each candidate file, names
    that look like songs but are not files (reported as errors), and what it skipped."""

    files: list[tuple[str, str]] = field(default_factory=list)
    not_files: list[FileReport] = field(default_factory=list)
    skipped: int = 0
    unlistable: list[str] = field(default_factory=list)


def scan_library(root: str | os.PathLike, genre_map: GenreMap, progress: bool = False, *,
                 extensions: Iterable[str] = AUDIO_EXTENSIONS, threads: int = THREADS,
                 check_end: bool = True, file_timeout: float = FILE_TIMEOUT,
                 inspect: Callable[..., FileReport] | None = None,
                 rules: SongRules | None = None, under: str = "") -> ScanReport:
    """Inventory every audio file under `root` -> ScanReport (files sorted by path).

    progress: show tqdm bars on stderr. check_end: decode a moment before the end of each
    song to find truncated files (a few ms a file; False reads headers only). A file not
    read within file_timeout seconds is reported as timed out. inspect: reads one file
    (default inspect_file; tests pass one that stalls like a dead mount). rules: what is
    not a song (config.library.song_rules), matched on `under` + each file's path, where
    `under` is root's own place inside the library ("" or "Folder/Sub/").
    Raises OSError only when `root` itself cannot be listed.
    """
    started = time.monotonic()
    root = os.path.abspath(os.fspath(root))
    listing = list_library(root, extensions, progress)
    inspected = _inspect_all(listing.files, genre_map, threads, check_end, file_timeout,
                             progress, inspect or inspect_file)
    if rules is not None:
        inspected = [replace(report, not_song=rules.reason(under + stored_path(rel),
                                                           report.duration))
                     for report, (rel, _) in zip(inspected, listing.files, strict=True)]
    files = sorted([*inspected, *listing.not_files], key=lambda f: f.path)
    return ScanReport(display(root), files, listing.skipped, listing.unlistable,
                      time.monotonic() - started)


def list_library(root: str, extensions: Iterable[str] = AUDIO_EXTENSIONS,
                 progress: bool = False) -> Listing:
    """Walk `root` with os.scandir -> Listing. Symlinked folders are followed once (a loop
    adds nothing). Raises OSError when `root` itself cannot be listed."""
    extensions = tuple(e.lower() for e in extensions)
    listing = Listing()
    unlistable: list[str] = []
    outside: dict[str, str] = {}  # folder links leading outside: not walked
    real_root = os.path.realpath(root)
    bar = _bar(progress, "listing", "files")
    try:
        for rel, entries in library_folders(root, unlistable, outside):
            for entry in entries:
                found = _classify(entry, rel, extensions, listing, real_root)
                if found and bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    reported = {f.path for f in listing.not_files}
    listing.not_files += [FileReport(display(rel), error=why, skipped=True)
                          for rel, why in outside.items() if display(rel) not in reported]
    listing.unlistable = [display(rel.rstrip("/")) for rel in unlistable]
    return listing


def _classify(entry: os.DirEntry, rel: str, extensions: tuple[str, ...],
              listing: Listing, real_root: str) -> bool:
    """Sort one directory entry into the listing; True when it is a file to inspect.
    A song-named entry that is not a song inside the library is reported, never opened
    (daemon.library.walk.examine)."""
    if not is_library_file(entry.name, extensions):
        try:
            is_dir = entry.is_dir()
        except OSError:
            is_dir = False
        if not is_dir:  # library_folders walks the folders
            listing.skipped += 1
        return False
    seen, reason = examine(entry, real_root)
    if seen is not None:
        listing.files.append((rel + entry.name, entry.path))
        return True
    if reason is not None:
        listing.not_files.append(FileReport(display(rel + entry.name), error=reason,
                                            skipped=True))
    return False


def inspect_file(path: str, relpath: str, genre_map: GenreMap,
                 check_end: bool = True) -> FileReport:
    """One file -> its FileReport: tags, canonical genre and the duration the daemon would
    store (daemon.audio.song.read_song), or the reason it failed. Never raises for a bad
    file."""
    shown = display(relpath)
    song = read_song(path, fingerprinted=False)
    tags, duration = song.tags, song.duration
    if tags is None:
        if song.info is None:
            return FileReport(shown, error=song.tags_problem)
        # mutagen could not read it; the audio decoder knows the format.
        problem = _end_problem(path, duration) if check_end else None
        return FileReport(shown, song.format, duration,
                          error=problem or f"tags unreadable: {song.tags_problem}")
    if duration is None:
        return _report(shown, tags, None, genre_map, song.audio_problem)
    problem = None
    if check_end and tags.format not in MEASURED_TO_THE_END:
        problem = _end_problem(path, duration)
    return _report(shown, tags, duration, genre_map, problem)


def _report(shown: str, tags: TrackTags, duration: float | None, genre_map: GenreMap,
            error: str | None) -> FileReport:
    genre = None if error else genre_map.canonical_for(tags.genres)
    return FileReport(shown, tags.format, duration, tags.title, tags.artist, tags.album,
                      tags.genres, genre, error)


def _end_problem(path: str, duration: float) -> str | None:
    """Decode a moment just before the header's end: a truncated file has nothing there."""
    start = max(0.0, duration - END_MARGIN)
    try:
        samples = audio.read_window(path, start, END_WINDOW, sr=END_CHECK_SR)
    except FileError as err:
        return f"damaged near its end ({duration:.1f} s): {err.reason}"
    if len(samples) < END_WINDOW * END_CHECK_SR / 2:
        return (f"truncated: the header says {duration:.1f} s but the audio stops "
                f"before {start:.1f} s")
    return None


def _inspect_all(files: list[tuple[str, str]], genre_map: GenreMap, threads: int,
                 check_end: bool, file_timeout: float, progress: bool,
                 inspect: Callable[..., FileReport]) -> list[FileReport]:
    """inspect over many files in daemon threads, with a per-file time limit: a file
    that overruns it is reported, and its stuck thread is replaced by a fresh one."""
    if not files:
        return []
    jobs: queue.SimpleQueue[int | None] = queue.SimpleQueue()
    done: queue.SimpleQueue[tuple[int, FileReport]] = queue.SimpleQueue()
    started: dict[int, float] = {}  # job -> when a thread picked it up

    def work() -> None:
        while (index := jobs.get()) is not None:
            relpath, path = files[index]
            started[index] = time.monotonic()
            try:
                result = inspect(path, relpath, genre_map, check_end)
            except Exception as err:  # noqa: BLE001 - one file must never end the scan
                result = FileReport(display(relpath),
                                    error=f"unexpected {type(err).__name__}: {err}")
            done.put((index, result))

    def start_worker() -> None:
        threading.Thread(target=work, name="scan-reader", daemon=True).start()

    for index in range(len(files)):
        jobs.put(index)
    for _ in range(max(1, min(threads, len(files)))):
        jobs.put(None)  # one stop mark per worker; a stuck worker leaves its mark to the
        start_worker()  # replacement started for it

    results: dict[int, FileReport] = {}
    bar = _bar(progress, "reading", "files", total=len(files))
    try:
        while len(results) < len(files):
            try:
                index, result = done.get(timeout=min(1.0, file_timeout))
            except queue.Empty:
                for index in _stalled(started, results, file_timeout):
                    results[index] = FileReport(
                        display(files[index][0]),
                        error=f"timed out after {file_timeout:g} s (a stalled network drive?)")
                    start_worker()
                    if bar is not None:
                        bar.update(1)
                continue
            if index not in results:  # not already reported as timed out
                results[index] = result
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return [results[i] for i in range(len(files))]


def _stalled(started: dict[int, float], results: dict[int, FileReport],
             file_timeout: float) -> list[int]:
    now = time.monotonic()
    return [index for index, since in list(started.items())
            if index not in results and now - since > file_timeout]


def _bar(progress: bool, desc: str, unit: str, total: int | None = None):
    if not progress:
        return None
    return tqdm(total=total, desc=desc, unit=f" {unit}", leave=False, dynamic_ncols=True)


def format_text(report: ScanReport) -> Iterable[str]:
    """The human inventory: one line per file, then the summary (errors listed again)."""
    for f in report.files:
        if f.error is not None:
            yield f"{f.path}\tERROR\t{f.error}"
            continue
        if f.not_song is not None:
            yield f"{f.path}\tNOT A SONG\t{f.not_song}"
            continue
        duration = "?" if f.duration is None else _clock(f.duration)
        raw = ", ".join(f.raw_genres) or "-"
        yield f"{f.path}\t{f.format}\t{duration}\t{raw} -> {f.genre or 'untagged'}"
    s = report.summary()
    yield ""
    yield (f"{s['files']} audio files in {report.root}: {s['tagged']} tagged, "
           f"{s['untagged']} untagged, {s['errors']} errors; {s['skipped']} other files "
           f"skipped; {s['seconds']:.1f} s")
    if s["not_read"]:
        yield ("not read (song names that are not songs): "
               + ", ".join(f"{k} {v}" for k, v in s["not_read"].items()))
    yield "formats: " + (", ".join(f"{k} {v}" for k, v in s["formats"].items()) or "none")
    yield "genres:  " + (", ".join(f"{k} {v}" for k, v in s["genres"].items()) or "none")
    if s["unmapped"]:
        top = list(s["unmapped"].items())[:15]
        more = len(s["unmapped"]) - len(top)
        yield ("unmapped raw genres (add them to genres.toml?): "
               + ", ".join(f"{k!r} {v}" for k, v in top) + (f", +{more} more" if more else ""))
    if s["not_songs"]:
        yield (f"not songs ({s['not_songs']}, never queued or trained on; [library] exclude "
               "and min_song_seconds):")
        for f in report.files:
            if f.not_song is not None:
                yield f"  {f.path}: {f.not_song}"
    for folder in s["unlistable"]:
        yield f"cannot list folder: {folder}"
    errors = [f for f in report.files if f.error is not None]
    if errors:
        yield f"errors ({len(errors)}):"
        for f in errors:
            yield f"  {f.path}: {f.error}"


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
