"""A throwaway PostgreSQL server for the tests: Debian's `postgresql` package, initdb and
pg_ctl into a temporary directory, listening on a Unix socket in that directory only (no
TCP port), stopped and deleted when the test session ends.

PostgreSQL refuses to run as root, so under root (CI) the cluster belongs to the
package's `postgres` user and its commands run through runuser. Durability is switched off
(fsync, full_page_writes): a test cluster that dies loses nothing anyone needs.

Each test gets its own database. Migrated ones are copies of one template database that
Alembic upgraded once (CREATE DATABASE ... TEMPLATE is a file copy: milliseconds, where
running the migrations again would take a second).
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

SUPERUSER = "genretagger"
TEMPLATE = "genretagger_template"


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                   key=lambda p: int(Path(p).parts[-3]))
    if not found:
        raise RuntimeError("PostgreSQL's server is not installed: the tests need Debian's "
                           "postgresql package (make test installs it)")
    return Path(found[-1]).parent


class Cluster:
    """One running server. url(name) is a SQLAlchemy URL for database `name`."""

    def __init__(self) -> None:
        self.bin = _bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="genretagger-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root
        self._owner = "postgres" if os.geteuid() == 0 else None
        self._names = itertools.count(1)
        self._template_ready = False

    def _run(self, *args: str) -> None:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if self._owner:
            cmd = ["runuser", "-u", self._owner, "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed ({result.returncode}): "
                               f"{result.stderr.strip() or result.stdout.strip()}")

    def start(self) -> Cluster:
        if self._owner:
            shutil.chown(self.root, self._owner)
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust",
                  "--encoding=UTF8", "--no-instructions", "--no-sync")
        options = (f"-c listen_addresses='' -c unix_socket_directories={self.socket_dir} "
                   "-c fsync=off -c full_page_writes=off -c synchronous_commit=off "
                   "-c max_connections=200")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"),
                  "-o", options, "-w", "-t", "60", "start")
        return self

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, name: str = "postgres") -> str:
        return f"postgresql+psycopg://{SUPERUSER}@/{name}?host={self.socket_dir}"

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(host=str(self.socket_dir), user=SUPERUSER, dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(sql)

    def new_database(self, migrated: bool = True) -> str:
        """A new empty database (migrated to head, or blank); returns its URL."""
        if migrated and not self._template_ready:
            self._make_template()
        name = f"test_{os.getpid()}_{next(self._names)}"
        template = TEMPLATE if migrated else "template0"
        self._admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        from sqlalchemy.engine import make_url

        name = make_url(url).database
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _make_template(self) -> None:
        from daemon.core.db.engine import make_engine, migrate

        self._admin(f'CREATE DATABASE "{TEMPLATE}" TEMPLATE template0')
        engine = make_engine(self.url(TEMPLATE))
        try:
            migrate(engine)
        finally:
            engine.dispose()
        self._template_ready = True
