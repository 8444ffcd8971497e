"""The station's genre map shared through the database, versioned (the genre_maps table).

The station edits one genres.toml, on the host that runs the service (`genretagger run`).
The leader publishes its text as a new version whenever it differs from the newest one
(at start-up, when it takes the lead, and on SIGHUP). A host with no genres.toml of its
own (a `genretagger worker` or a standby with an empty state_dir) uses the newest
published version and follows later ones while it runs; a host with its own file keeps
using its file. Before anything is published, the shipped map applies, as before.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import time

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from daemon.core.config import Config
from daemon.core.db.engine import transaction
from daemon.core.db.models import StoredGenreMap
from daemon.core.errors import GenreMapError
from daemon.core.health import describe_failure
from daemon.tags.genres import (
    GenreMap,
    load_genre_map,
    parse_genre_map,
    station_genres_file,
)
from daemon.tags.live import Live

log = logging.getLogger(__name__)

# How often a host following the database looks for a newer version (one small query).
CHECK_SECONDS = 2.0


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def newest_genre_map(session: Session) -> StoredGenreMap | None:
    """The newest published version, or None before the first."""
    return session.scalars(select(StoredGenreMap)
                           .order_by(StoredGenreMap.version.desc()).limit(1)).first()


def stored_genre_map(row: StoredGenreMap) -> GenreMap:
    """A published version -> GenreMap (checked as when it was published)."""
    return parse_genre_map(row.text, f"genre map v{row.version} from the database "
                                     f"({row.source})")


def host_genre_map(config: Config, session: Session) -> GenreMap:
    """This host's genre map: its own genres.toml, else the newest published version, else
    the shipped map. Raises GenreMapError when the file (or version) is not valid."""
    path = station_genres_file(config)
    if path is not None:
        return load_genre_map(path)
    row = newest_genre_map(session)
    return stored_genre_map(row) if row is not None else load_genre_map(None)


def publish_genre_map(sessions: sessionmaker[Session], config: Config) -> int | None:
    """The leader's step: store this host's genres.toml as a new version when its text
    differs from the newest. Out: the newest version afterwards; None when this host has
    no genres.toml and nothing was ever published, or when publishing failed (an invalid
    file, the database): logged, and the other hosts keep the version they have."""
    try:
        return _publish(sessions, config)
    except Exception as err:
        log.error("cannot publish the genre map: %s", describe_failure(err))
        return None


def _publish(sessions: sessionmaker[Session], config: Config) -> int | None:
    path = station_genres_file(config)
    with transaction(sessions) as session:
        newest = newest_genre_map(session)
        if path is None:
            return newest.version if newest is not None else None
        genre_map = load_genre_map(path)
        text = path.read_text(encoding="utf-8")
        sha256 = _sha256(text)
        if newest is not None and newest.sha256 == sha256:
            return newest.version
        version = (session.scalar(select(func.max(StoredGenreMap.version))) or 0) + 1
        session.add(StoredGenreMap(version=version, text=text, sha256=sha256,
                                   source=f"{socket.gethostname()}:{path}"))
    log.info("genre map v%d published for every host: %d genres from %s", version,
             len(genre_map.canonical), path)
    return version


class FollowedGenreMap:
    """Keeps a Live's genre map on the newest published version, on a host with no
    genres.toml of its own. `refresh()` is cheap to call often: it looks every
    CHECK_SECONDS, and parses only a new version."""

    def __init__(self, live: Live, sessions: sessionmaker[Session]):
        self.live = live
        self.sessions = sessions
        self.version: int | None = None  # the version the Live holds (None: not one)
        self._checked = 0.0
        self._bad: int | None = None  # a version that did not parse: said once

    def refresh(self) -> int | None:
        """Swap in a newer published version, if any. Out: the version the Live holds."""
        now = time.monotonic()
        if now - self._checked < CHECK_SECONDS:
            return self.version
        self._checked = now
        if station_genres_file(self.live.config) is not None:
            self.version = None  # this host's own file rules
            return None
        with self.sessions() as session:
            newest = session.scalar(select(func.max(StoredGenreMap.version)))
            if newest is None or newest in (self.version, self._bad):
                return self.version
            row = session.get(StoredGenreMap, newest)
            try:
                genre_map = stored_genre_map(row)
            except GenreMapError as err:  # keep the map we have
                log.error("%s; keeping the genre map in use", err)
                self._bad = newest
                return self.version
        added = [g for g in genre_map.canonical if g not in self.live.genre_map.canonical]
        self.live.replace_genre_map(genre_map)
        self.version = newest
        log.info("genre map v%d from the database: %d genres%s", newest,
                 len(genre_map.canonical), f" (new: {', '.join(added)})" if added else "")
        return newest
