"""What an extract child process runs: the JOBS, and the loop that takes them one at a time.

"extract" (decode + features: the worker's), "read" (fingerprint, tags and audio header of
a settled file: the library's), "probe" and "windows" (the review page's spectrogram and
preview). `extract` and `read_song` also run in-process (tests, benchmarks, the trainer).
The pool that starts these children and owns their pipes is daemon.audio.extract.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from daemon.audio.decode import AudioInfo, decode_clips, probe, read_window
from daemon.audio.features import DEFAULT_SPEC, FeatureSpec, song_features
from daemon.core.errors import (
    DecodeTimeout,
    FileError,
    ReadTimeout,
    TagError,
    TooMuchMemory,
    UnreadableAudio,
)
from daemon.library.fingerprint import fingerprint
from daemon.tags.read import TrackTags, read_tags
from daemon.tags.write import WriteFailed, write_copy


@dataclass(frozen=True)
class Extracted:
    """One song's model input and what its header said."""

    path: str
    features: np.ndarray  # (clips, n_freqs, n_frames, 1) float32
    info: AudioInfo


def extract(path: str | os.PathLike | bytes, spec: FeatureSpec = DEFAULT_SPEC) -> Extracted:
    """Path -> Extracted (decode the clip windows, compute features) in this process.

    Raises UnreadableAudio, TooShort, SilentAudio.
    """
    info, clips = decode_clips(path, spec)
    return Extracted(os.fsdecode(path), song_features(clips, spec), info)


@dataclass(frozen=True)
class SongReading:
    """A settled file, read: its fingerprint, tags and audio header, and why any of them
    could not be read (`problems`, for the worker to weigh)."""

    fingerprint: str | None
    tags: TrackTags | None
    info: AudioInfo | None
    problems: tuple[str, ...]


def read_song(path: str | os.PathLike | bytes) -> SongReading | None:
    """Path -> SongReading (fingerprint, tags, audio header); None when the file vanished.
    A file that makes a reader run out of memory raises TooMuchMemory (the pool says how
    much it may use); every other problem is data in `problems`."""
    name = os.fsdecode(path)
    problems = []
    fp = tags = info = None
    try:
        fp = fingerprint(path)
    except FileNotFoundError:
        return None
    except OSError as err:
        problems.append(f"cannot read: {err.strerror or err}")
    try:
        tags = read_tags(path)
    except TagError as err:
        if _out_of_memory(err):
            raise TooMuchMemory(name, "reading its tags ran out of memory") from None
        problems.append(f"tags: {err.reason}")
    except MemoryError:
        raise TooMuchMemory(name, "reading its tags ran out of memory") from None
    except Exception as err:  # a reader bug on an odd file must not stall settling
        problems.append(f"tags: {type(err).__name__}: {err}")
    try:
        info = probe(path)
    except TooMuchMemory:
        raise
    except FileError as err:
        problems.append(f"audio: {err.reason}")
    except Exception as err:
        problems.append(f"audio: {type(err).__name__}: {err}")
    return SongReading(fp, tags, info, tuple(problems))


def _out_of_memory(err: BaseException) -> bool:
    """Whether a typed error was raised in place of a MemoryError (`raise ... from None`
    still keeps it as the context)."""
    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, MemoryError | TooMuchMemory):
            return True
        err, seen = err.__context__, seen + 1
    return False


@dataclass(frozen=True)
class _Job:
    run: Callable[..., Any]  # (path, spec, *args) -> a picklable result
    doing: str  # what the child was doing, for timeout and memory errors
    crashed: str  # what crashed, for a child that died
    timeout_error: type[FileError]


def _windows(path, spec: FeatureSpec, windows: list[tuple[float, float]],
             sr: int) -> list[np.ndarray]:
    return [read_window(path, start, seconds, sr) for start, seconds in windows]


JOBS = {
    "extract": _Job(lambda path, spec: extract(path, spec), "decoding", "decoder crashed",
                    DecodeTimeout),
    "read": _Job(lambda path, spec: read_song(path), "reading its tags and audio header",
                 "the tag reader crashed", ReadTimeout),
    "probe": _Job(lambda path, spec: probe(path), "reading its audio header",
                  "decoder crashed", DecodeTimeout),
    "windows": _Job(_windows, "decoding", "decoder crashed", DecodeTimeout),
    # The writer's heavy step: copy, set the genre, read back (daemon.tags.write).
    "write": _Job(lambda path, spec, tmp, genre, mode, owner:
                  write_copy(Path(path), Path(tmp), genre, mode, owner),
                  "writing its genre tag", "the tag writer crashed", WriteFailed),
}


PR_SET_NAME = 15  # <linux/prctl.h>


def name_process(name: str) -> None:
    """This process's name as ps, top and /proc/PID/comm show it (Linux; 15 bytes)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)


def child_main(conn: Connection, spec_json: str, nice: int, memory_mb: int | None,
               role: str = "decoder") -> None:
    """Child loop: receive (task id, job, path, args), reply with the job's result or a
    typed error."""
    # Ctrl-C in a terminal reaches the whole process group; the parent decides shutdown.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    name_process(f"gt {role}")
    if nice:
        os.nice(nice)
    if memory_mb:
        limit = memory_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    spec = FeatureSpec.from_json(spec_json)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the parent went away
        if message is None:
            return
        task_id, name, path, args = message
        job = JOBS[name]
        try:
            reply: tuple = (task_id, "ok", job.run(path, spec, *args))
        except (MemoryError, TooMuchMemory) as err:
            reply = (task_id, "error", TooMuchMemory, os.fsdecode(path),
                     f"{job.doing} needed more than {memory_mb} MB" if memory_mb
                     else getattr(err, "reason", "ran out of memory"))
        except FileError as err:
            reply = (task_id, "error", type(err), err.path, err.reason)
        except Exception as err:  # never let one file end the child's loop
            reply = (task_id, "error", UnreadableAudio, os.fsdecode(path),
                     f"{job.doing} failed ({type(err).__name__}: {err})")
        try:
            conn.send(reply)
        except (BrokenPipeError, OSError):
            return
