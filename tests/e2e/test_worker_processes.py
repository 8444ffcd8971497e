"""Two `genretagger worker` processes and one service (`genretagger run`), real
subprocesses on one real PostgreSQL database, a library of real encoded songs and a
trained model. One worker is SIGKILLed while it holds a batch: the leader's scheduler
hands its tracks back, and every song still ends with exactly one pending suggestion (0
lost, 0 duplicates); `status` lists the three workers, the killed one dead.

Each process has a state dir of its own, as on separate hosts (each copies the model
bundle from the database into it: daemon.suggest.stored_bundles).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import EXE, write_config
from sqlalchemy import func, select

from daemon.cli.demo import make_library
from daemon.core.config import load_config
from daemon.core.db.engine import open_database
from daemon.core.db.models import Suggestion, Track, Worker
from daemon.core.states import TrackState
from daemon.learn.registry import activate, register_bundle

pytestmark = pytest.mark.slow

SONGS_PER_GENRE = 8
GENRES = ("Classical", "Hip-Hop", "Metal")


def config_for(base: Path, name: str, library: Path, url: str, **overrides: str) -> Path:
    path = write_config(base / f"{name}.toml", library, base / f"state-{name}", **overrides)
    # database_url is a top-level key: it goes before the first [section].
    path.write_text(f'database_url = "{url}"\n' + path.read_text())
    return path


class Processes:
    """The service and the workers, each logging to its own file."""

    def __init__(self, base: Path):
        self.base = base
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, config: Path, *command: str) -> subprocess.Popen:
        with open(self.base / f"{name}.log", "a") as log:
            self.procs[name] = subprocess.Popen(
                EXE + ["--config", str(config), *command], stdout=subprocess.DEVNULL,
                stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        return self.procs[name]

    def logs(self) -> str:
        return "\n".join(f"--- {n}\n{(self.base / f'{n}.log').read_text()[-2500:]}"
                         for n in self.procs)

    def wait(self, what: str, predicate, timeout: float, ignore: tuple[str, ...] = ()):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for name, proc in self.procs.items():
                if name not in ignore and proc.poll() is not None:
                    pytest.fail(f"{name} exited ({proc.returncode}) while waiting for "
                                f"{what}:\n{self.logs()}")
            value = predicate()
            if value:
                return value
            time.sleep(0.05)
        pytest.fail(f"timed out waiting for {what}:\n{self.logs()}")

    def kill_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def test_two_workers_and_a_service_lose_and_repeat_nothing_when_a_worker_is_killed(
        tmp_path, postgres, trained_bundle):
    url = postgres.new_database()
    library = tmp_path / "library"
    make_library(library, songs_per_genre=SONGS_PER_GENRE, genres=GENRES,
                 untagged_share=1.0, seconds=(5, 8), formats=(".flac", ".mp3", ".ogg"),
                 artists_per_genre=3, broken=0)
    n_songs = SONGS_PER_GENRE * len(GENRES)
    service = config_for(tmp_path, "service", library, url)
    # The worker to be killed claims a big batch (32) and decodes it with one child, so
    # it is caught holding tracks.
    doomed = config_for(tmp_path, "doomed", library, url)
    doomed.write_text(doomed.read_text().replace("batch_songs = 8", "batch_songs = 32"))
    other = config_for(tmp_path, "other", library, url)
    # dead_after_seconds is read by the leader; the config writer has no key for it.
    service.write_text(service.read_text().replace("[classifier]",
                                                   "dead_after_seconds = 15\n[classifier]"))
    engine, sessions = open_database(url)
    model = register_bundle(sessions, load_config(service), trained_bundle)
    activate(sessions, model.version)

    def count(query) -> int:
        with sessions() as session:
            return session.scalar(query) or 0

    def workers() -> dict[int, Worker]:
        with sessions() as session:
            return {w.id: w for w in session.scalars(select(Worker))}

    procs = Processes(tmp_path)
    try:
        doomed_pid = procs.start("doomed", doomed, "worker", "--name", "doomed").pid
        procs.wait("the doomed worker to register",
                   lambda: any(w.pid == doomed_pid for w in workers().values()), 60)
        doomed_id = next(i for i, w in workers().items() if w.pid == doomed_pid)
        procs.start("other", other, "worker", "--name", "2")
        procs.start("service", service, "run")
        held = procs.wait("the doomed worker to hold a batch", lambda: count(
            select(func.count()).select_from(Track).where(
                Track.state == TrackState.WORKING, Track.claimed_by == doomed_id)), 60)
        procs.procs["doomed"].send_signal(signal.SIGKILL)
        procs.procs["doomed"].wait(10)

        def all_suggested() -> bool:
            return count(select(func.count()).select_from(Track).where(
                Track.state == TrackState.SUGGESTED)) == n_songs

        procs.wait(f"all {n_songs} songs suggested", all_suggested, 90, ignore=("doomed",))
        with sessions() as session:
            per_track = dict(session.execute(
                select(Track.path, func.count(Suggestion.id))
                .join(Suggestion, Suggestion.track_id == Track.id, isouter=True)
                .group_by(Track.path)).all())
            pending = session.scalar(select(func.count()).select_from(Suggestion).where(
                Suggestion.status == "pending"))
            by_worker = dict(session.execute(select(Worker.id, Worker.files_done)).all())
        assert len(per_track) == n_songs and set(per_track.values()) == {1}, per_track
        assert pending == n_songs
        assert held >= 1 and by_worker  # it died holding work: that work was redone

        done = subprocess.run(EXE + ["--config", str(service), "status", "--json"],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        listed = {w["pid"]: w for w in json.loads(done.stdout)["workers"]}
        pids = {name: p.pid for name, p in procs.procs.items()}
        assert set(listed) == set(pids.values())
        assert listed[pids["doomed"]]["alive"] is False
        assert listed[pids["doomed"]]["stopped_at"] is None  # killed, not stopped
        assert listed[pids["other"]]["alive"] and listed[pids["other"]]["role"] == "worker"
        assert listed[pids["service"]]["alive"] and listed[pids["service"]]["role"] == "leader"
        text = subprocess.run(EXE + ["--config", str(service), "status"],
                              capture_output=True, text=True, timeout=60).stdout
        assert "workers:     2 alive of 3" in text and "worker doomed: DEAD" in text

        for name in ("other", "service"):
            procs.procs[name].send_signal(signal.SIGTERM)
        for name in ("other", "service"):
            assert procs.procs[name].wait(30) == 0, procs.logs()
        stopped = {w.pid: w.stopped_at for w in workers().values()}
        assert stopped[pids["other"]] is not None and stopped[pids["service"]] is not None
    finally:
        procs.kill_all()
        engine.dispose()
