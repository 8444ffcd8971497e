"""Model bundles kept in a shared database, and each host's copy of them.

On PostgreSQL (the database several hosts share) the registry stores every file of a
bundle it registers (bundle_files, with the bytes in bundle_chunks under the file's
sha256). A host uses a bundle from `state_dir/models/vNNNN/`: when its copy there is
missing or differs from the stored one, it rebuilds it from the database first (written
into a temporary folder, each file checked against its sha256, then renamed into place),
so a `genretagger worker` or standby with an empty state_dir follows the active model
without a shared mount or a copy made by hand.

SQLite is one host: its bundles stay files in models_dir and nothing else (storing them
too would grow the database, and its backups, by a whole bundle every night).

Bytes move in chunks of CHUNK_BYTES, both ways, so neither side holds a bundle (the
backbone makes one 10-20 MB) in memory at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection, func, insert, select
from sqlalchemy.orm import Session, sessionmaker

from daemon.core.config import Config
from daemon.core.db.models import BundleChunk, BundleFile, Model
from daemon.core.durable import fsync_dir, fsync_file
from daemon.core.errors import GenretaggerError

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20

# The served model's family fitted without its test songs, beside model.onnx (which is
# refit on every label): the gate judges it (daemon.learn.gate).
HELD_OUT = "held_out.onnx"
# What a bundle folder holds; only model.onnx is required.
BUNDLE_FILES = ("model.onnx", "model.keras", "report.json", "split.json",
                "confusion.png", "reliability.png", HELD_OUT)


class BundleUnavailable(GenretaggerError):
    """A model's bundle cannot be had on this host: not stored, or the stored copy is
    damaged (the message names the model and the file)."""


@dataclass(frozen=True)
class StoredFile:
    name: str
    sha256: str
    size: int


def shares_bundles(bind: Session | Connection) -> bool:
    """True when the database is the shared one (PostgreSQL) that keeps bundle bytes."""
    return bind.get_bind().dialect.name == "postgresql" if isinstance(bind, Session) \
        else bind.dialect.name == "postgresql"


def bundle_folder(config: Config, version: int) -> Path:
    """Where model `version`'s bundle lives on this host."""
    return config.models_dir / f"v{version:04d}"


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, hex (what a model is known by), read in 1 MB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


# ---- storing ----------------------------------------------------------------------------

def store_bundle(connection: Connection, model_id: int, folder: Path) -> int:
    """Store the bundle files in `folder` as model `model_id`'s, inside the caller's
    transaction. A file whose bytes are stored already (same sha256) is not sent again.
    Out: the bytes sent. Raises BundleUnavailable when a file changes while it is read."""
    sent = 0
    for name in BUNDLE_FILES:
        path = folder / name
        if not path.is_file():
            continue
        sha256 = file_sha256(path)
        size = path.stat().st_size
        stored = connection.scalar(select(func.count()).select_from(BundleChunk)
                                   .where(BundleChunk.sha256 == sha256))
        if not stored:
            sent += _send(connection, path, sha256)
        connection.execute(insert(BundleFile).values(model_id=model_id, name=name,
                                                     sha256=sha256, size=size))
    return sent


def _send(connection: Connection, path: Path, sha256: str) -> int:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for seq, block in enumerate(iter(lambda: f.read(CHUNK_BYTES), b"")):
            connection.execute(insert(BundleChunk).values(sha256=sha256, seq=seq, data=block))
            digest.update(block)
            size += len(block)
    if digest.hexdigest() != sha256:
        raise BundleUnavailable(f"{path}: changed while it was being stored")
    return size


def stored_files(session: Session, model_id: int) -> list[StoredFile]:
    """The files stored for a model ([] on SQLite, or for a model stored nowhere)."""
    rows = session.execute(select(BundleFile.name, BundleFile.sha256, BundleFile.size)
                           .where(BundleFile.model_id == model_id)
                           .order_by(BundleFile.name)).all()
    return [StoredFile(*row) for row in rows]


def _chunks(session: Session, sha256: str) -> Iterator[bytes]:
    # yield_per streams the rows (a server-side cursor on PostgreSQL).
    result = session.execute(select(BundleChunk.data).where(BundleChunk.sha256 == sha256)
                             .order_by(BundleChunk.seq).execution_options(yield_per=2))
    for (block,) in result:
        yield bytes(block)


def verify_stored(session: Session, model: Model) -> None:
    """Read every stored file of `model` back and check it against its sha256 (and
    model.onnx against the model's). Raises BundleUnavailable naming what is wrong."""
    files = stored_files(session, model.id)
    onnx = next((f for f in files if f.name == "model.onnx"), None)
    if onnx is None:
        raise BundleUnavailable(f"v{model.version:04d}: its bundle is not in the database")
    if onnx.sha256 != model.sha256:
        raise BundleUnavailable(f"v{model.version:04d}: the database's model.onnx is not "
                                "the one registered (sha256 differs)")
    for stored in files:
        digest, size = hashlib.sha256(), 0
        for block in _chunks(session, stored.sha256):
            digest.update(block)
            size += len(block)
        if size != stored.size or digest.hexdigest() != stored.sha256:
            raise BundleUnavailable(f"v{model.version:04d}: the database's copy of "
                                    f"{stored.name} does not match its sha256")


# ---- this host's copy --------------------------------------------------------------------

def local_bundle(sessions: sessionmaker[Session], config: Config, model: Model) -> Path:
    """The folder on this host holding `model`'s bundle (model.onnx, ...).

    Shared database: `state_dir/models/vNNNN`, rebuilt from the database first when it is
    missing or any stored file differs there. Otherwise (SQLite, or a model that was never
    stored) the folder the registry recorded. Raises BundleUnavailable when the stored
    copy is damaged; OSError when this host cannot write its copy."""
    with sessions() as session:
        files = stored_files(session, model.id)
    if not files:
        path = Path(model.path)
        return (path if path.is_absolute() else config.models_dir / path).parent
    folder = bundle_folder(config, model.version)
    if _holds(folder, files):
        return folder
    config.models_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp",
                                dir=config.models_dir))
    try:
        with sessions() as session:
            for stored in files:
                _fetch(session, stored, tmp / stored.name, model.version)
        os.chmod(tmp, 0o755)
        fsync_dir(tmp)
        _put_in_place(tmp, folder, files)
        for stored in files:  # just checked: the next look needs no hashing
            _remember(folder / stored.name, stored.sha256)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("model v%04d: bundle copied from the database into %s (%d files, %.1f MB)",
             model.version, folder, len(files), sum(f.size for f in files) / 1e6)
    return folder


def _fetch(session: Session, stored: StoredFile, path: Path, version: int) -> None:
    digest, size = hashlib.sha256(), 0
    with open(path, "wb") as out:
        for block in _chunks(session, stored.sha256):
            out.write(block)
            digest.update(block)
            size += len(block)
    if size != stored.size or digest.hexdigest() != stored.sha256:
        raise BundleUnavailable(f"v{version:04d}: the database's copy of {stored.name} "
                                "does not match its sha256")
    fsync_file(path)


def _put_in_place(tmp: Path, folder: Path, files: list[StoredFile]) -> None:
    """Rename the checked copy into place; a damaged copy there is moved aside first.
    Another process on this host may have put a good copy there meanwhile: kept."""
    try:
        os.rename(tmp, folder)
    except OSError:
        if _holds(folder, files):
            return
        aside = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp",
                                      dir=folder.parent))
        os.rename(folder, aside / folder.name)
        os.rename(tmp, folder)
        shutil.rmtree(aside, ignore_errors=True)
    fsync_dir(folder.parent)


# (path, inode, size, mtime) -> sha256: a copy is hashed once per process, not per look.
_HASHED: dict[tuple[str, int, int, int], str] = {}


def _key(path: Path, st: os.stat_result) -> tuple[str, int, int, int]:
    return (str(path), st.st_ino, st.st_size, st.st_mtime_ns)


def _remember(path: Path, sha256: str) -> None:
    with contextlib.suppress(OSError):
        _HASHED[_key(path, path.stat())] = sha256


def _holds(folder: Path, files: list[StoredFile]) -> bool:
    for stored in files:
        path = folder / stored.name
        try:
            st = path.stat()
        except OSError:
            return False
        if st.st_size != stored.size:
            return False
        key = _key(path, st)
        if key not in _HASHED:
            _HASHED[key] = file_sha256(path)
        if _HASHED[key] != stored.sha256:
            return False
    return True
