"""One leader per database: the lock, and the service's leader/standby role.

Reconcile and watch, the writer, the scheduler and the nightly retrainer must run in one
service at a time; the worker and the review page may run in every one. The database
decides who leads, nothing of our own:

- PostgreSQL: `pg_try_advisory_lock(LOCK_KEY)` on a dedicated connection (not the pool's),
  held for the life of the leader. Advisory locks belong to the session, so the lock goes
  when that connection does: a leader that stops, crashes or is SIGKILLed frees it at
  once; one whose host dies frees it when the server's TCP keepalives give up on the
  connection (KEEPALIVE_SECONDS). The key is per database (PostgreSQL scopes advisory
  locks to the current database), so stations sharing a server do not meet.
- SQLite (one host only): fcntl.flock on state_dir/leader.lock, freed by the kernel when
  the holder exits in any way.

A leader whose lock connection dies (database restarted, network gone) exits with 1 and
lets systemd restart it (Restart=on-failure), rather than stop its leader-only parts and
stay up: the ordinary stop path stops them in order within the stop timeout, and the
restarted process opens a fresh engine and comes back as leader or standby by the same
rule as any start. The client side of that connection fails within CLIENT_GIVES_UP_SECONDS
of the network going, before the server frees the lock for another host.

Who leads is published for `status` as ServiceState "leader":
{"host", "pid", "since", "stopped_at"} (stopped_at: null while it leads).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text, update
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

from daemon.core.config import Config
from daemon.core.db.engine import is_postgresql, transaction
from daemon.core.db.models import ServiceState, utcnow
from daemon.core.db.models import Worker as WorkerRow
from daemon.core.health import Health

log = logging.getLogger(__name__)

LEADER_KEY = "leader"  # the ServiceState row
# A fixed 64-bit advisory lock key, derived from a name so that it says what it is for.
LOCK_KEY = int.from_bytes(hashlib.sha256(b"genretagger leader").digest()[:8], "big",
                          signed=True)
# Server side: an idle lock connection is probed after 10 s, then every 5 s, 3 times: a
# leader on a dead host loses the lock within about 25 s. Client side: a check whose data
# goes unacknowledged for 15 s fails, so a cut-off leader gives up (within one poll and
# 15 s) before the server hands the lock to another host.
KEEPALIVE_SECONDS = (10, 5, 3)  # idle, interval, count
CLIENT_GIVES_UP_SECONDS = 15
CONNECT_SECONDS = 10


def _lock_connect_args() -> dict[str, Any]:
    idle, interval, count = KEEPALIVE_SECONDS
    server = (f"-c tcp_keepalives_idle={idle} -c tcp_keepalives_interval={interval} "
              f"-c tcp_keepalives_count={count} "
              f"-c tcp_user_timeout={(idle + interval * count) * 1000}")
    return {"keepalives": 1, "keepalives_idle": idle, "keepalives_interval": interval,
            "keepalives_count": count, "tcp_user_timeout": CLIENT_GIVES_UP_SECONDS * 1000,
            "connect_timeout": CONNECT_SECONDS, "application_name": "genretagger leader",
            "options": server}


class LeaderLock:
    """The leader lock of the database at `url` (see the module docstring).

    acquire(timeout) -> bool: 0 tries once, None waits until it gets it, else tries for
    that many seconds. held() -> bool: still ours (PostgreSQL: the connection answers and
    the server lists the lock as ours). release() gives it up. A database that cannot be
    reached is "not acquired" (logged), never an exception.
    """

    def __init__(self, url: str, state_dir: Path):
        self.url = url
        self.postgres = is_postgresql(url)
        self.path = Path(state_dir) / "leader.lock"
        self._fd: int | None = None
        self._conn: Connection | None = None
        self._engine = (create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT",
                                      connect_args=_lock_connect_args())
                        if self.postgres else None)

    @property
    def where(self) -> str:
        """What the lock is, for the log."""
        return "a PostgreSQL advisory lock" if self.postgres else str(self.path)

    def acquire(self, timeout: float | None = 0.0, every: float = 1.0) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self.held() or self._try():
                return True
            if deadline is not None and time.monotonic() + every > deadline:
                return False
            time.sleep(every)

    def held(self) -> bool:
        if not self.postgres:
            return self._fd is not None
        if self._conn is None:
            return False
        hi, lo = (LOCK_KEY >> 32) & 0xFFFFFFFF, LOCK_KEY & 0xFFFFFFFF
        try:
            # A bigint key is listed as classid (high half), objid (low half), objsubid 1.
            return bool(self._conn.execute(text(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' "
                "AND pid = pg_backend_pid() AND granted AND objsubid = 1 "
                "AND classid = CAST(:hi AS bigint)::oid AND objid = CAST(:lo AS bigint)::oid)"),
                {"hi": hi, "lo": lo}).scalar())
        except Exception as err:  # the connection died: so did the lock
            log.warning("the leader lock's connection failed: %s", err)
            self._drop()
            return False

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": LOCK_KEY})
            self._drop()

    def close(self) -> None:
        self.release()
        if self._engine is not None:
            self._engine.dispose()

    def _try(self) -> bool:
        return self._try_postgres() if self.postgres else self._try_file()

    def _try_postgres(self) -> bool:
        try:
            if self._conn is None:  # a standby keeps its one connection between tries
                self._conn = self._engine.connect()
            return bool(self._conn.execute(text("SELECT pg_try_advisory_lock(:key)"),
                                           {"key": LOCK_KEY}).scalar())
        except Exception as err:
            log.warning("cannot reach the database for the leader lock: %s", err)
            self._drop()
            return False

    def _try_file(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        # For a person looking at the file; the lock is the kernel's, not this text.
        os.ftruncate(fd, 0)
        os.write(fd, f"{socket.gethostname()} {os.getpid()}\n".encode())
        self._fd = fd
        return True

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None


def lock_holder(state_dir: Path, locks: Path = Path("/proc/locks")) -> int | None:
    """The pid holding the SQLite leader lock (state_dir/leader.lock) right now, from the
    kernel's list of file locks, or None: a sign of life that needs no write (on a full
    disk the service can publish neither heartbeat nor health), and no try at the lock
    (which a starting service could lose to). Linux only; None elsewhere."""
    try:
        st = (Path(state_dir) / "leader.lock").stat()
        lines = locks.read_text().splitlines()
    except OSError:
        return None
    # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF": major:minor in hex, then inode.
    device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in lines:
        fields = line.split()
        if "->" in fields:  # a request waiting for the lock, not its holder
            continue
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == device:
            try:
                return int(fields[4])
            except ValueError:
                return None
    return None


class Stopping(Exception):
    """A stop began while the leader-only components were starting."""


def try_lock(config: Config) -> LeaderLock:
    """The leader lock of the config's database, tried once: what a service does at
    start-up, before the database is opened (lock.held() says whether it got it)."""
    lock = LeaderLock(config.db_url, config.state_dir)
    if lock.acquire(0):
        log.info("leader: holding %s", lock.where)
    return lock


class Leadership:
    """The service's role, as a Component: leader from the start (its `lock`, tried at
    start-up, is held), or a standby whose thread tries the lock every `poll_seconds` and
    calls `on_lead` (which starts the leader-only parts) once it has it. As leader, the
    thread checks the lock as often and calls `on_lost` when it is gone. `worker_id`: the
    service's row in the workers registry, whose role it keeps."""

    def __init__(self, config: Config, lock: LeaderLock, sessions, *,
                 on_lead: Callable[[], None], on_lost: Callable[[], None],
                 on_status: Callable[[str], None], worker_id: int | None = None):
        self.lock = lock
        self.sessions = sessions
        self.poll_seconds = config.service.leader_poll_seconds
        self.on_lead, self.on_lost, self.on_status = on_lead, on_lost, on_status
        self.worker_id = worker_id
        self.leading = lock.held()
        self.lost = False  # held the lock, then lost it: the service exits 1
        self.since = utcnow() if self.leading else None
        self.health = Health("leader")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="leader", daemon=True)

    def waiting_text(self) -> str:
        """What a standby says in the log and `systemctl status`."""
        holder = self.holder() or {}
        return (f"standby: waiting for the leader (host {holder.get('host', '?')} "
                f"pid {holder.get('pid', '?')})")

    def holder(self) -> dict | None:
        """The ServiceState "leader" value, or None (never published, or unreadable)."""
        try:
            with self.sessions() as session:
                row = session.get(ServiceState, LEADER_KEY)
                return dict(row.value) if row is not None else None
        except Exception as err:
            log.debug("cannot read the leader row: %s", err)
            return None

    def publish(self, stopped: bool = False) -> None:
        """The leader's ServiceState "leader" row, and its role on its worker row."""
        value = {"host": socket.gethostname(), "pid": os.getpid(),
                 "since": (self.since or utcnow()).isoformat(),
                 "stopped_at": utcnow().isoformat() if stopped else None}
        try:
            with transaction(self.sessions) as session:
                session.merge(ServiceState(key=LEADER_KEY, value=value, updated_at=utcnow()))
        except Exception as err:  # status shows the old row a while; the lock is what counts
            log.warning("cannot publish the leader: %s", err)
        if not stopped:  # a stopped leader's row keeps its role: status lists it as stopped
            self.set_role("leader" if self.leading else "standby")

    def set_role(self, role: str) -> None:
        """Worker.role on the service's own worker row, when it has one."""
        worker_id = self.worker_id
        if worker_id is None:
            return
        try:
            with transaction(self.sessions) as session:
                session.execute(update(WorkerRow).where(WorkerRow.id == worker_id)
                                .values(role=role))
        except Exception as err:
            log.warning("cannot record the role %s: %s", role, err)

    # ---- Component ---------------------------------------------------------------------

    def start(self) -> bool:
        """As leader: publish, start the leader-only parts (on_lead) here and now; as a
        standby, say whom it waits for. Then the thread polls. False: a stop began."""
        if self.leading:
            self.publish()
            try:
                self.on_lead()
            except Stopping:
                return False
        else:
            self.set_role("standby")
            log.info("%s; trying %s every %g s", self.waiting_text(), self.lock.where,
                     self.poll_seconds)
        self._thread.start()
        return True

    def halt(self, timeout: float) -> None:
        """Stop trying and checking (the service is stopping); the lock stays held."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def close(self, timeout: float = 5.0) -> None:
        self.halt(timeout)
        if self.leading and self.lock.held():
            self.publish(stopped=True)
        self.lock.close()

    def health_report(self) -> dict[str, Any]:
        alive = self._thread.is_alive()
        # Healthy too before its thread starts (start-up) and once the stop began.
        idle = self._thread.ident is None or self._stop.is_set()
        return self.health.report(alive, alive or idle,
                                  role="leader" if self.leading else "standby")

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                if self.leading:
                    if not self.lock.held():
                        self.leading, self.lost = False, True
                        log.error("lost the leader lock (%s): stopping, for systemd to "
                                  "restart this service", self.lock.where)
                        self.on_lost()
                        return
                elif self.lock.acquire(0):
                    self.leading, self.since = True, utcnow()
                    log.info("now the leader (holding %s)", self.lock.where)
                    self.publish()
                    try:
                        self.on_lead()
                    except Stopping:
                        return
                else:
                    self.on_status(self.waiting_text())
                self.health.progress()
            except Exception as err:  # logged and tried again at the next poll
                log.exception("leader check failed")
                self.health.failed(err)
