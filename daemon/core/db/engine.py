"""Engine and session setup, and migrations at start-up.

SQLite gets WAL (readers never block the daemon's writer), a busy timeout (a reviewer's
transaction or a backup holding the lock makes us wait, not fail) and foreign keys.

PostgreSQL (psycopg 3) runs READ COMMITTED: a write waits for the rows it touches (up to
the same busy timeout, as lock_timeout), not for one database-wide lock. Code that reads
a row, then changes it on what it read, locks it with SELECT ... FOR UPDATE first (the
review decisions, the writer's records), which on SQLite's BEGIN IMMEDIATE costs nothing.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import TypeVar

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event, inspect
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from daemon.core.db.backup import backup_database, damaged_message, is_damage
from daemon.core.disk import (
    database_unwritable,
    first_line,
    human_bytes,
    state_disk,
    unwritable_reason,
)
from daemon.core.errors import DatabaseUnreachable, SchemaBehind
from daemon.core.filesystems import filesystem_type, is_network_filesystem

log = logging.getLogger(__name__)
T = TypeVar("T")

BUSY_TIMEOUT_S = 30
# PostgreSQL: seconds to reach the server before a clear "unreachable" error, and enough
# pooled connections for the service's threads (worker, writer, reconcile, scheduler,
# retrainer, four web threads, metrics) without a wait for a free one.
CONNECT_TIMEOUT_S = 10
POOL_SIZE, POOL_OVERFLOW = 12, 8
# On PostgreSQL an impatient transaction's statements may run this many times its lock
# wait before they are cancelled (a page's query over a big library is slow, not stuck).
STATEMENT_FACTOR = 5
IMMEDIATE = "genretagger_immediate"
# An execution option: this engine's transactions wait at most this many seconds for
# SQLite's write lock (the review page answers "busy" rather than hold a server thread).
BUSY_TIMEOUT = "genretagger_busy_timeout"


def sqlite_path(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def is_postgresql(url: str) -> bool:
    return make_url(url).get_backend_name() == "postgresql"


def make_engine(url: str, busy_timeout: float = BUSY_TIMEOUT_S,
                connect_timeout: float = CONNECT_TIMEOUT_S,
                statement_timeout: float | None = None) -> Engine:
    """An engine for `url`; on SQLite a write waits up to `busy_timeout` seconds for
    another connection's lock before it fails with "database is locked", on PostgreSQL
    (lock_timeout) with "canceling statement due to lock timeout". PostgreSQL only:
    `connect_timeout` to reach the server, `statement_timeout` for every statement."""
    if is_postgresql(url):
        return _postgresql_engine(url, busy_timeout, connect_timeout, statement_timeout)
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


def _postgresql_engine(url: str, busy_timeout: float, connect_timeout: float,
                       statement_timeout: float | None) -> Engine:
    wait_ms = int(busy_timeout * 1000)
    # The connection's own lock_timeout is the busy timeout (set at connect: no round
    # trip per transaction).
    options = f"-c lock_timeout={wait_ms}"
    if statement_timeout is not None:
        options += f" -c statement_timeout={int(statement_timeout * 1000)}"
    engine = create_engine(
        url, pool_pre_ping=True, pool_size=POOL_SIZE, max_overflow=POOL_OVERFLOW,
        isolation_level="READ COMMITTED",
        # libpq counts whole seconds.
        connect_args={"connect_timeout": max(1, round(connect_timeout)), "options": options})

    @event.listens_for(engine, "begin")
    def _begin(conn):
        # An impatient caller's limits last for this transaction only (SET LOCAL), so the
        # pooled connection goes back to the service with its own lock_timeout.
        wanted = conn.get_execution_options().get(BUSY_TIMEOUT)
        if wanted is not None and int(wanted * 1000) != wait_ms:
            ms = int(wanted * 1000)
            # A query that runs long (not one waiting for a lock) is cut off too, later.
            conn.exec_driver_sql(f"SET LOCAL lock_timeout = {ms}")
            conn.exec_driver_sql(f"SET LOCAL statement_timeout = {ms * STATEMENT_FACTOR}")

    return engine


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def impatient_sessions(sessions: sessionmaker[Session], seconds: float) -> sessionmaker[Session]:
    """Sessions on the same engine and pool whose transactions wait at most `seconds` for
    a lock, then fail with OperationalError (database_busy): SQLite's write lock ("database
    is locked"), PostgreSQL's row locks (lock_timeout; statement_timeout at
    STATEMENT_FACTOR times it). Other databases: `sessions` unchanged."""
    engine = sessions.kw["bind"]
    if sqlite_path(str(engine.url)) is None and not is_postgresql(str(engine.url)):
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


def locked(session: Session, entity: type[T], ident: int) -> T | None:
    """Row `ident` of `entity`, locked until the transaction ends and read afresh (SELECT
    ... FOR UPDATE). On PostgreSQL (READ COMMITTED) whoever reads a row, then writes on
    what it read, takes this first, or a concurrent writer's commit in between is lost;
    on SQLite (BEGIN IMMEDIATE: one writer at a time) it is a plain read. Lock order
    wherever several are taken: suggestion, then track, then decision (no deadlocks)."""
    return session.get(entity, ident, with_for_update=True, populate_existing=True)


# SQLite's primary result codes (the low byte of an extended one).
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_FULL = 5, 6, 13


def _sqlite_code(exc: BaseException) -> int | None:
    orig = getattr(exc, "orig", None) or exc  # SQLAlchemy wraps the driver's exception
    code = getattr(orig, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


# PostgreSQL's SQLSTATEs: lock_not_available (lock_timeout), query_canceled
# (statement_timeout), serialization_failure, deadlock_detected; disk_full.
_PG_BUSY = frozenset({"55P03", "57014", "40001", "40P01"})
_PG_FULL = frozenset({"53100"})


def _sqlstate(exc: BaseException) -> str | None:
    orig = getattr(exc, "orig", None) or exc
    return getattr(orig, "sqlstate", None)


def database_full(exc: BaseException) -> bool:
    """Did the database fail for want of space: SQLite's "database or disk is full" (no
    space left on the state disk, or the database at its size limit), PostgreSQL's
    disk_full? Trying again will not help until space is made."""
    return _sqlite_code(exc) == _SQLITE_FULL or _sqlstate(exc) in _PG_FULL


def database_busy(exc: BaseException) -> bool:
    """Did the database fail because another connection held a lock for longer than this
    one was willing to wait (SQLite's "database is locked"; PostgreSQL's lock or statement
    timeout, a serialization failure or deadlock)? Trying again later can succeed."""
    return (_sqlite_code(exc) in (_SQLITE_BUSY, _SQLITE_LOCKED)
            or _sqlstate(exc) in _PG_BUSY)


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


def backups_folder(path: Path, backups_dir: Path | None) -> Path:
    """Where a SQLite file's backups go: `backups_dir` (the config's state_dir/backups),
    else a `backups` folder beside the file."""
    return backups_dir if backups_dir is not None else path.parent / "backups"


def migrate(engine: Engine, backups_dir: Path | None = None,
            keep_backups: int | None = None) -> Path | None:
    """Apply pending migrations, backing the SQLite file up first (daemon.core.db.backup,
    into `backups_dir`, the newest `keep_backups` kept). Returns the backup."""
    pending = pending_migrations(engine)
    if not pending:
        return None
    backup = None
    path = sqlite_path(str(engine.url))
    # A new database (no tables yet; `init`, a first start) has nothing to keep.
    if path is not None and path.exists() and inspect(engine).get_table_names():
        backup = backup_database(path, backups_folder(path, backups_dir), "migration",
                                 keep=keep_backups)
        log.info("backed up %s to %s before %d migration(s)", path, backup, len(pending))
    elif is_postgresql(str(engine.url)) and inspect(engine).get_table_names():
        # A server's database is the DBA's to back up: say how, once, before changing it.
        log.warning("applying %d migration(s) to %s without a backup of our own: for one, "
                    "stop the service and run pg_dump -Fc -d %s first", len(pending),
                    display_url(str(engine.url)), make_url(str(engine.url)).database)
    command.upgrade(alembic_config(engine), "head")
    return backup


def display_url(url: str) -> str:
    """The database as `status` and errors name it: a SQLite file's path, else the URL
    without its password."""
    path = sqlite_path(url)
    return str(path) if path is not None else make_url(url).render_as_string(
        hide_password=True)


def open_database(url: str, *, upgrade: bool = True, busy_timeout: float = BUSY_TIMEOUT_S,
                  backups_dir: Path | None = None, keep_backups: int | None = None
                  ) -> tuple[Engine, sessionmaker[Session]]:
    """Engine + sessions for a migrated database (used by every command and the daemon).

    upgrade=False, for every command but `run` and `init`: a database that does not exist
    yet is still created, but an existing one with pending migrations is left as it is
    and SchemaBehind raised. After a package upgrade the service may still be running the
    old code on it; its restart backs the file up and migrates.
    """
    warn_if_network_db(url)
    engine = make_engine(url, busy_timeout)
    tables = _table_names(engine)
    if not upgrade and tables:
        pending = pending_migrations(engine)
        if pending:
            engine.dispose()
            raise SchemaBehind(
                f"the database {display_url(url)} is {len(pending)} schema migration(s) "
                "behind this genretagger; the service applies them when it starts (sudo systemctl "
                "restart genretagger), then run this again")
    migrate(engine, backups_dir, keep_backups)
    return engine, make_sessionmaker(engine)


def _table_names(engine: Engine) -> list[str]:
    """The database's tables; a server that cannot be reached is DatabaseUnreachable,
    naming it (no password) and why, not a driver traceback."""
    try:
        return inspect(engine).get_table_names()
    except OperationalError as err:
        if sqlite_path(str(engine.url)) is not None:
            raise
        engine.dispose()
        reason = str(getattr(err, "orig", err)).strip().splitlines()
        raise DatabaseUnreachable(
            f"cannot reach the database {display_url(str(engine.url))}: "
            f"{reason[0] if reason else err}") from err


def database_problem(err: BaseException, url: str, backups_dir: Path | None = None) -> str:
    """A database error -> one line for a person: which database, what is wrong, what to
    do (full disk, damaged file, read-only, busy; else the driver's first line)."""
    name = display_url(url)
    path = sqlite_path(url)
    first = first_line(err)
    if database_full(err):
        if path is None:
            return (f"the database {name} cannot be written: the server's disk is full "
                    f"({first}); free space there, then try again")
        disk = state_disk(path.parent)
        return (f"the database {name} cannot be written: the disk is full "
                f"({human_bytes(disk['free_bytes'])} free on {path.parent}); free space "
                "there, then try again (nothing was changed)")
    if path is not None and is_damage(err):
        return damaged_message(path, first, backups_folder(path, backups_dir))
    if path is not None and database_unwritable(err):
        reason = unwritable_reason(path) or (
            f"{first}: give the service's user write access to the file and its folder")
        return f"the database {name} cannot be written: {reason}, then try again"
    if database_busy(err):
        return (f"the database {name} is busy ({first}): another program holds its lock; "
                "try again in a moment")
    return f"the database {name} failed: {first}"
