"""Supervision: a job failure is logged, recorded and retried, never kills a thread, and
`status` / healthy() say what is going on. The service runs as a real subprocess; the
database lock is a real SQLite write lock held by another process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import free_port, hold_write_lock, wait_for

from daemon.cli.demo import encode, synthesize
from daemon.core.config import parse_config
from daemon.core.health import Health, describe_failure
from daemon.service.scheduler import Scheduler

EXE = [sys.executable, "-m", "daemon.cli"]
SR = 22_050


def _status(config: Path) -> dict:
    done = subprocess.run(EXE + ["--config", str(config), "status", "--json"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _tracked(db: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(db, timeout=10)) as conn:
        return {path for (path,) in conn.execute("SELECT path FROM tracks")}


@pytest.mark.slow
def test_a_lock_outlasting_the_busy_timeout_fails_jobs_not_the_scheduler(tmp_path):
    """Another process holds the write lock longer than the busy
    timeout while reconcile runs every 2 s. During the lock `status` shows the daemon
    running with the failing job and its error; afterwards reconcile still runs: a file
    dropped in then is tracked (only a walk can find it: the observer polls hourly)."""
    library, state = tmp_path / "library", tmp_path / "state"
    library.mkdir()
    config = tmp_path / "config.toml"
    config.write_text(f"""
state_dir = "{state}"
database_busy_seconds = 1
[library]
root = "{library}"
watch = "polling"
poll_seconds = 3600
settle_seconds = 0.5
reconcile_minutes = 0.03
[workers]
processes = 1
[retrain]
enabled = false
[review]
port = {free_port()}
""")
    log_path = tmp_path / "daemon.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(EXE + ["--config", str(config), "run"],
                                stdout=subprocess.DEVNULL, stderr=log,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_for(lambda: "genretagger running" in log_path.read_text(), 60, "start-up")
        wait_for(lambda: _status(config)["components"].get("reconcile", {})
                 .get("last_progress_at"), 30, "a first interval walk")

        # The lock outlasts the 1 s busy timeout many times over, so a loaded machine (each
        # `status` is a new process) still sees the failing job while the lock is held.
        holder = hold_write_lock(state / "genretagger.db", 15.0)
        try:
            def failing() -> dict | None:
                data = _status(config)
                job = data["components"].get("reconcile", {})
                return data if job.get("failing") else None

            during = wait_for(failing, 13, "status showing the failing reconcile job")
        finally:
            assert holder.wait(20) == 0
        job = during["components"]["reconcile"]
        assert job["last_error"].startswith("database busy: ")
        assert "database is locked" in job["last_error"] and job["last_error_at"]
        assert job["alive"] and job["healthy"]  # retried at the next interval, not dead
        assert during["daemon"]["running"] is True  # the health file is not in the DB
        assert during["components"]["scheduler"]["alive"] is True
        assert during["daemon"]["healthy"] is True  # every thread still goes round
        assert proc.poll() is None

        encode(library / "after the lock.flac", synthesize("Jazz", 4.0, SR, 1), SR)
        wait_for(lambda: "after the lock.flac" in _tracked(state / "genretagger.db"), 30,
                 "the interval walk finding the new file")
        wait_for(lambda: not _status(config)["components"]["reconcile"]["failing"], 15,
                 "the reconcile job recovering")
        after = _status(config)
        assert after["components"]["reconcile"]["errors"] >= 1
        assert set(after["components"]) >= {"main", "worker", "watcher", "settle", "writer",
                                             "web", "scheduler", "reconcile", "retrainer"}
        assert all(c["healthy"] for c in after["components"].values()), after["components"]
        text = subprocess.run(EXE + ["--config", str(config), "status"], capture_output=True,
                              text=True, timeout=60).stdout
        assert "components:" in text
        assert "Exception in thread" not in log_path.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(25) == 0
        assert _status(config)["components"] == {}  # stopped: nothing live to report
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_a_failing_job_is_recorded_and_keeps_its_schedule(tmp_path):
    """A job body that raises is logged and recorded; the scheduler thread lives on and the
    job runs again at its next time. A stopped scheduler reports itself dead."""
    from apscheduler.triggers.interval import IntervalTrigger

    config = parse_config({"library": {"root": str(tmp_path)}, "state_dir": str(tmp_path)})
    calls = []

    def flaky() -> None:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise sqlite3.OperationalError("database is locked")
        if len(calls) == 2:
            raise OSError(28, "No space left on device")

    scheduler = Scheduler(config)
    scheduler._add("flaky", "a flaky job", flaky, IntervalTrigger(seconds=0.3))
    scheduler.start()
    try:
        wait_for(lambda: len(calls) >= 1 and scheduler.job_health["flaky"].errors, 5)
        first = scheduler.health_report()["flaky"]
        assert first["last_error"] == "database busy: database is locked"
        wait_for(lambda: len(calls) >= 3, 5, "the job running again after failures")
        report = scheduler.health_report()
        assert report["flaky"]["errors"] == 2 and report["flaky"]["failing"] is False
        assert report["flaky"]["last_error"].startswith("disk full: ")
        assert report["scheduler"]["alive"] and report["scheduler"]["healthy"]
    finally:
        scheduler.close()
    assert scheduler.health_report()["scheduler"]["healthy"] is False


@pytest.mark.parametrize(("error", "said"), [
    (sqlite3.OperationalError("database is locked"), "database busy: database is locked"),
    (sqlite3.OperationalError("database or disk is full"), "disk full: database or disk is full"),
    (OSError(28, "No space left on device"), "disk full: [Errno 28] No space left on device"),
    (sqlite3.OperationalError("no such table: tracks"),
     "OperationalError: no such table: tracks"),
    (KeyError("path"), "KeyError: 'path'"),
])
def test_failures_are_worded_for_what_they_are(error, said):
    """"Database busy" only when it is; a full disk says so; anything
    else says its type and message (status_line, status, the health file)."""
    from sqlalchemy.exc import OperationalError

    assert describe_failure(error) == said
    if isinstance(error, sqlite3.OperationalError):  # as SQLAlchemy wraps it
        assert describe_failure(OperationalError("SELECT 1", {}, error)) == said
    health = Health("x")
    health.failed(error)
    assert health.report(True)["last_error"] == said


@pytest.mark.slow
def test_healthy_covers_every_thread_and_the_status_line_says_what_failed(tmp_path,
                                                                          make_config):
    """The watchdog pings only while healthy() holds: a component whose thread is gone
    (here: the writer, closed under the running service) makes it False, naming it in
    components(). status_line() words a database failure for what it is."""
    from sqlalchemy import create_engine
    from sqlalchemy.orm import sessionmaker

    from daemon.service.wiring import Service

    library = tmp_path / "library"
    library.mkdir()
    config = make_config(library, workers={"processes": 1}, retrain={"enabled": False},
                         review={"port": free_port()})
    service = Service(config)
    service.start()
    try:
        service._running = True  # what run() sets once start() returned (no signals here)
        service._beat = time.monotonic()
        assert service.healthy(), service.components()
        names = set(service.components())
        assert names >= {"main", "neighbours", "worker", "watcher", "settle", "writer", "web",
                         "scheduler", "reconcile", "retrainer"}
        writer = dict(service._started)["writer"]
        writer.close(timeout=5)
        assert service.components()["writer"]["alive"] is False
        assert not service.healthy()
        def published() -> dict:
            data = json.loads(config.health_path.read_text())
            writer = data["components"].get("writer", {})
            return data if writer.get("alive") is False else {}

        data = wait_for(published, 10, "the health file showing the dead writer")
        assert data["healthy"] is False and data["components"]["writer"]["healthy"] is False
        assert data["components"]["worker"]["healthy"] is True

        not_a_db = tmp_path / "not a database.db"
        not_a_db.write_text("this is a text file, not SQLite\n" * 100)
        real = service.sessions
        service.sessions = sessionmaker(create_engine(f"sqlite:///{not_a_db}"))
        try:
            line = service.status_line()
        finally:
            service.sessions = real
        assert line.startswith("DatabaseError: ") and "busy" not in line
    finally:
        service.stop()


@pytest.mark.slow
def test_sighup_reaches_every_component_of_a_running_service(tmp_path):
    """SIGHUP on a real service (run() in this process's main thread, signalled by
    os.kill): the new live keys reach the worker, library, watcher, writer, web app,
    retrainer and scheduler alike, not only the ones the service used to patch."""
    from daemon.service.scheduler import RECONCILE_JOB
    from daemon.service.wiring import Service

    library = tmp_path / "library"
    library.mkdir()
    path = tmp_path / "config.toml"

    def write(settle: float, minutes: float, audit: float) -> None:
        path.write_text(
            f'state_dir = "{tmp_path / "state"}"\n'
            f'[library]\nroot = "{library}"\nsettle_seconds = {settle}\n'
            f"reconcile_minutes = {minutes}\n"
            f"[workers]\nprocesses = 1\n[retrain]\nenabled = false\n"
            f"[classifier]\naudit_min_confidence = {audit}\n"
            f"[review]\nport = {free_port()}\n")

    write(1.0, 30, 0.5)
    from daemon.core.config import load_config

    service = Service(load_config(path), path)
    seen: dict[str, object] = {}

    def drive() -> None:
        try:
            wait_for(lambda: service._running, 60, "the service to start")
            old = service.config
            write(2.5, 7, 0.25)
            os.kill(os.getpid(), signal.SIGHUP)
            wait_for(lambda: service.config is not old, 10, "the reload")
            parts = {"worker": service.worker, "library": service.library,
                     "writer": service.writer, "web": service.web,
                     "retrainer": service.retrainer, "scheduler": service.scheduler}
            seen.update({name: (part.config.library.settle_seconds,
                                part.config.classifier.audit_min_confidence)
                         for name, part in parts.items()})
            seen["watcher"] = (service.watcher.config.settle_seconds,)
            # The settle pass reads library.settle_seconds from the library's running config
            # (the "library" entry), so no copy of it sits elsewhere to be refreshed.
            trigger = service.scheduler.scheduler.get_job(RECONCILE_JOB).trigger
            seen["reconcile every"] = (trigger.interval.total_seconds(),)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    handlers = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)}
    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    try:
        assert service.run() == 0
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    driver.join(10)
    assert seen == {**{name: (2.5, 0.25) for name in ("worker", "library", "writer", "web",
                                                     "retrainer", "scheduler")},
                    "watcher": (2.5,), "reconcile every": (420.0,)}


def test_a_reload_applies_live_keys_and_keeps_restart_keys_beside_them(tmp_path):
    """A reload that changes library.settle_seconds (live) and library.root (restart) in
    the same section runs with the new settle time and the old root."""
    from daemon.core.config import parse_config
    from daemon.tags.live import with_keys

    old_root, new_root = tmp_path / "music", tmp_path / "elsewhere"
    old_root.mkdir()
    new_root.mkdir()
    old = parse_config({"library": {"root": str(old_root), "settle_seconds": 1.0},
                        "state_dir": str(tmp_path / "state")})
    new = parse_config({"library": {"root": str(new_root), "settle_seconds": 2.5},
                        "workers": {"processes": 2}, "state_dir": str(tmp_path / "state")})
    running = with_keys(old, new, ["library.settle_seconds"])
    assert running.library.settle_seconds == 2.5
    assert running.library.root == old.library.root
    assert running.workers.processes == old.workers.processes
    assert running.model_dump() == old.model_copy(update={"library": old.library.model_copy(
        update={"settle_seconds": 2.5})}).model_dump()
