"""Engine and session setup, and migrations at start-up.

SQLite gets WAL (readers never block the daemon's writer), a busy timeout (a reviewer's
transaction or a backup holding the lock makes us wait, not fail) and foreign keys.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
from contextlib import contextmanager
from datetime import datetime
from importlib import resources
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event, inspect
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from daemon.core.errors import SchemaBehind
from daemon.library.mounts import filesystem_type, is_network_filesystem

log = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 30
IMMEDIATE = "genretagger_immediate"
# An execution option: this engine's transactions wait at most this many seconds for
# SQLite's write lock (the review page answers "busy" rather than hold a server thread).
BUSY_TIMEOUT = "genretagger_busy_timeout"


def sqlite_path(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def make_engine(url: str, busy_timeout: float = BUSY_TIMEOUT_S) -> Engine:
    """An engine for `url`; on SQLite a write waits up to `busy_timeout` seconds for
    another connection's lock before it fails with "database is locked"."""
    path = sqlite_path(url)
    if path is None:
        return create_engine(url, pool_pre_ping=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": busy_timeout})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, record):
        # We emit BEGIN ourselves (below): pysqlite's implicit BEGIN is always DEFERRED.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        record.info[BUSY_TIMEOUT] = int(busy_timeout * 1000)
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn):
        options = conn.get_execution_options()
        # Pooled connections are shared by every caller: each transaction sets the busy
        # timeout its caller asked for (only when it differs from the connection's).
        wait_ms = int(options.get(BUSY_TIMEOUT, busy_timeout) * 1000)
        if conn.info.get(BUSY_TIMEOUT) != wait_ms:
            conn.exec_driver_sql(f"PRAGMA busy_timeout={wait_ms}")
            conn.info[BUSY_TIMEOUT] = wait_ms
        # A write unit takes the write lock up front: a DEFERRED transaction that reads,
        # then writes after another connection committed fails at once with "database is
        # locked", which no busy timeout can help.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get(IMMEDIATE, False) else "BEGIN")

    return engine


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def impatient_sessions(sessions: sessionmaker[Session], seconds: float) -> sessionmaker[Session]:
    """Sessions on the same engine and pool whose SQLite transactions wait at most
    `seconds` for the write lock, then fail with "database is locked" (OperationalError).
    Other databases: `sessions` unchanged (PostgreSQL waits on row locks instead)."""
    engine = sessions.kw["bind"]
    if sqlite_path(str(engine.url)) is None:
        return sessions
    return sessionmaker(engine.execution_options(**{BUSY_TIMEOUT: seconds}),
                        **{k: v for k, v in sessions.kw.items() if k != "bind"})


@contextmanager
def transaction(sessions: sessionmaker[Session]):
    """One unit of work: commit on success, roll back on any error.

    On SQLite it holds the write lock from its first statement (BEGIN IMMEDIATE), so a
    concurrent writer waits for the busy timeout instead of failing half-way.
    """
    with sessions() as session, session.begin():
        session.connection(execution_options={IMMEDIATE: True})
        yield session


# SQLite's primary result codes (the low byte of an extended one).
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_FULL = 5, 6, 13


def _sqlite_code(exc: BaseException) -> int | None:
    orig = getattr(exc, "orig", None) or exc  # SQLAlchemy wraps the driver's exception
    code = getattr(orig, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def database_full(exc: BaseException) -> bool:
    """Did SQLite fail with "database or disk is full" (no space left on the state disk,
    or the database at its size limit)? Trying again will not help until space is made."""
    return _sqlite_code(exc) == _SQLITE_FULL


def database_busy(exc: BaseException) -> bool:
    """Did SQLite fail because another connection held a lock for longer than this one was
    willing to wait ("database is locked")? Trying again later can succeed."""
    return _sqlite_code(exc) in (_SQLITE_BUSY, _SQLITE_LOCKED)


def warn_if_network_db(url: str) -> str | None:
    path = sqlite_path(url)
    if path is None or not is_network_filesystem(path.parent):
        return None
    msg = (f"database {path} is on a network filesystem ({filesystem_type(path.parent)}); "
           "SQLite locking is unreliable there: put state_dir on a local disk")
    log.warning(msg)
    return msg


def alembic_config(engine: Engine) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(resources.files("migrations")))
    cfg.attributes["connection_engine"] = engine
    return cfg


def pending_migrations(engine: Engine) -> list[str]:
    script = ScriptDirectory.from_config(alembic_config(engine))
    with engine.connect() as conn:
        current = set(MigrationContext.configure(conn).get_current_heads())
    head = script.get_current_head()
    if head in current:
        return []
    # From the current revision (exclusive) up to head, oldest first: only what upgrade
    # will apply (walking down to the base would list revisions already applied).
    below = next(iter(current)) if current else "base"
    return [rev.revision for rev in reversed(list(script.iterate_revisions(head, below)))
            if rev.revision not in current]


def backup_sqlite(path: Path) -> Path:
    """A consistent copy via SQLite's online backup (safe with WAL and readers)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.bak-{stamp}")
    src = sqlite3.connect(path)
    try:
        dst = sqlite3.connect(target)
        with dst:
            src.backup(dst)
        dst.close()
    finally:
        src.close()
    return target


def migrate(engine: Engine) -> Path | None:
    """Apply pending migrations, backing the SQLite file up first. Returns the backup."""
    pending = pending_migrations(engine)
    if not pending:
        return None
    backup = None
    path = sqlite_path(str(engine.url))
    # A new database (no tables yet; `init`, a first start) has nothing to keep.
    if path is not None and path.exists() and inspect(engine).get_table_names():
        backup = backup_sqlite(path)
        log.info("backed up %s to %s before %d migration(s)", path, backup, len(pending))
    command.upgrade(alembic_config(engine), "head")
    return backup


def keep_newest_backups(path: Path, keep: int = 5) -> None:
    backups = sorted(path.parent.glob(f"{path.name}.bak-*"))
    for old in backups[:-keep]:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)


def open_database(url: str, *, upgrade: bool = True, busy_timeout: float = BUSY_TIMEOUT_S
                  ) -> tuple[Engine, sessionmaker[Session]]:
    """Engine + sessions for a migrated database (used by every command and the daemon).

    upgrade=False, for every command but `run` and `init`: a database that does not exist
    yet is still created, but an existing one with pending migrations is left as it is
    and SchemaBehind raised. After a package upgrade the service may still be running the
    old code on it; its restart backs the file up and migrates.
    """
    warn_if_network_db(url)
    engine = make_engine(url, busy_timeout)
    if not upgrade and inspect(engine).get_table_names():
        pending = pending_migrations(engine)
        if pending:
            engine.dispose()
            where = sqlite_path(url) or make_url(url).render_as_string(hide_password=True)
            raise SchemaBehind(
                f"the database {where} is {len(pending)} schema migration(s) behind this "
                "genretagger; the service applies them when it starts (sudo systemctl "
                "restart genretagger), then run this again")
    migrate(engine)
    path = sqlite_path(url)
    if path is not None:
        keep_newest_backups(path)
    return engine, make_sessionmaker(engine)
