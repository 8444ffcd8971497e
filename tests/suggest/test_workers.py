"""The workers registry (daemon.suggest.workers) and claims by several workers, on SQLite
and on a real PostgreSQL server: every track claimed exactly once, a dead worker's tracks
back to the queue and a live one's left alone; `genretagger worker` refusing a host it
cannot work on.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest
from helpers import EXE, wait_for, write_config
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from daemon.cli.status_text import render_status
from daemon.core.config import load_config
from daemon.core.db.engine import open_database, transaction
from daemon.core.db.models import Suggestion, Track, Worker, utcnow
from daemon.core.errors import ConfigError
from daemon.core.states import TrackState, move
from daemon.learn.registry import activate, register_bundle
from daemon.service.metrics import StationMetrics
from daemon.service.status import collect_status
from daemon.service.workerprocess import refuse_to_start
from daemon.suggest.queue import claim_tracks, requeue_working
from daemon.suggest.worker import Worker as Pipeline
from daemon.suggest.workers import (
    beat,
    list_workers,
    register,
    requeue_dead,
    retire,
)


@pytest.fixture
def sessions(database_url):
    engine, sessions = open_database(database_url)
    yield sessions
    engine.dispose()


def add_tracks(sessions, n: int) -> None:
    with transaction(sessions) as session:
        for i in range(n):
            session.add(Track(path=f"song {i:03}.mp3", size=1000 + i, mtime=1.0,
                              state=TrackState.QUEUED))


def held(sessions) -> dict[str, int | None]:
    """path -> claimed_by, for the tracks in `working`."""
    with sessions() as session:
        return dict(session.execute(select(Track.path, Track.claimed_by).where(
            Track.state == TrackState.WORKING)).all())


def states(sessions) -> dict[str, tuple[str, int | None]]:
    with sessions() as session:
        return {p: (s, c) for p, s, c in session.execute(
            select(Track.path, Track.state, Track.claimed_by))}


def age(sessions, worker_id: int, seconds: float) -> None:
    """The worker's last heartbeat `seconds` ago (as if it stopped beating then)."""
    with transaction(sessions) as session:
        session.get(Worker, worker_id).heartbeat_at = utcnow() - timedelta(seconds=seconds)


def exited_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_register_beat_list_and_retire(sessions):
    leader = register(sessions, "leader", {"config": "/etc/genretagger/config.toml"})
    worker = register(sessions, "worker", {"name": "1"})
    with pytest.raises(ValueError, match="role"):
        register(sessions, "boss")
    add_tracks(sessions, 6)
    claim_tracks(sessions, 4, set(), utcnow(), worker_id=worker)
    # A minute after it started the worker has done 30 files: 30 files/min.
    with transaction(sessions) as session:
        row = session.get(Worker, worker)
        row.started_at = utcnow() - timedelta(seconds=60)
        row.detail = {**row.detail, "mark_at": row.started_at.isoformat()}
    beat(sessions, worker, 30)
    with sessions() as session:
        rows = {w["id"]: w for w in list_workers(session, utcnow())}
    assert set(rows) == {leader, worker}
    w = rows[worker]
    assert (w["host"], w["pid"], w["role"]) == (socket.gethostname(), os.getpid(), "worker")
    assert w["files_done"] == 30 and w["files_per_minute"] == pytest.approx(30, rel=0.05)
    assert w["alive"] and w["stopped_at"] is None and w["heartbeat_age"] < 5
    assert rows[leader]["role"] == "leader" and rows[leader]["files_per_minute"] == 0
    assert (w["name"], rows[leader]["name"]) == ("1", None)
    assert sorted(held(sessions).values()) == [worker] * 4

    retire(sessions, worker)  # a clean stop hands back what it held
    assert held(sessions) == {}
    assert {s for s, _ in states(sessions).values()} == {TrackState.QUEUED}
    with sessions() as session:
        rows = {w["id"]: w for w in list_workers(session, utcnow())}
    assert not rows[worker]["alive"] and rows[worker]["stopped_at"] is not None
    assert rows[leader]["alive"]


def test_concurrent_claims_take_every_track_exactly_once(sessions):
    """Four workers claim in threads at once, each on its own connections, until the
    queue is empty: on PostgreSQL FOR UPDATE SKIP LOCKED passes over locked rows, on
    SQLite BEGIN IMMEDIATE lets one claim run at a time. No track is claimed twice."""
    add_tracks(sessions, 200)
    ids = [register(sessions, "worker") for _ in range(4)]
    got: dict[int, list[int]] = {i: [] for i in ids}
    errors: list[BaseException] = []
    start = threading.Barrier(len(ids))

    def claim(worker_id: int) -> None:
        try:
            start.wait()
            while rows := claim_tracks(sessions, 7, set(), utcnow(), worker_id=worker_id):
                got[worker_id] += [track.id for track, _ in rows]
                time.sleep(0.002)  # a real worker decodes between claims
        except BaseException as err:  # surfaced below, not lost in the thread
            errors.append(err)

    threads = [threading.Thread(target=claim, args=(i,)) for i in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    every = [track_id for claimed in got.values() for track_id in claimed]
    assert len(every) == len(set(every)) == 200
    with sessions() as session:
        holders = dict(session.execute(select(Track.id, Track.claimed_by)).all())
    for worker_id, claimed in got.items():
        assert all(holders[t] == worker_id for t in claimed)
    # More than one worker got work: the claims interleaved rather than one taking all.
    assert sum(1 for claimed in got.values() if claimed) >= 2


def test_requeue_dead_takes_back_a_dead_workers_tracks_and_no_live_ones(sessions):
    live, silent, crashed, gone = (register(sessions, "worker") for _ in range(4))
    add_tracks(sessions, 10)
    now = utcnow()
    for worker_id in (live, silent, crashed, gone):
        claim_tracks(sessions, 2, set(), now, worker_id=worker_id)
    claim_tracks(sessions, 2, set(), now)  # no worker id: a legacy claim
    age(sessions, silent, 300)  # its heartbeat stopped 5 minutes ago
    with transaction(sessions) as session:  # on this host, under a pid that has exited
        session.get(Worker, crashed).pid = exited_pid()
    with transaction(sessions) as session:  # stopped without handing back
        session.get(Worker, gone).stopped_at = utcnow()

    assert requeue_dead(sessions, 60) == 6
    assert sorted(held(sessions).values(), key=str) == [live, live, None, None]
    # Start-up also takes back what no worker holds (claimed before workers had ids).
    assert requeue_dead(sessions, 60, unclaimed=True) == 2
    assert list(held(sessions).values()) == [live, live]
    assert requeue_dead(sessions, 60, unclaimed=True) == 0  # the live worker keeps its own
    with sessions() as session:
        alive = {w["id"]: w["alive"] for w in list_workers(session, utcnow(), 60)}
    assert alive == {live: True, silent: False, crashed: False, gone: False}


def test_a_hand_back_leaves_a_track_another_worker_claimed_meanwhile(sessions):
    """A worker thought dead gets its claims requeued; another claims them; the first one's
    late hand-back (shutdown) must not take them from the second."""
    slow, other = register(sessions, "worker"), register(sessions, "worker")
    add_tracks(sessions, 3)
    mine = [t.id for t, _ in claim_tracks(sessions, 3, set(), utcnow(), worker_id=slow)]
    age(sessions, slow, 300)
    assert requeue_dead(sessions, 60) == 3
    claim_tracks(sessions, 3, set(), utcnow(), worker_id=other)
    assert requeue_working(sessions, mine, slow) == 0
    assert sorted(held(sessions).values()) == [other] * 3
    # Leaving `working` clears the holder.
    with transaction(sessions) as session:
        for track in session.scalars(select(Track)):
            move(track, TrackState.SUGGESTED)
    assert {c for _, c in states(sessions).values()} == {None}


def test_status_and_metrics_list_every_worker(sessions, make_config, tmp_path, database_url):
    library = tmp_path / "library"
    library.mkdir()
    config = make_config(library, database_url=database_url)
    leader = register(sessions, "leader")
    dead = register(sessions, "worker", {"name": "2"})
    age(sessions, dead, 600)
    with transaction(sessions) as session:  # as if on another host: only its age tells
        session.get(Worker, dead).host = "radio2"
    data = collect_status(config, sessions)
    rows = {w["id"]: w for w in data["workers"]}
    assert rows[leader]["alive"] and not rows[dead]["alive"]
    assert rows[dead]["heartbeat_age"] >= 600 and isinstance(rows[dead]["heartbeat_at"], str)
    text = render_status(data)
    assert "workers:     1 alive of 2" in text
    assert "radio2:" in text and " worker 2: DEAD, heartbeat 600 s ago" in text
    assert f"{socket.gethostname()}:{os.getpid()} leader: alive" in text

    metrics = StationMetrics(config, sessions)
    try:
        exposition = metrics.exposition().decode()
    finally:
        metrics.close()
    assert metric_ages(exposition) == {f"{socket.gethostname()}:{os.getpid()}": "leader",
                                       f"radio2:{os.getpid()}": "dead"}
    retire(sessions, dead)  # a stopped worker has no heartbeat to age
    metrics = StationMetrics(config, sessions)
    try:
        exposition = metrics.exposition().decode()
    finally:
        metrics.close()
    assert list(metric_ages(exposition)) == [f"{socket.gethostname()}:{os.getpid()}"]


def metric_ages(exposition: str) -> dict[str, str]:
    """worker label -> "dead" (age >= 600 s) or "leader" (fresh), from the exposition."""
    found = {}
    for family in text_string_to_metric_families(exposition):
        if family.name == "genretagger_worker_heartbeat_age_seconds":
            for sample in family.samples:
                found[sample.labels["worker"]] = "dead" if sample.value >= 600 else "leader"
    return found


@pytest.mark.parametrize("how", ["missing", "empty"])
def test_worker_refuses_a_library_root_that_is_not_mounted(tmp_path, how):
    root = tmp_path / "music"
    if how == "empty":
        root.mkdir()  # an unmounted mount point: there, but empty
    config = tmp_path / "config.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\n[library]\nroot = "{root}"\n')
    done = subprocess.run(EXE + ["--config", str(config), "worker"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert f"library root {root}" in done.stderr
    assert "unmounted?" in done.stderr and "mount the music drive" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_worker_starting_leaves_a_live_workers_tracks_alone(sessions, make_config,
                                                               tmp_path, database_url):
    """Start-up used to requeue every `working` track: with several workers that took a
    live worker's batch away (and it was then classified twice). Now only the tracks of
    dead workers, or of none, go back."""
    library = tmp_path / "library"
    library.mkdir()
    config = make_config(library, database_url=database_url, workers={"processes": 1})
    live, dead = register(sessions, "worker"), register(sessions, "worker")
    add_tracks(sessions, 6)
    for worker_id in (live, dead, None):
        claim_tracks(sessions, 2, set(), utcnow(), worker_id=worker_id)
    age(sessions, dead, 600)
    starting = Pipeline(config, sessions, worker_id=register(sessions, "worker"))
    starting.start()
    try:
        assert list(held(sessions).values()) == [live, live]
    finally:
        starting.close()


def test_worker_refuses_sqlite_on_another_hosts_disk(tmp_path, make_config):
    """SQLite on a share (another host's disk) cannot be shared by workers: refused with
    what to do instead; the same file on a local disk is fine for one-host use."""
    library = tmp_path / "library"
    library.mkdir()
    (library / "song.mp3").write_bytes(b"x")
    config = make_config(library)
    state = config.db_url.removeprefix("sqlite:///").rsplit("/", 1)[0]
    share = f"//radio1/state {state} cifs rw,relatime 0 0\n/dev/vda1 / ext4 rw 0 0\n"
    with pytest.raises(ConfigError, match="SQLite on a network filesystem \\(cifs\\).*"
                       "PostgreSQL"):
        refuse_to_start(config, share)
    refuse_to_start(config, "/dev/vda1 / ext4 rw 0 0\n")  # local disk: no error


def notify_socket(path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)
    return sock


def received(sock) -> list[str]:
    got = []
    with contextlib.suppress(TimeoutError):
        while True:
            got.append(sock.recv(4096).decode())
    return got


@pytest.mark.slow
def test_worker_process_notifies_follows_the_active_model_and_retires(
        tmp_path, database_url, make_song, trained_bundle):
    """`genretagger worker` with no model yet says READY=1 with a STATUS line, pings the
    watchdog and has its row in the registry; the model the leader then activates is
    picked up and the queued song suggested with it; SIGTERM -> STOPPING=1, retired, exit
    0. On SQLite too: one host may run extra workers beside the service."""
    library = tmp_path / "library"
    song = make_song("Metal One.flac", "Metal", seconds=6.0, folder=library / "Incoming")
    config = write_config(tmp_path / "config.toml", library, tmp_path / "state")
    config.write_text(f'database_url = "{database_url}"\n' + config.read_text())
    sock = notify_socket(tmp_path / "notify.sock")
    log = tmp_path / "worker.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(EXE + ["--config", str(config), "worker", "--name", "7"],
                                stdout=subprocess.DEVNULL, stderr=err,
                                env={**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
                                     "WATCHDOG_USEC": "1000000"})
    messages: list[str] = []
    try:
        wait_for(lambda: messages.extend(received(sock)) or any(
            "WATCHDOG=1" in m for m in messages), 60, "READY=1 and a watchdog ping")
        ready = next(m for m in messages if "READY=1" in m)
        assert "STATUS=worker " in ready and "no model yet" in ready
        engine, sessions = open_database(database_url)
        with sessions() as session:
            row = session.scalar(select(Worker).where(Worker.pid == proc.pid))
            assert (row.role, row.detail["name"], row.stopped_at) == ("worker", "7", None)
        # The leader promotes a model and records a new file: the worker takes both up.
        model = register_bundle(sessions, load_config(config), trained_bundle)
        activate(sessions, model.version)
        with transaction(sessions) as session:
            st = song.stat()
            session.add(Track(path="Incoming/Metal One.flac", size=st.st_size,
                              mtime=st.st_mtime, state=TrackState.QUEUED))

        def suggested():
            messages.extend(received(sock))  # a full socket would drop STOPPING=1
            with sessions() as session:
                return session.scalar(select(Suggestion).join(Track).where(
                    Track.path == "Incoming/Metal One.flac"))

        got = wait_for(suggested, 90, "the song suggested by the worker process")
        assert got.model_id == model.id and got.status == "pending"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
        messages.extend(received(sock))
        assert any("STOPPING=1" in m for m in messages)
        with sessions() as session:
            row = session.get(Worker, row.id)
            assert row.stopped_at is not None and row.files_done == 1
        engine.dispose()
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()
