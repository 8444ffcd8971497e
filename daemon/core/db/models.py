"""SQLAlchemy 2 models. Portable SQL only: SQLite by default, any SQLAlchemy URL works.

Times are timezone-aware UTC. Paths are relative to the library root, POSIX-style, so
the same database survives the drive being mounted somewhere else.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from daemon.core.states import SuggestionStatus, TrackState


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Stores UTC, always returns aware datetimes (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime; use daemon.core.db.models.utcnow()")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


# Named constraints so Alembic batch migrations work on SQLite.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class Track(Base):
    """One audio file in the library."""

    __tablename__ = "tracks"

    id: Mapped[int] = mapped_column(primary_key=True)
    path: Mapped[str] = mapped_column(String(4096), unique=True)
    size: Mapped[int] = mapped_column(BigInteger)
    mtime: Mapped[float] = mapped_column(Float)
    fingerprint: Mapped[str | None] = mapped_column(String(64), index=True)
    format: Mapped[str | None] = mapped_column(String(16))
    duration: Mapped[float | None] = mapped_column(Float)
    title: Mapped[str | None] = mapped_column(String(1024))
    artist: Mapped[str | None] = mapped_column(String(1024))
    album: Mapped[str | None] = mapped_column(String(1024))
    album_artist: Mapped[str | None] = mapped_column(String(1024))
    # Which album the track is on (daemon.library.albums; None: a loose file at the root),
    # and whether that album is a compilation (its songs' artists differ).
    album_key: Mapped[str | None] = mapped_column(String(16), index=True)
    compilation: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # The tag as found in the file, and what genres.toml maps it to (None: untagged).
    raw_genre: Mapped[str | None] = mapped_column(String(1024))
    canonical_genre: Mapped[str | None] = mapped_column(String(64))
    # The reviewer's genre: a training label that overrides the file's tag.
    confirmed_genre: Mapped[str | None] = mapped_column(String(64))
    confirmed_at: Mapped[datetime | None]
    confirmed_decision_id: Mapped[int | None] = mapped_column(Integer)

    state: Mapped[str] = mapped_column(String(16), default=TrackState.QUEUED, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime | None]
    # Size/mtime right after our own tag write: a reconcile that sees exactly these
    # knows the change was ours and does not re-queue the file.
    written_size: Mapped[int | None] = mapped_column(BigInteger)
    written_mtime: Mapped[float | None] = mapped_column(Float)
    # The file's ctime when it was quarantined: a chmod/chown that fixes it changes only
    # this, and the next walk sends it back to the queue (daemon.library.reconcile).
    quarantined_ctime: Mapped[float | None] = mapped_column(Float)

    first_seen: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(default=utcnow)
    state_changed_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    # The workers.id holding the track while it is `working` (None otherwise).
    claimed_by: Mapped[int | None] = mapped_column(Integer, index=True)
    # The reviewer's word on what the file is (daemon.core.songrules: "not_a_song" or
    # "song"; None: the [library] rules decide), and why a not_a_song track is not one.
    song_mark: Mapped[str | None] = mapped_column(String(16))
    not_song_reason: Mapped[str | None] = mapped_column(Text)

    suggestions: Mapped[list[Suggestion]] = relationship(
        back_populates="track", order_by="Suggestion.id"
    )

    def __repr__(self) -> str:
        return f"<Track {self.id} {self.path!r} {self.state}>"


class Suggestion(Base):
    """A model's top-3 genres for one track."""

    __tablename__ = "suggestions"
    __table_args__ = (
        Index("ix_suggestions_status_confidence", "status", "confidence"),
        # The review queue filtered by genre reads in order straight from this index.
        Index("ix_suggestions_status_genre_confidence", "status", "genre", "confidence"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    track_id: Mapped[int] = mapped_column(ForeignKey("tracks.id"), index=True)
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id"))
    genre: Mapped[str] = mapped_column(String(64), index=True)
    confidence: Mapped[float] = mapped_column(Float)
    # [[genre, confidence], ...] best first, three entries.
    top: Mapped[list[Any]]
    status: Mapped[str] = mapped_column(String(16), default=SuggestionStatus.PENDING)
    # Audit mode: the file already had this genre and the model strongly disagrees.
    disagrees_with: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    replaces_id: Mapped[int | None] = mapped_column(ForeignKey("suggestions.id"))
    # The nearest confirmed-or-tagged songs by embedding, best first (up to three):
    # [{"track_id", "path", "genre", "similarity"}, ...]; None: no embedding for this song.
    sounds_like: Mapped[list[Any] | None]
    # The album/artist context that weighed in (daemon.suggest.context): the mates' genre
    # counts, the reason in words, the audio-only top genres; None: no context used.
    context: Mapped[dict[str, Any] | None]

    track: Mapped[Track] = relationship(back_populates="suggestions")


class Decision(Base):
    """The audit log: every review action, never deleted."""

    __tablename__ = "decisions"

    id: Mapped[int] = mapped_column(primary_key=True)
    track_id: Mapped[int] = mapped_column(ForeignKey("tracks.id"), index=True)
    suggestion_id: Mapped[int | None] = mapped_column(ForeignKey("suggestions.id"))
    action: Mapped[str] = mapped_column(String(16))  # accept | override | reject | undo
    how: Mapped[str] = mapped_column(String(16))  # single | bulk | override | undo
    genre: Mapped[str | None] = mapped_column(String(64))
    previous_genre: Mapped[str | None] = mapped_column(String(1024))
    who: Mapped[str] = mapped_column(String(128))
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    undoes_id: Mapped[int | None] = mapped_column(ForeignKey("decisions.id"))
    undone: Mapped[bool] = mapped_column(Boolean, default=False)
    # Tag write-back: pending | written | failed | off (write_tags = false) | none
    write_status: Mapped[str] = mapped_column(String(16), default="none", index=True)
    write_attempts: Mapped[int] = mapped_column(Integer, default=0)
    write_error: Mapped[str | None] = mapped_column(Text)
    next_write_at: Mapped[datetime | None]
    # Shared by the decisions of one album-at-a-time action: one undo takes them all back.
    batch_id: Mapped[str | None] = mapped_column(String(32), index=True)
    # The file's genre fields as they were just before this decision's write
    # (daemon.tags.restore.genre_fields); on an undo, the fields it puts back.
    file_fields_before: Mapped[dict[str, Any] | None]
    # The genre(s) the file read back after this decision's write ("" when none).
    file_genre: Mapped[str | None] = mapped_column(String(1024))


class Model(Base):
    """A model bundle the daemon has known: active, retired, rejected or candidate."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[int] = mapped_column(Integer, unique=True)
    path: Mapped[str] = mapped_column(String(4096))
    sha256: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), index=True)
    classes: Mapped[list[Any]]
    metrics: Mapped[dict[str, Any]]
    n_songs: Mapped[int] = mapped_column(Integer, default=0)
    data_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    activated_at: Mapped[datetime | None]
    # When the training set was frozen: labels confirmed after it are "new".
    trained_until: Mapped[datetime | None]
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("models.id"))
    report_path: Mapped[str | None] = mapped_column(String(4096))


class TrainingRun(Base):
    __tablename__ = "training_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    trigger: Mapped[str] = mapped_column(String(16))  # initial | nightly | manual
    status: Mapped[str] = mapped_column(String(16), index=True)
    # running | promoted | rejected | failed | skipped
    reason: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    summary: Mapped[dict[str, Any]] = mapped_column(default=dict)
    log_path: Mapped[str | None] = mapped_column(String(4096))
    pid: Mapped[int | None] = mapped_column(Integer)
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id"))


class Event(Base):
    """Throughput bookkeeping for `status` (files/min) without scanning logs."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(32))  # classified | failed | reconcile ...
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Worker(Base):
    """A running process that claims work: the service, or a `genretagger worker` on any
    host. Its heartbeat says it is alive; tracks held by one whose heartbeat stopped go
    back to the queue."""

    __tablename__ = "workers"

    id: Mapped[int] = mapped_column(primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))  # worker | leader | standby
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    stopped_at: Mapped[datetime | None]
    files_done: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class ServiceState(Base):
    """Small key/value facts the daemon publishes (pid, heartbeat, last reconcile)."""

    __tablename__ = "service_state"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[dict[str, Any]]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class BundleFile(Base):
    """One file of a model's bundle (model.onnx, model.keras, report.json...) kept in a
    shared database, so a host with an empty state_dir rebuilds its copy of the bundle.
    The bytes are in bundle_chunks under the file's sha256 (a file two bundles share is
    stored once)."""

    __tablename__ = "bundle_files"

    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)


class BundleChunk(Base):
    """A piece of a stored file, in order: rows of about a megabyte, so neither side ever
    holds a whole bundle in memory."""

    __tablename__ = "bundle_chunks"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class StoredGenreMap(Base):
    """A version of the station's genre map (its genres.toml text, as the leader
    published it): hosts without a genres.toml of their own follow the newest."""

    __tablename__ = "genre_maps"

    version: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(4096))  # host:path it was published from
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
