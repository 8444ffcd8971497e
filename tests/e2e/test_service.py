"""The daemon as a real subprocess: `genretagger --config X run` on a temp library.

A tiny model is trained once per session with `genretagger train` (3 genres, short
songs) and registered + activated in each test's fresh database. Files are dropped into
the watched library (one copied slowly in chunks like an SMB copy); the tests read the
daemon's SQLite file and listen on a real sd_notify socket.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import EXE, DaemonStation

from daemon.cli.demo import encode, synthesize

pytestmark = pytest.mark.slow

SR = 22_050
@pytest.fixture
def daemon_station(tmp_path, trained_bundle):
    s = DaemonStation(tmp_path, trained_bundle)
    yield s
    s.kill()


def song(path: Path, genre: str, seconds: float = 8.0, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return encode(path, synthesize(genre, seconds, SR, seed), SR)


def copy_slowly(source: Path, target: Path, chunks: int = 6, pause: float = 0.4) -> None:
    """Like a copy onto an SMB share: the file grows in steps, each well inside settle."""
    data = source.read_bytes()
    step = len(data) // chunks + 1
    with open(target, "wb") as out:
        for start in range(0, len(data), step):
            out.write(data[start:start + step])
            out.flush()
            time.sleep(pause)


def bad_inputs(folder: Path, scratch: Path) -> dict[str, str]:
    """Bad input (tests/audio/test_bad_input.py's kinds) as files in the library: name -> what
    it is."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    (folder / "empty.mp3").write_bytes(b"")
    (folder / "text.flac").write_text("Just some text that is not audio at all.\n" * 30)
    (folder / "random.mp3").write_bytes(rng.bytes(50_000))
    full = song(scratch / "full.mp3", "Metal", 8.0)
    (folder / "truncated.mp3").write_bytes(full.read_bytes()[:2000])
    encode(folder / "short.wav", synthesize("Rock", 0.3, SR, 1), SR)
    encode(folder / "silence.flac", np.zeros((SR * 6, 2), np.float32), SR)
    (folder / "folder.mp3").mkdir()
    (folder / "dangling.mp3").symlink_to(folder / "nowhere.mp3")
    return {"empty.mp3": "zero bytes", "text.flac": "text", "random.mp3": "random bytes",
            "truncated.mp3": "truncated", "short.wav": "shorter than a clip",
            "silence.flac": "silence"}


def notify_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)
    return sock


def drain(sock: socket.socket) -> list[str]:
    messages = []
    with contextlib.suppress(TimeoutError, BlockingIOError):
        while True:
            messages.append(sock.recv(4096).decode())
    return messages


# ---- tests ---------------------------------------------------------------------------------

def test_new_files_get_one_suggestion_bad_ones_quarantined(daemon_station, tmp_path):
    """sd_notify, settle, one suggestion per song, bad input quarantined, status, SIGHUP,
    SIGTERM -> exit 0 within 20 s."""
    sock = notify_socket(tmp_path / "notify.sock")
    daemon_station.start(env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
                       "WATCHDOG_USEC": "2000000"})
    messages: list[str] = []

    def ready() -> bool:
        messages.extend(drain(sock))
        return any("READY=1" in m for m in messages)

    daemon_station.wait("READY=1", ready, timeout=60)

    scratch = tmp_path / "scratch"
    song(daemon_station.library / "Incoming" / "metal one.mp3", "Metal", seed=1)
    song(daemon_station.library / "Incoming" / "classical one.flac", "Classical", seed=2)
    bad = bad_inputs(daemon_station.library / "Broken", scratch)
    big = song(scratch / "hiphop slow.wav", "Hip-Hop", 10.0, seed=3)
    copy_slowly(big, daemon_station.library / "Incoming" / "hiphop slow.wav")

    good = ["Incoming/metal one.mp3", "Incoming/classical one.flac", "Incoming/hiphop slow.wav"]
    daemon_station.wait("three suggestions", lambda: len(daemon_station.suggestions()) == 3)
    # A file too short for any model to hear (under a second) is not a song: listed,
    # never retried into quarantine.
    broken = [f"Broken/{name}" for name in bad if name != "short.wav"]
    daemon_station.wait("bad input quarantined", lambda: all(
        daemon_station.states().get(p) == "quarantined" for p in broken)
        and daemon_station.states().get("Broken/short.wav") == "not_a_song", timeout=60)

    assert daemon_station.suggestions() == {p: 1 for p in good}
    rows = daemon_station.query(
        "SELECT s.genre, s.confidence, s.top, s.model_id FROM suggestions s")
    for genre, confidence, top, model_id in rows:
        top = json.loads(top)
        assert len(top) == 3 and top[0] == [genre, pytest.approx(confidence)]
        assert model_id == 1
    reasons = dict(daemon_station.query(
        "SELECT path, last_error FROM tracks WHERE state = 'quarantined'"))
    assert all(reasons[p] for p in broken), reasons
    # The slow copy was read once, whole: never a failed attempt on it.
    slow = daemon_station.query("SELECT attempts, last_error FROM tracks WHERE path = ?", good[2])
    assert slow == [(0, None)]
    time.sleep(1.5)
    assert daemon_station.suggestions() == {p: 1 for p in good}  # still exactly one each

    messages += drain(sock)
    assert any("WATCHDOG=1" in m for m in messages)
    assert any(m.startswith("STATUS=") and "in queue" in m for m in messages)

    status = subprocess.run(EXE + ["--config", str(daemon_station.config_path), "status", "--json"],
                            capture_output=True, text=True, timeout=60)
    data = json.loads(status.stdout)
    assert data["daemon"]["running"] is True
    assert data["daemon"]["pid"] == daemon_station.proc.pid
    assert data["tracks"]["by_state"]["suggested"] == 3
    assert data["quarantined_total"] == len(broken)
    assert [song["path"] for song in data["not_songs"]] == ["Broken/short.wav"]
    assert data["last_reconcile"]["files"] >= 0
    assert data["model"]["version"] == 1

    # SIGHUP: a live key applies, another is reported as needing a restart; a broken
    # file keeps the running config.
    text = daemon_station.config_path.read_text()
    daemon_station.config_path.write_text(text.replace("settle_seconds = 1", "settle_seconds = 2")
                              .replace("processes = 1", "processes = 2"))
    daemon_station.proc.send_signal(signal.SIGHUP)
    daemon_station.wait("reload",
                        lambda: "applied library.settle_seconds" in daemon_station.log_text())
    assert "needs a restart to apply: workers.processes" in daemon_station.log_text()
    daemon_station.config_path.write_text(text.replace("settle_seconds = 1", "settle_seconds = -1"))
    daemon_station.proc.send_signal(signal.SIGHUP)
    daemon_station.wait("bad reload", lambda: "config reload failed" in daemon_station.log_text())
    assert daemon_station.proc.poll() is None
    daemon_station.config_path.write_text(text)

    drain(sock)  # room in the socket's queue: the daemon drops what does not fit
    code, seconds = daemon_station.stop(signal.SIGTERM)
    assert code == 0 and seconds < 20, daemon_station.log_text()[-3000:]
    assert any("STOPPING=1" in m for m in drain(sock))
    after = subprocess.run(EXE + ["--config", str(daemon_station.config_path), "status", "--json"],
                           capture_output=True, text=True, timeout=60)
    assert json.loads(after.stdout)["daemon"]["running"] is False


def decoder_pids(daemon_pid: int) -> list[int]:
    """The decoder children: forked by the daemon's multiprocessing fork server and named
    "gt decoder" (the tag reader, forked there too, is "gt tag reader")."""
    def children(pid: int) -> list[int]:
        found = []
        for task in Path(f"/proc/{pid}/task").glob("*"):
            with contextlib.suppress(OSError):
                found += [int(p) for p in (task / "children").read_text().split()]
        return found

    pids = []
    for child in children(daemon_pid):
        with contextlib.suppress(OSError):
            if b"forkserver" in Path(f"/proc/{child}/cmdline").read_bytes():
                pids += children(child)
    return [pid for pid in pids if _comm(pid) == "gt decoder"]


def _comm(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def test_sigkill_mid_batch_and_a_killed_decoder(daemon_station):
    """SIGKILL the daemon mid-batch, restart: no file lost, no duplicate suggestion. Then
    SIGKILL decoder children: their files fail once and are retried."""
    genres = ["Classical", "Hip-Hop", "Metal"]
    for i in range(16):
        song(daemon_station.library / "batch" / f"song {i:02d}.wav", genres[i % 3], 6.0, seed=i)
    daemon_station.start()

    def mid_batch() -> bool:  # one batch suggested, the next one claimed and in the pool
        states = list(daemon_station.states().values())
        return "suggested" in states and "working" in states

    daemon_station.wait("one batch suggested and the next in flight", mid_batch, every=0.02)
    daemon_station.proc.kill()
    daemon_station.proc.wait(10)
    before = daemon_station.suggestions()
    assert len(before) < 16, "the batch finished before the kill; make it bigger"
    assert "working" in daemon_station.states().values()
    assert all(n == 1 for n in before.values())

    for i in range(16, 28):
        song(daemon_station.library / "batch" / f"song {i:02d}.wav", genres[i % 3], 6.0, seed=i)
    daemon_station.start()
    crashed = []

    def kill_decoders() -> bool:
        for pid in decoder_pids(daemon_station.proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        crashed[:] = daemon_station.query(
            "SELECT path FROM tracks WHERE last_error LIKE 'decoder crashed%'")
        return bool(crashed) or len(daemon_station.suggestions()) == 28

    daemon_station.wait("a decoder killed mid-file", kill_decoders, every=0.01)
    assert crashed, "no decoder was caught working"
    daemon_station.wait("all 28 suggested", lambda: len(daemon_station.suggestions()) == 28,
                        timeout=90)
    assert set(daemon_station.suggestions().values()) == {1}
    assert set(daemon_station.states().values()) == {"suggested"}
    # The killed file's attempt was recorded, then it was retried and suggested.
    events = [(kind, json.loads(detail)) for kind, detail in daemon_station.query(
        "SELECT kind, detail FROM events WHERE kind IN ('failed', 'classified') ORDER BY id")]
    mine = [(kind, d) for kind, d in events if d["path"] == crashed[0][0]]
    assert mine[0][0] == "failed" and mine[0][1]["reason"] == "decoder crashed (signal 9)"
    assert mine[-1][0] == "classified"
    assert "requeued" in daemon_station.log_text()  # the first run's in-flight tracks came back
    code, _ = daemon_station.stop()
    assert code == 0


def test_database_locked_for_ten_seconds(daemon_station):
    """Another process holds the write lock for 10 s: the daemon waits and carries on."""
    daemon_station.start()
    daemon_station.wait("start-up", lambda: "genretagger running" in daemon_station.log_text())
    locker = sqlite3.connect(daemon_station.db, timeout=30, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    started = time.monotonic()
    song(daemon_station.library / "during lock.mp3", "Metal", seed=5)
    song(daemon_station.library / "also during lock.flac", "Classical", seed=6)
    time.sleep(max(0.0, 10 - (time.monotonic() - started)))
    assert daemon_station.proc.poll() is None
    locker.execute("COMMIT")
    locker.close()
    daemon_station.wait("suggestions after the lock",
                        lambda: len(daemon_station.suggestions()) == 2, timeout=45)
    assert daemon_station.proc.poll() is None
    code, seconds = daemon_station.stop()
    assert code == 0 and seconds < 20


def test_notifier_abstract_socket():
    """'@name' in NOTIFY_SOCKET is Linux's abstract namespace."""
    from daemon.service.notify import Notifier, watchdog_interval

    name = f"genretagger-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(2)
    notifier = Notifier("@" + name)
    assert notifier.ready("up") and notifier.watchdog()
    assert sock.recv(100) == b"READY=1\nSTATUS=up"
    assert sock.recv(100) == b"WATCHDOG=1"
    notifier.close()
    sock.close()
    assert not Notifier("").ready()  # not under systemd: a no-op
    assert watchdog_interval({"WATCHDOG_USEC": "20000000"}, pid=5) == 10.0
    assert watchdog_interval({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "6"}, pid=5) is None
    assert watchdog_interval({}, pid=5) is None
