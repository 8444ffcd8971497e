"""Helpers the test modules share (tests/ is on sys.path: `from helpers import ...`)."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from daemon.core.states import TrackState


def wait_for(predicate, timeout: float = 10.0, what: str | None = None, every: float = 0.05):
    """Poll `predicate` until it returns something truthy, and return that; after
    `timeout` seconds the test fails, saying what it waited for."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what or predicate}")


def locks_waiting(sessions) -> int:
    """PostgreSQL: how many lock requests wait right now (a thread queued behind a row lock
    the test holds shows here once it is really waiting)."""
    from sqlalchemy import text

    with sessions() as db:
        return db.scalar(text("SELECT count(*) FROM pg_locks WHERE NOT granted"))


def genre_bundle(out, classes: tuple[str, ...], hears: str):
    """A real ONNX bundle dir (model.onnx) whose model hears `hears` in every song.

    The graph is the real thing onnxruntime runs (clips -> mean -> MatMul + bias ->
    softmax); zero weights and a bias on one class make its answer known in advance, so a
    test can stage "this model says A, the next one B" without training.
    """
    import json
    from pathlib import Path

    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from daemon.audio.features import DEFAULT_SPEC

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    freqs, frames, _ = DEFAULT_SPEC.input_shape
    bias = np.array([4.0 if c == hears else 0.0 for c in classes], np.float32)
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["clips", "axes"], ["pooled"], keepdims=0),
         helper.make_node("MatMul", ["pooled", "w"], ["scores"]),
         helper.make_node("Add", ["scores", "b"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probs"], axis=-1)],
        f"hears-{hears}",
        [helper.make_tensor_value_info("clips", TensorProto.FLOAT, [None, freqs, frames, 1])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [None, len(classes)])],
        [numpy_helper.from_array(np.array([2, 3], np.int64), "axes"),
         numpy_helper.from_array(np.zeros((freqs, len(classes)), np.float32), "w"),
         numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    helper.set_model_props(model, {
        "classes": json.dumps(list(classes)), "feature_spec": DEFAULT_SPEC.to_json(),
        "temperature": "1.0", "clips_per_song": "5", "training_set_hash": f"hears-{hears}",
        "created_at": "2026-01-01T00:00:00+00:00"})
    onnx.checker.check_model(model)
    onnx.save(model, out / "model.onnx")
    return out


def make_not_songs(root, outside, good_song) -> dict[str, str]:
    """Entries with songs' names that are not songs inside the library `root`: a folder,
    a FIFO, a socket, a device (made when running as root: mknod needs it), a broken
    link, a link loop, links leading outside (to a FIFO, which would block whoever opens
    it, and to `good_song`, copied outside) and a folder link leading outside. `outside`
    is a folder outside root. Returns {relative path: the reason the walk gives}."""
    import os
    import shutil
    import socket
    import stat

    root, outside = os.fspath(root), os.fspath(outside)
    os.makedirs(os.path.join(root, "Skip"), exist_ok=True)
    os.makedirs(outside, exist_ok=True)
    made = {}

    def at(rel):
        return os.path.join(root, rel)

    os.mkdir(at("Skip/folder.mp3"))
    made["Skip/folder.mp3"] = "is a directory"
    os.mkfifo(at("Skip/pipe.wav"))
    made["Skip/pipe.wav"] = "a pipe (FIFO)"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(at("Skip/s.ogg"))  # a socket file stays after close
    sock.close()
    made["Skip/s.ogg"] = "a socket"
    if os.geteuid() == 0:
        os.mknod(at("Skip/dev.flac"), stat.S_IFCHR | 0o600, os.makedev(1, 3))
        made["Skip/dev.flac"] = "a device"
    os.symlink(at("Skip/gone-away.mp3"), at("Skip/broken.mp3"))
    made["Skip/broken.mp3"] = "broken symlink"
    os.symlink("loop.mp3", at("Skip/loop.mp3"))
    made["Skip/loop.mp3"] = "symlink loop"
    os.mkfifo(os.path.join(outside, "blocks-when-opened"))
    os.symlink(os.path.join(outside, "blocks-when-opened"), at("Skip/outside-fifo.mp3"))
    made["Skip/outside-fifo.mp3"] = "leads outside the library"
    shutil.copyfile(good_song, os.path.join(outside, "good.mp3"))
    os.symlink(os.path.join(outside, "good.mp3"), at("Skip/outside-song.mp3"))
    made["Skip/outside-song.mp3"] = "leads outside the library"
    os.makedirs(os.path.join(outside, "Other Drive"), exist_ok=True)
    shutil.copyfile(good_song, os.path.join(outside, "Other Drive", "song.mp3"))
    os.symlink(os.path.join(outside, "Other Drive"), at("Skip/Other Drive"))
    made["Skip/Other Drive"] = "leads outside the library"
    return made


# ---- Ogg pages: what a buggy encoder leaves, written on purpose --------------------------

def _ogg_crc_table() -> list[int]:
    table = []
    for byte in range(256):
        r = byte << 24
        for _ in range(8):
            r = ((r << 1) ^ 0x04C11DB7) if r & 0x80000000 else r << 1
        table.append(r & 0xFFFFFFFF)
    return table


_OGG_CRC = _ogg_crc_table()


def ogg_crc(page: bytes) -> int:
    """Ogg's page checksum: CRC-32, polynomial 0x04C11DB7, not reflected, initial 0, over
    the page with its checksum field zeroed."""
    crc = 0
    for byte in page:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _OGG_CRC[((crc >> 24) ^ byte) & 0xFF]
    return crc


def ogg_pages(data: bytes) -> list[tuple[int, int]]:
    """(offset, length) of every page of an Ogg file."""
    pages, pos = [], 0
    while pos < len(data):
        if data[pos:pos + 4] != b"OggS":
            raise ValueError(f"no Ogg page at byte {pos}")
        segments = data[pos + 26]
        length = 27 + segments + sum(data[pos + 27:pos + 27 + segments])
        pages.append((pos, length))
        pos += length
    return pages


def shift_ogg_granules(data: bytes, shift: int, first_page: int = 2) -> bytes:
    """The Ogg file with `shift` taken off the granule position of every page from
    `first_page` on (2: the first audio page of a Vorbis file) and each page's checksum
    recomputed, as an encoder that counted from below zero leaves it."""
    import struct

    out = bytearray(data)
    for offset, length in ogg_pages(data)[first_page:]:
        granule = struct.unpack_from("<q", out, offset + 6)[0]
        struct.pack_into("<q", out, offset + 6, granule - shift)
        struct.pack_into("<I", out, offset + 22, 0)
        struct.pack_into("<I", out, offset + 22, ogg_crc(bytes(out[offset:offset + length])))
    return bytes(out)


def negative_granule_ogg(folder, seconds: float = 10.0, sr: int = 22_050, seed: int = 0,
                         name: str = "negative granule.ogg"):
    """A real Ogg Vorbis song (oggenc) whose audio pages all carry granule positions below
    zero (shifted past the song's length, CRCs rewritten): FFmpeg sees no audio after its
    first page, libvorbis plays it whole. Returns its path."""
    import subprocess
    from pathlib import Path

    import soundfile as sf

    from daemon.cli.demo import synthesize

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    wav, ogg = folder / f".{name}.wav", folder / f".{name}.src.ogg"
    sf.write(wav, synthesize("Rock", seconds, sr, seed, 2), sr)
    subprocess.run(["oggenc", "-Q", "-o", str(ogg), str(wav)], check=True)
    target = folder / name
    target.write_bytes(shift_ogg_granules(ogg.read_bytes(), int(3 * seconds * sr)))
    wav.unlink()
    ogg.unlink()
    return target


def ogg_nobody_decodes(folder, name: str = "headers then noise.ogg"):
    """A real Ogg Vorbis file's header pages followed by noise: neither FFmpeg nor
    libsndfile decodes it. Returns its path."""
    import random
    from pathlib import Path

    source = negative_granule_ogg(folder, 4.0, name=f".{name}.whole.ogg")
    data = source.read_bytes()
    source.unlink()
    audio_start = ogg_pages(data)[2][0]
    target = Path(folder) / name
    target.write_bytes(data[:audio_start] + random.Random(3).randbytes(60_000))
    return target


# ---- the database as the worker and other processes leave it ----------------------------

def add_suggested_track(sessions, path: str, top=(("Rock", 0.8), ("Metal", 0.15),
                                                  ("Pop", 0.05)), *, fmt: str = "mp3",
                        raw_genre: str | None = None, size: int = 1000, mtime: float = 1.0,
                        fingerprint: str | None = None, duration: float | None = None,
                        title: str | None = None, artist: str | None = None,
                        state: str = TrackState.SUGGESTED) -> tuple[int, int]:
    """A track in the DB with one pending suggestion, as the worker leaves it.
    Returns (track id, suggestion id)."""
    from daemon.core.db.models import Suggestion, Track

    with sessions() as session, session.begin():
        track = Track(path=path, size=size, mtime=mtime, fingerprint=fingerprint, format=fmt,
                      duration=duration, title=title, artist=artist, raw_genre=raw_genre,
                      state=state)
        session.add(track)
        session.flush()
        suggestion = Suggestion(track_id=track.id, genre=top[0][0], confidence=top[0][1],
                                top=[list(t) for t in top], status="pending")
        session.add(suggestion)
        session.flush()
        return track.id, suggestion.id


HOLD_LOCK = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
if sys.argv[3] == "exclusive":
    # Exclusive locking mode: on a WAL database readers are shut out too (a backup tool
    # or a sqlite3 shell run this way), which the plain write lock never does.
    conn.execute("PRAGMA locking_mode=EXCLUSIVE")
    conn.execute("BEGIN EXCLUSIVE")
else:
    conn.execute("BEGIN IMMEDIATE")
conn.execute("INSERT INTO service_state (key, value, updated_at) "
             "VALUES ('someone else', '{}', '2026-01-01 00:00:00')")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""


def hold_write_lock(db_file: Path, seconds: float, mode: str = "write") -> subprocess.Popen:
    """Another process holding SQLite's write lock for `seconds` (mode "exclusive": its
    exclusive lock, so nobody reads either)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(db_file), str(seconds), mode],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def hold_exclusive_lock(db_file: Path, seconds: float) -> subprocess.Popen:
    """Another process holding SQLite's exclusive lock for `seconds`: nobody reads."""
    return hold_write_lock(db_file, seconds, "exclusive")


# ---- song names ----------------------------------------------------------------------------

# Every kind of name a POSIX filesystem allows, by its bytes. The 255-byte one needs the
# tag writer's temp name to fit NAME_MAX too (daemon.tags.replace.temp_path).
ODD_NAMES = {
    "255 bytes": b"L" * 251 + b".mp3",
    "backslashes": b"AC\\DC - Back\\In Black.mp3",
    "raw byte": b"collide_\xe9.mp3",
    "literal escape": b"collide_\\xe9.mp3",  # beside the raw byte: two files, two rows
    "non-UTF-8 folder": b"Caf\xe9/Ni\xf1a.mp3",
}


# ---- a reference decode, independent of daemon.audio.decode -------------------------------

SR = 22_050  # the rate the features are made at (DEFAULT_SPEC.sample_rate)


def full_decode(path, sr: int = SR) -> np.ndarray:
    """Every sample of the file, mono (channel mean) float32, resampled to sr with soxr."""
    import av
    import soundfile as sf
    import soxr

    try:
        libsndfile_reads_it = sf.info(path).format in ("WAV", "AIFF", "FLAC")
    except RuntimeError:
        libsndfile_reads_it = False
    if libsndfile_reads_it:
        try:
            data, rate = sf.read(path, dtype="float32", always_2d=True)
            mono = data.mean(axis=1)
        except RuntimeError:  # libsndfile refuses a truncated FLAC; FFmpeg decodes the rest
            libsndfile_reads_it = False
    if not libsndfile_reads_it:
        with av.open(str(path)) as container:
            stream = container.streams.audio[0]
            rate = stream.codec_context.sample_rate
            # FFmpeg's own converter to planar float at the native rate and layout.
            to_float = av.AudioResampler(format="fltp", layout=stream.codec_context.layout,
                                         rate=rate)
            parts = []
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.InvalidDataError:  # the cut-off last packet of a truncated file
                    continue
                parts += [f.to_ndarray() for frame in frames for f in to_float.resample(frame)]
            parts += [f.to_ndarray() for f in to_float.resample(None)]
        mono = np.concatenate(parts, axis=1).mean(axis=0)
    mono = mono.astype(np.float32)
    return soxr.resample(mono, rate, sr, quality="HQ") if rate != sr else mono


def assert_matches(window: np.ndarray, reference: np.ndarray, start: float, sr: int = SR,
                   max_lag_s: float = 0.05, min_corr: float = 0.99) -> int:
    """`window` is reference[start*sr:...] up to an offset <= 50 ms: correlation >= 0.99
    at the best lag, and that lag is within 50 ms. Returns the lag in samples."""
    import scipy.signal

    n = len(window)
    assert n > 0
    first = int(round(start * sr))
    max_lag = int(max_lag_s * sr)
    lo = max(0, first - max_lag)
    segment = reference[lo:first + n + max_lag]
    corr = scipy.signal.correlate(segment, window, mode="valid", method="fft")  # one per lag
    running = np.concatenate([[0.0], np.cumsum(segment.astype(np.float64) ** 2)])
    energy = np.sqrt((running[n:] - running[:-n]) * np.sum(window.astype(np.float64) ** 2))
    normalised = corr / np.maximum(energy, 1e-12)
    best = int(np.argmax(normalised))
    lag = lo + best - first
    assert abs(lag) <= max_lag, f"offset {lag / sr * 1000:.1f} ms"
    assert normalised[best] >= min_corr, (
        f"correlation {normalised[best]:.4f} at lag {lag / sr * 1000:.1f} ms")
    return lag


# ---- the daemon as a real subprocess -----------------------------------------------------

EXE = [sys.executable, "-m", "daemon.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(path: Path, library: Path, state: Path, **overrides: str) -> Path:
    """A test config: settle 1 s, fast retries, one decoder, a free port."""
    values = {"settle_seconds": "1", "max_attempts": "3", "backoff_seconds": "0.3",
              "decode_timeout": "20", "processes": "1", "port": str(free_port()),
              "reconcile_minutes": "60", "log_level": '"info"'}
    values.update(overrides)
    path.write_text(f"""
state_dir = "{state}"
log_level = {values['log_level']}
min_songs_per_genre = 4
[library]
root = "{library}"
watch = "native"
settle_seconds = {values['settle_seconds']}
reconcile_minutes = {values['reconcile_minutes']}
[workers]
processes = {values['processes']}
decode_timeout = {values['decode_timeout']}
max_attempts = {values['max_attempts']}
backoff_seconds = {values['backoff_seconds']}
[classifier]
batch_songs = 8
[review]
port = {values['port']}
""")
    return path


class DaemonStation:
    """The daemon as a real subprocess (`genretagger run`) on a library, a state dir with an
    active model, and the config file helpers.write_config writes for them (`config_path`).
    The in-process station of the same folders is tests/stations.py's Station."""

    def __init__(self, base: Path, bundle: Path):
        self.base = base
        self.library = base / "library"
        self.state = base / "state"
        self.library.mkdir(parents=True)
        self.config_path = write_config(base / "config.toml", self.library, self.state)
        self.db = self.state / "genretagger.db"
        self.proc: subprocess.Popen | None = None
        self.log = base / "daemon.log"
        self._register(bundle)

    def _register(self, bundle: Path) -> None:
        from daemon.core.config import load_config
        from daemon.core.db.engine import open_database
        from daemon.learn.registry import activate, register_bundle

        config = load_config(self.config_path)
        engine, sessions = open_database(config.db_url)
        model = register_bundle(sessions, config, bundle)
        activate(sessions, model.version)
        engine.dispose()

    def start(self, env: dict | None = None) -> subprocess.Popen:
        with open(self.log, "a") as log:  # the child keeps its own copy of the fd
            self.proc = subprocess.Popen(
                EXE + ["--config", str(self.config_path), "run"],
                stdout=subprocess.DEVNULL, stderr=log,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        return self.proc

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def query(self, sql: str, *args) -> list[tuple]:
        with contextlib.closing(sqlite3.connect(self.db, timeout=30)) as conn:
            return conn.execute(sql, args).fetchall()

    def states(self) -> dict[str, str]:
        return dict(self.query("SELECT path, state FROM tracks"))

    def suggestions(self) -> dict[str, int]:
        """path -> number of pending suggestions."""
        return dict(self.query(
            "SELECT t.path, count(s.id) FROM tracks t JOIN suggestions s ON s.track_id = t.id "
            "WHERE s.status = 'pending' GROUP BY t.path"))

    def wait(self, what: str, predicate, timeout: float = 60.0, every: float = 0.2):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc is not None and self.proc.poll() is not None:
                pytest.fail(f"daemon exited ({self.proc.returncode}) while waiting for {what}:"
                            f"\n{self.log_text()[-4000:]}")
            value = predicate()
            if value:
                return value
            time.sleep(every)
        pytest.fail(f"timed out waiting for {what}:\n{self.log_text()[-4000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 25.0) -> tuple[int, float]:
        started = time.monotonic()
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        return code, time.monotonic() - started

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def two_input_bundle(out, classes: tuple[str, ...], hears: str, seed: int = 0):
    """A real ONNX bundle dir (model.onnx) with both inputs, as the trainer writes a cnn
    bundle when the backbone is available: "clips" -> the cnn member's probabilities
    (hears `hears` in every song, as genre_bundle's), "patches" -> a per-patch 200-d
    "embedding" (mean over frames @ a fixed random matrix: each song's own, not a
    constant, so a test can tell songs apart by it)."""
    import json
    from pathlib import Path

    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from daemon.audio.features import BACKBONE_SPEC, DEFAULT_SPEC, EMBEDDING_SPEC

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    freqs, frames, _ = DEFAULT_SPEC.input_shape
    patch_frames, mels = BACKBONE_SPEC.input_shape
    bias = np.array([4.0 if c == hears else 0.0 for c in classes], np.float32)
    project = np.random.default_rng(seed).standard_normal((mels, EMBEDDING_SPEC.dim))
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["clips", "clip_axes"], ["pooled"], keepdims=0),
         helper.make_node("MatMul", ["pooled", "w"], ["scores"]),
         helper.make_node("Add", ["scores", "b"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
         helper.make_node("ReduceMean", ["patches", "patch_axes"], ["bands"], keepdims=0),
         helper.make_node("MatMul", ["bands", "project"], ["embedding"])],
        f"two-inputs-hears-{hears}",
        [helper.make_tensor_value_info("clips", TensorProto.FLOAT, [None, freqs, frames, 1]),
         helper.make_tensor_value_info("patches", TensorProto.FLOAT,
                                       [None, patch_frames, mels])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [None, len(classes)]),
         helper.make_tensor_value_info("embedding", TensorProto.FLOAT,
                                       [None, EMBEDDING_SPEC.dim])],
        [numpy_helper.from_array(np.array([2, 3], np.int64), "clip_axes"),
         numpy_helper.from_array(np.array([1], np.int64), "patch_axes"),
         numpy_helper.from_array(np.zeros((freqs, len(classes)), np.float32), "w"),
         numpy_helper.from_array(bias, "b"),
         numpy_helper.from_array(project.astype(np.float32), "project")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    member = {"kind": "cnn", "input": "clips", "output": "probs", "classes": list(classes),
              "temperature": 1.0, "weight": 1.0}
    helper.set_model_props(model, {
        "family": "cnn", "classes": json.dumps(list(classes)),
        "members": json.dumps([member]), "feature_spec": DEFAULT_SPEC.to_json(),
        "backbone_spec": BACKBONE_SPEC.to_json(),
        "embedding": json.dumps({"input": "patches", "output": "embedding",
                                 "spec": json.loads(EMBEDDING_SPEC.to_json())}),
        "temperature": "1.0", "windows_per_song": "5",
        "training_set_hash": f"two-inputs-{hears}-{seed}",
        "created_at": "2026-01-01T00:00:00+00:00"})
    onnx.checker.check_model(model)
    onnx.save(model, out / "model.onnx")
    return out


def overconfident_clips(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(clip probabilities (n, 5, 3), labels) of a model right 70% of the time and always
    ~97% sure: what temperature scaling should fix."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    predicted = np.where(rng.random(n) < 0.7, labels, (labels + 1) % 3)
    clips = np.full((n, 5, 3), 0.015)
    clips[np.arange(n), :, predicted] = 0.97
    return clips, labels


def add_album_song(sessions, path: str, album_key: str, top=None, *, album: str | None = None,
                   album_artist: str | None = None, artist: str | None = None,
                   title: str | None = None, compilation: bool = False,
                   tagged: str | None = None, fmt: str = "mp3", size: int = 1000,
                   mtime: float = 1.0, fingerprint: str | None = None,
                   raw_genre: str | None = None) -> tuple[int, int | None]:
    """A track on an album (tracks.album_key as the record step stores it): with `top`, a
    pending suggestion as the worker leaves it; with `tagged`, a song whose file's tag maps
    to that canonical genre (raw_genre: the tag as found, when the map does not know it).
    Returns (track id, suggestion id or None)."""
    from daemon.core.db.models import Suggestion, Track

    state = TrackState.SUGGESTED if top else TrackState.TAGGED if tagged else TrackState.QUEUED
    with sessions() as session, session.begin():
        track = Track(path=path, size=size, mtime=mtime, fingerprint=fingerprint, format=fmt,
                      title=title, artist=artist, album=album, album_artist=album_artist,
                      album_key=album_key, compilation=compilation, raw_genre=raw_genre or tagged,
                      canonical_genre=tagged, state=state)
        session.add(track)
        session.flush()
        if not top:
            return track.id, None
        suggestion = Suggestion(track_id=track.id, genre=top[0][0], confidence=top[0][1],
                                top=[list(t) for t in top], status="pending")
        session.add(suggestion)
        session.flush()
        return track.id, suggestion.id


class PostgresDaemonStation(DaemonStation):
    """DaemonStation on a PostgreSQL database (`url`, e.g. from tests/pgcluster.py): the
    config names it as database_url; query() takes the same SQL with ? placeholders."""

    def __init__(self, base: Path, bundle: Path, url: str):
        self.url = url
        super().__init__(base, bundle)
        self.db = None

    def _register(self, bundle: Path) -> None:
        # A top-level key, so before write_config's first [section].
        self.config_path.write_text(f'database_url = "{self.url}"\n'
                                    + self.config_path.read_text())
        super()._register(bundle)

    def query(self, sql: str, *args) -> list[tuple]:
        from sqlalchemy import create_engine

        engine = create_engine(self.url)
        try:
            with engine.connect() as conn:
                return [tuple(row) for row in
                        conn.exec_driver_sql(sql.replace("?", "%s"), tuple(args)).all()]
        finally:
            engine.dispose()


@contextlib.contextmanager
def small_tmpfs(folder: Path, size_bytes: int):
    """`folder` (made here) on a tmpfs of `size_bytes`, unmounted afterwards: a real disk
    that fills up. Mounting needs root, which the test machine runs the suite as."""
    if os.geteuid() != 0:
        pytest.fail("mounting a tmpfs needs root (the test machine runs the suite as root)")
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(folder)],
                   check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill_disk(path: Path) -> None:
    """Write zeros into `path` until the disk has no room left."""
    chunk = b"\0" * (1 << 16)
    with open(path, "wb", buffering=0) as f:
        while True:
            try:
                f.write(chunk)
            except OSError as err:
                assert err.errno == errno.ENOSPC, err
                break
    with contextlib.suppress(OSError), open(path, "ab", buffering=0) as f:
        while f.write(b"\0"):  # the last partial page
            pass
