"""What an extract child process runs: the JOBS, and the loop that takes them one at a time.

"extract" (decode + features: the worker's), "read" (fingerprint, tags and audio header of
a settled file: the library's), "probe" and "windows" (the review page's spectrogram and
preview). `extract` also runs in-process (tests, benchmarks, the trainer). The pool that
starts these children and owns their pipes is daemon.audio.extract; `read_song` is
daemon.audio.song's.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from daemon.audio.decode import AudioInfo, decode_song, probe, read_window
from daemon.audio.embedding import embed
from daemon.audio.features import (
    BACKBONE,
    BACKBONE_SPEC,
    CNN,
    DEFAULT_SPEC,
    BackboneSpec,
    FeatureSpec,
    backbone_patches,
    song_features,
)
from daemon.audio.song import read_song
from daemon.core.errors import (
    DecodeTimeout,
    FileError,
    ReadTimeout,
    TooMuchMemory,
    UnreadableAudio,
)
from daemon.core.heap import bound_heap
from daemon.core.threads import limit_math_threads
from daemon.tags.restore import restore_copy, write_copy_recorded
from daemon.tags.write import WriteFailed


@dataclass(frozen=True)
class Extracted:
    """One song's model input by feature kind, and what its header said."""

    path: str
    features: np.ndarray | None  # CNN: (clips, n_freqs, n_frames, 1) float32; None: not asked
    info: AudioInfo
    patches: np.ndarray | None = None  # backbone: (patches, frames, mel bands) float32
    # backbone, run here: (patches, dim) float32 per-patch embeddings in place of patches
    embeddings: np.ndarray | None = None

    def by_kind(self) -> dict[str, np.ndarray]:
        """{kind: model input} for the kinds extracted (features.CNN, features.BACKBONE:
        the patches, or their embeddings when the backbone ran in the child)."""
        backbone = self.patches if self.embeddings is None else self.embeddings
        found = {CNN: self.features, BACKBONE: backbone}
        return {kind: value for kind, value in found.items() if value is not None}


def extract(path: str | os.PathLike | bytes, spec: FeatureSpec = DEFAULT_SPEC,
            backbone_spec: BackboneSpec = BACKBONE_SPEC,
            kinds: Iterable[str] = (CNN,), backbone: str | None = None) -> Extracted:
    """Path -> Extracted in this process: one decode pass of the song's windows, then the
    CNN's features (spec) and/or the backbone's patches (backbone_spec), as `kinds` asks;
    with a `backbone` graph file (daemon.audio.embedding), the patches' embeddings by it
    in place of the patches.

    Raises UnreadableAudio, TooShort, SilentAudio.
    """
    info, windows = decode_song(path, kinds, spec, backbone_spec)
    features = song_features(windows[CNN], spec) if CNN in windows else None
    patches = (backbone_patches(windows[BACKBONE], backbone_spec) if BACKBONE in windows
               else None)
    if backbone is not None and patches is not None:
        return Extracted(os.fsdecode(path), features, info, embeddings=embed(backbone, patches))
    return Extracted(os.fsdecode(path), features, info, patches)


@dataclass(frozen=True)
class SongSpecs:
    """The specs an extract child makes features by: the CNN's and the backbone's."""

    cnn: FeatureSpec = DEFAULT_SPEC
    backbone: BackboneSpec = BACKBONE_SPEC

    def to_json(self) -> str:
        return json.dumps({CNN: json.loads(self.cnn.to_json()),
                           BACKBONE: json.loads(self.backbone.to_json())}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SongSpecs:
        """Both specs; a bare FeatureSpec's JSON (what children got before the backbone)
        means that CNN spec beside the stock backbone's."""
        data = json.loads(text)
        if CNN not in data:
            return cls(FeatureSpec.from_json(text))
        return cls(FeatureSpec.from_json(json.dumps(data[CNN])),
                   BackboneSpec.from_json(json.dumps(data[BACKBONE])))


@dataclass(frozen=True)
class _Job:
    run: Callable[..., Any]  # (path, specs: SongSpecs, *args) -> a picklable result
    doing: str  # what the child was doing, for timeout and memory errors
    crashed: str  # what crashed, for a child that died
    timeout_error: type[FileError]


def _windows(path, specs: SongSpecs, windows: list[tuple[float, float]],
             sr: int) -> list[np.ndarray]:
    return [read_window(path, start, seconds, sr) for start, seconds in windows]


JOBS = {
    # args: the feature kinds wanted (default: the CNN's alone), the backbone graph to
    # embed the patches by (default: none, the patches come back).
    "extract": _Job(lambda path, specs, kinds=(CNN,), backbone=None:
                    extract(path, specs.cnn, specs.backbone, kinds, backbone),
                    "decoding", "decoder crashed", DecodeTimeout),
    "read": _Job(lambda path, specs: read_song(path), "reading its tags and audio header",
                 "the tag reader crashed", ReadTimeout),
    "probe": _Job(lambda path, specs: probe(path), "reading its audio header",
                  "decoder crashed", DecodeTimeout),
    "windows": _Job(_windows, "decoding", "decoder crashed", DecodeTimeout),
    # The writer's heavy step: copy, set the genre, read back (daemon.tags.write).
    # Returns the genre fields before the write (what an undo puts back) and after.
    "write": _Job(lambda path, specs, tmp, genre, mode, owner:
                  write_copy_recorded(Path(path), Path(tmp), genre, mode, owner),
                  "writing its genre tag", "the tag writer crashed", WriteFailed),
    # An undo's write: the genre fields put back as they were (daemon.tags.restore).
    "restore": _Job(lambda path, specs, tmp, fields, owner, written:
                    restore_copy(Path(path), Path(tmp), fields, owner, written),
                    "putting its genre tag back", "the tag writer crashed", WriteFailed),
}


PR_SET_NAME = 15  # <linux/prctl.h>


def name_process(name: str) -> None:
    """This process's name as ps, top and /proc/PID/comm show it (Linux; 15 bytes)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)


def child_main(conn: Connection, spec_json: str, nice: int, memory_mb: int | None,
               role: str = "decoder") -> None:
    """Child loop: receive (task id, job, path, args), reply with the job's result or a
    typed error. `spec_json` is SongSpecs.to_json() (or a bare FeatureSpec's JSON)."""
    # Ctrl-C in a terminal reaches the whole process group; the parent decides shutdown.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    name_process(f"gt {role}")
    if nice:
        os.nice(nice)
    limit_math_threads(1)  # the children are the parallelism
    bound_heap()  # a song's big buffers go back when it is done, not kept as a peak
    if memory_mb:
        limit = memory_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    specs = SongSpecs.from_json(spec_json)
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
            reply: tuple = (task_id, "ok", job.run(path, specs, *args))
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
