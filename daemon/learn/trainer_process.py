"""The trainer as a subprocess, and its caps.

`python -m trainer train` runs as a child: nice 19, idle I/O, an address-space cap, its
own process group, SIGKILL when its parent dies, a timeout. TensorFlow never loads in the
daemon, and a crash or OOM in the trainer cannot touch it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import importlib.util
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from daemon.core.config import Config
from daemon.core.db.models import Track
from daemon.core.states import TrackState
from daemon.tags.genres import station_genres_file
from daemon.tags.read import MULTI_VALUE_SEPARATOR

INSTALL_HINT = ("pip install 'genretagger[trainer]'  then  genretagger retrain --now")
# Seconds between SIGTERM and SIGKILL when the trainer must stop.
KILL_GRACE_SECONDS = 10.0
# The trainer is asked to finish within this share of retrain.timeout_minutes (it stops
# fitting early, keeping its best epoch), so a long night ends in a model, not a kill.
TRAINER_BUDGET_SHARE = 0.9
PR_SET_PDEATHSIG = 1
# Log lines that mean the trainer ran out of memory (Python, C++, TF, glibc threads).
OOM_MARKERS = ("MemoryError", "std::bad_alloc", "Cannot allocate memory", "OOM when allocating",
               "ResourceExhaustedError", "failed to allocate", "pthread_create() failed",
               "Resource temporarily unavailable", "out of memory",
               "failed to map segment")


def failure_reason(returncode: int | None, log_tail: str, *, memory_mb: int,
                   stopped_for: str | None = None) -> str:
    """Why the trainer failed, in words for the run row and `status`.

    In: its exit status (negative: killed by that signal), the end of its log, the memory
    cap, and why we stopped it ourselves ("timeout after 180 min", "daemon stopping"), if so.
    """
    if stopped_for:
        return stopped_for
    if any(marker in log_tail for marker in OOM_MARKERS):
        return f"out of memory: the trainer hit the {memory_mb} MB cap (retrain.memory_max_mb)"
    if returncode is not None and returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() \
            else str(-returncode)
        return f"trainer killed by {name}"
    if returncode == 2:
        last = _last_line(log_tail)
        return f"trainer refused to start (exit 2){': ' + last if last else ''}"
    last = _last_line(log_tail)
    return f"trainer failed (exit {returncode}){': ' + last if last else ''}"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("error", "Error", "ERROR"))
              or "Error:" in line]
    return (errors or lines or [""])[-1][:300]


def trainer_available() -> bool:
    """The [trainer] extra is installed (checked without importing TensorFlow)."""
    return importlib.util.find_spec("tensorflow") is not None


def trainer_command(config: Config, run_dir: Path, labels: Path, warm_start: Path | None,
                    holdout: Path | None = None, known: Path | None = None,
                    not_songs: Path | None = None) -> list[str]:
    """The `python -m trainer train` argv for one run (options: trainer.cli)."""
    argv = [sys.executable, "-m", "trainer", "train",
            "--library", str(config.library.root), "--out", str(run_dir),
            "--cache", str(config.cache_dir), "--labels", str(labels),
            "--epochs", str(config.retrain.epochs),
            "--songs-per-epoch", str(config.retrain.songs_per_epoch),
            # The windows the service hears a song by: one count for training and serving.
            "--windows", str(config.classifier.windows_per_song),
            "--min-songs", str(config.min_songs_per_genre),
            "--min-songs-backbone", str(config.min_songs_per_genre_backbone),
            # The tournament: every family the trainer can build; the gate judges the winner.
            "--family", "all",
            # The trainer stops fitting in time to finish; timeout_minutes stays the hard stop.
            "--time-budget", f"{TRAINER_BUDGET_SHARE * config.retrain.timeout_minutes:g}"]
    if not config.classifier.backbone:  # the station switched the backbone off
        argv.append("--no-backbone")
    genres = station_genres_file(config)
    if genres is not None:
        argv += ["--genres", str(genres)]
    if warm_start is not None:
        argv += ["--warm-start", str(warm_start)]
    if holdout is not None:
        argv += ["--holdout", str(holdout)]
    if known is not None:
        argv += ["--known", str(known)]
    if not_songs is not None:
        argv += ["--not-songs", str(not_songs)]
    return argv


def _load_prctl():
    """libc's prctl, resolved in the parent (the child after fork must not load libraries)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()


def _child_setup(memory_bytes: int, parent_pid: int):
    """What runs in the child between fork and exec: only async-signal-safe-ish C calls.

    PR_SET_PDEATHSIG: the trainer gets SIGKILL when the thread that started it dies (the
    calling thread waits for the child, so that is when the daemon dies). RLIMIT_AS caps
    the address space: TensorFlow training the seed CNN peaks at ~2.7 GB of virtual
    memory here, so the 4096 MB default leaves it room while a runaway still fails.
    """
    def setup() -> None:
        if _PRCTL is not None:
            _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(70)
        os.setpriority(os.PRIO_PROCESS, 0, 19)
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    return setup


def start_trainer(argv: list[str], log_path: Path, memory_mb: int) -> subprocess.Popen:
    """Start `argv` as a low-priority child in its own process group, output to `log_path`.

    nice 19, idle I/O class (ionice -c3 when installed), address space capped at
    `memory_mb`, SIGKILL when the parent dies. Out: the Popen (pid == its process group).
    """
    ionice = shutil.which("ionice")
    if ionice:
        argv = [ionice, "-c3", *argv]  # execs the trainer: same pid
    env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("GENRETAGGER_CONFIG", None)  # the trainer takes everything on its command line
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
            cwd=str(log_path.parent), start_new_session=True,
            preexec_fn=_child_setup(memory_mb << 20, os.getpid()),  # noqa: PLW1509
        )


def stop_process_group(proc: subprocess.Popen, grace: float = KILL_GRACE_SECONDS) -> None:
    """SIGTERM the child's process group, SIGKILL it after `grace` seconds; reap the child."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 30.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def process_start_ticks(pid: int) -> int | None:
    """A process's start time (clock ticks since boot) or None when it does not exist.

    Stored with each pid so a later check never confuses a reused pid with our trainer.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[19])


def log_tail(path: Path, size: int = 16_384) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - size))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def supervise(proc: subprocess.Popen, stop_event: threading.Event,
              timeout_minutes: float) -> str | None:
    """Wait for the trainer to end; stop it (its process group) when `stop_event` is set
    or after `timeout_minutes`. Out: None, or why we stopped it."""
    deadline = time.monotonic() + timeout_minutes * 60
    stopped_for = None
    try:
        while True:
            try:
                proc.wait(timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                pass
            if stop_event.is_set():
                stopped_for = "stopped: the daemon is shutting down"
            elif time.monotonic() > deadline:
                stopped_for = f"timed out after {timeout_minutes:g} min"
            if stopped_for:
                stop_process_group(proc)
                break
    except BaseException:  # Ctrl-C in `retrain --now`: never leave the trainer behind
        stop_process_group(proc, grace=2.0)
        raise
    finally:
        # A trainer's own children (decode pool) die with its process group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    return stopped_for


def known_files(session: Session) -> dict[str, dict[str, Any]]:
    """What the daemon read from each file it fingerprinted, for the trainer's --known:
    {relative path: {size, mtime, fingerprint, artist, album, album_artist, genres}} (the
    album artist, so the trainer tells an album of two artists from a compilation as the
    service does). A file whose size and mtime still match is not read again (over SMB:
    ~320 KB a song, 5 GB a night at 15,000 songs).

    A file we wrote is listed too, with the station's own genre (the row's raw genre; our
    write changes nothing else): the genre in it is ours, and where its decision was
    undone but the file not yet put back, that genre must never become a label."""
    rows = session.execute(select(
        Track.path, Track.size, Track.mtime, Track.fingerprint, Track.artist, Track.album,
        Track.album_artist, Track.raw_genre).where(Track.fingerprint.is_not(None),
                                                   Track.state != TrackState.MISSING))
    return {path: {"size": size, "mtime": mtime, "fingerprint": fp, "artist": artist,
                   "album": album, "album_artist": album_artist,
                   "genres": raw.split(MULTI_VALUE_SEPARATOR) if raw else []}
            for path, size, mtime, fp, artist, album, album_artist, raw in rows}


# ---- what the trainer leaves in its run folder ---------------------------------------------

def not_trained_reason(run_dir: Path) -> str | None:
    """Why the trainer made no model from this library (its not_trained.json), or None."""
    try:
        return str(json.loads((run_dir / "not_trained.json").read_text(encoding="utf-8"))
                   ["reason"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def trainer_report(run_dir: Path) -> dict[str, Any]:
    """The data facts the trainer reported (songs, decoded vs cached), for the run row."""
    try:
        report = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    # The CNN's warm start (the one family that starts from the active model), else the
    # winner's.
    fit = ((report.get("families") or {}).get("cnn") or report).get("fit") or {}
    keep: dict[str, Any] = {"trainer_warm_start": fit.get("warm_start"),
                            "trainer_warm_start_how": fit.get("warm_start_how")}
    for key in ("training_set", "training_set_hash", "cache", "timings", "served"):
        if key in report:
            keep[f"trainer_{key}"] = report[key]
    return keep
