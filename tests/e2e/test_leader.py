"""One leader per database (daemon/service/leader.py), on SQLite and on PostgreSQL.

The lock itself: a second holder is refused while the first holds it, and gets it once
the first releases it or is SIGKILLed (a real subprocess). Then two `genretagger run`
processes on one database: one leads (its walk, writer and scheduler run, `status` names
it), the other stands by with only its worker and review page; SIGKILL the leader and the
standby takes over within the poll interval and a margin, and its watcher picks up a
file added afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import EXE, free_port, wait_for, write_config
from sqlalchemy import select
from sqlalchemy.engine import make_url

from daemon.cli.demo import encode, synthesize
from daemon.core.db.engine import make_engine, make_sessionmaker
from daemon.core.db.models import ServiceState, Track
from daemon.service.leader import LEADER_KEY, LeaderLock

HOLD_LOCK = """
import sys, time
from pathlib import Path
from daemon.service.leader import LeaderLock
lock = LeaderLock(sys.argv[1], Path(sys.argv[2]))
assert lock.acquire(10), "could not take the leader lock"
print("held", flush=True)
time.sleep(600)
"""


def hold_in_subprocess(url: str, state: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, url, str(state)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.strip() == "held", proc.stderr.read()
    return proc


def test_a_second_holder_waits_until_the_first_releases(database_url, tmp_path):
    first = LeaderLock(database_url, tmp_path / "state")
    second = LeaderLock(database_url, tmp_path / "state")
    try:
        assert first.acquire(0) and first.held()
        assert first.acquire(0)  # taking what it holds is a yes, not a second lock
        started = time.monotonic()
        assert second.acquire(1.0, every=0.2) is False
        assert 0.7 < time.monotonic() - started < 5
        assert not second.held()
        first.release()
        assert not first.held()
        assert second.acquire(0) and second.held()
        assert first.acquire(0) is False
    finally:
        first.close()
        second.close()


def test_the_lock_is_free_once_its_holder_is_sigkilled(database_url, tmp_path):
    holder = hold_in_subprocess(database_url, tmp_path / "state")
    lock = LeaderLock(database_url, tmp_path / "state")
    try:
        assert lock.acquire(0) is False
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        started = time.monotonic()
        assert lock.acquire(10, every=0.1)
        assert time.monotonic() - started < 3
    finally:
        lock.close()
        with contextlib.suppress(ProcessLookupError):
            holder.kill()
        holder.wait(10)


def test_a_dead_lock_connection_is_not_held_and_never_idles_in_a_transaction(postgres):
    """PostgreSQL: the lock's own connection is idle (autocommit: no transaction held
    open for the leader's lifetime); once the server ends it, held() says so and a
    standby gets the lock."""
    import psycopg

    url = postgres.new_database()
    name = make_url(url).database
    lock = LeaderLock(url, Path("/nonexistent"))  # PostgreSQL: no file is involved
    other = LeaderLock(url, Path("/nonexistent"))
    try:
        assert lock.acquire(0)
        with psycopg.connect(host=str(postgres.socket_dir), user="genretagger",
                             dbname=name, autocommit=True) as admin:
            rows = admin.execute(
                "SELECT pid, state FROM pg_stat_activity WHERE datname = %s "
                "AND application_name = 'genretagger leader'", (name,)).fetchall()
            assert [state for _, state in rows] == ["idle"], rows
            assert other.acquire(0) is False
            admin.execute("SELECT pg_terminate_backend(%s)", (rows[0][0],))
        wait_for(lambda: not lock.held(), 10, "held() to see the connection gone")
        assert other.acquire(5, every=0.1)
    finally:
        lock.close()
        other.close()
        postgres.drop_database(url)


def test_status_trusts_a_fresh_heartbeat_from_another_host_without_its_pid():
    """A leader on another host: its pid means nothing on this one, a fresh heartbeat is
    what says it runs; on this host a dead pid still means not running."""
    from daemon.core.db.models import utcnow
    from daemon.service.status import daemon_running

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(10)
    now = utcnow()
    beat = {"pid": dead.pid, "heartbeat": now.isoformat(), "stopped_at": None}
    assert daemon_running({**beat, "host": "radio2-elsewhere"}, now)
    assert not daemon_running({**beat, "host": socket.gethostname()}, now)


# ---- two `genretagger run` on one database -----------------------------------------------

POLL_SECONDS = 2.0
TAKEOVER_MARGIN = 10.0  # start-up of the leader-only parts on a busy test machine


class Run:
    """One `genretagger run` with its own config, log and review port."""

    def __init__(self, base: Path, name: str, library: Path, state: Path, url: str,
                 env: dict | None = None):
        self.config = write_config(base / f"{name}.toml", library, state, port=str(free_port()))
        text = self.config.read_text().replace("state_dir = ", f'database_url = "{url}"\n'
                                               "state_dir = ", 1)
        # No cold-start model from the backbone: nothing here needs one.
        text = text.replace("batch_songs = 8", "batch_songs = 8\nbackbone = false")
        self.config.write_text(text + f"[service]\nleader_poll_seconds = {POLL_SECONDS}\n"
                               "[retrain]\nenabled = false\n")
        self.state = state
        self.log = base / f"{name}.log"
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(EXE + ["--config", str(self.config), "run"],
                                         stdout=subprocess.DEVNULL, stderr=log,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1",
                                              **(env or {})})

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_log(self, needle: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.text():
            if self.proc.poll() is not None:
                pytest.fail(f"exited ({self.proc.returncode}):\n{self.text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {needle!r} in {self.log.name} after {timeout:g} s:\n"
                            f"{self.text()[-3000:]}")
            time.sleep(0.1)

    def health(self) -> dict:
        try:
            return json.loads((self.state / "health.json").read_text())
        except (OSError, ValueError):
            return {}

    def status(self, *args: str) -> dict | str:
        done = subprocess.run(EXE + ["--config", str(self.config), "status", *args],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout) if args == ("--json",) else done.stdout

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(20)


def leader_row(url: str) -> dict | None:
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session:
            row = session.get(ServiceState, LEADER_KEY)
            return dict(row.value) if row is not None else None
    finally:
        engine.dispose()


def track_paths(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session:
            return set(session.scalars(select(Track.path)))
    finally:
        engine.dispose()


LEADER_ONLY = ("watcher", "writer", "scheduler")


@pytest.mark.slow
def test_two_runs_one_leader_and_the_standby_takes_over(database_url, tmp_path):
    """Exactly one of two services leads; SIGKILL it and the other leads within the poll
    interval + a margin, walking and watching the library from then on. On SQLite both
    share one state dir (one host); on PostgreSQL each has its own."""
    library = tmp_path / "library"
    library.mkdir()
    sqlite = database_url.startswith("sqlite")
    first = Run(tmp_path, "first", library, tmp_path / "state-1", database_url)
    runs = [first]
    try:
        first.wait_log("genretagger running on")
        assert "the leader)" in first.text()
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(tmp_path / "notify.sock"))
        notify.settimeout(0.2)
        second = Run(tmp_path, "second", library,
                     tmp_path / ("state-1" if sqlite else "state-2"), database_url,
                     env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
        runs.append(second)
        host = socket.gethostname()
        waiting = f"standby: waiting for the leader (host {host} pid {first.proc.pid})"
        second.wait_log(waiting)
        second.wait_log("genretagger running on")
        assert "a standby)" in second.text()
        said = []
        with contextlib.suppress(TimeoutError):
            while not any("READY=1" in m for m in said):
                said.append(notify.recv(4096).decode())
        notify.close()
        # Up (READY=1, as a standby), and `systemctl status` says whom it waits for.
        ready = next(m for m in said if "READY=1" in m)
        assert f"STATUS={waiting}" in ready, said

        # Who leads is published, and only the leader runs the leader-only parts.
        assert leader_row(database_url)["pid"] == first.proc.pid
        status = second.status("--json")
        assert status["leader"]["pid"] == first.proc.pid and status["leader"]["host"] == host
        assert status["daemon"]["pid"] == first.proc.pid
        assert f"leader:      {host} pid {first.proc.pid}, since " in second.status()
        health = wait_for(lambda: (h := first.health()).get("pid") == first.proc.pid
                          and set(LEADER_ONLY) <= set(h["components"]) and h, 20,
                          "the leader's health file with its leader-only parts")
        assert health["components"]["leader"]["role"] == "leader"
        time.sleep(POLL_SECONDS * 2)  # a few standby polls, none of which may take over
        for part in ("worker", "web"):
            assert f"started {part}" in second.text()
        for part in LEADER_ONLY:
            assert f"started {part}" not in second.text(), second.text()
        assert "now the leader" not in second.text()
        if sqlite:  # one state dir: the health file stays the leader's
            assert first.health()["pid"] == first.proc.pid
        else:
            assert not (second.state / "health.json").exists()

        first.proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        first.proc.wait(10)
        second.wait_log("now the leader", timeout=POLL_SECONDS + TAKEOVER_MARGIN)
        took = time.monotonic() - killed
        assert took < POLL_SECONDS + TAKEOVER_MARGIN, took
        second.wait_log("started scheduler", timeout=30)

        encode(library / "after takeover.wav", synthesize("Rock", 4.0, 22_050, 3), 22_050)
        wait_for(lambda: "after takeover.wav" in track_paths(database_url), 30,
                 "the new leader to pick up a new file")
        assert leader_row(database_url)["pid"] == second.proc.pid
        status = wait_for(lambda: (s := second.status("--json"))["daemon"]["pid"]
                          == second.proc.pid and s, 20,
                          "status to show the new leader's heartbeat")
        assert status["leader"]["pid"] == second.proc.pid and status["daemon"]["running"]
        wait_for(lambda: (h := second.health()).get("pid") == second.proc.pid
                 and set(LEADER_ONLY) <= set(h["components"]), 20,
                 "the new leader's health file with its leader-only parts")

        second.proc.send_signal(signal.SIGTERM)
        assert second.proc.wait(25) == 0
        assert leader_row(database_url)["stopped_at"] is not None
        assert f"leader:      none (the last, {host} pid {second.proc.pid}, stopped at " \
            in second.status()
    finally:
        for run in runs:
            run.kill()


@pytest.mark.slow
def test_a_leader_that_loses_its_lock_connection_exits_1_for_systemd(postgres, tmp_path):
    """The server ends the leader's lock connection (as a database restart would): the
    service stops within a poll and a margin and exits 1, so Restart=on-failure brings it
    back, as leader or standby."""
    import psycopg

    url = postgres.new_database()
    library = tmp_path / "library"
    library.mkdir()
    run = Run(tmp_path, "only", library, tmp_path / "state", url)
    try:
        run.wait_log("genretagger running on")
        with psycopg.connect(host=str(postgres.socket_dir), user="genretagger",
                             dbname=make_url(url).database, autocommit=True) as admin:
            ended = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'genretagger leader' AND datname = %s",
                (make_url(url).database,)).fetchall()
        assert ended == [(True,)]
        assert run.proc.wait(POLL_SECONDS + TAKEOVER_MARGIN + 20) == 1
        assert "lost the leader lock" in run.text()
        assert "genretagger stopped" in run.text()
    finally:
        run.kill()
        postgres.drop_database(url)
