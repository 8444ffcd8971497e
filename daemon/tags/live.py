"""`Live`: the one holder of the running config and genre map.

The service builds one at start-up and hands it to every component; SIGHUP validates a
new Config (and loads its genre map) and `replace()`s both at once. A component keeps the
Live, never a Config of its own, and reads `live.config` / `live.genre_map` where it uses
them, so a reload reaches every one of them the same moment.
"""

from __future__ import annotations

import threading

from daemon.core.config import Config
from daemon.tags.genres import GenreMap, station_genre_map


class Live:
    """The running Config and GenreMap. Reads are plain attribute reads; `replace()` swaps
    both together under a lock, so no reader sees a new config with the old genre map."""

    def __init__(self, config: Config, genre_map: GenreMap | None = None):
        self._lock = threading.Lock()
        self._config = config
        self._genre_map = genre_map

    @property
    def config(self) -> Config:
        return self._config

    @property
    def genre_map(self) -> GenreMap:
        """The station's genres.toml, else the shipped one (loaded on first use when the
        Live was built without one)."""
        with self._lock:
            if self._genre_map is None:
                self._genre_map = station_genre_map(self._config)
            return self._genre_map

    def replace(self, config: Config, genre_map: GenreMap | None = None) -> None:
        """The reloaded config (and its genre map, loaded here when not given)."""
        genre_map = genre_map if genre_map is not None else station_genre_map(config)
        with self._lock:
            self._config, self._genre_map = config, genre_map

    def replace_genre_map(self, genre_map: GenreMap) -> None:
        """A new genre map under the running config (one the leader published)."""
        with self._lock:
            self._genre_map = genre_map


def as_live(config: Config | Live, genre_map: GenreMap | None = None) -> Live:
    """A component's one way in: the service's Live, or a Config (and genre map) of its
    own (a test, a CLI command), which gets a Live nobody else replaces."""
    return config if isinstance(config, Live) else Live(config, genre_map)


# Config keys the running service applies on SIGHUP; anything else needs a restart.
LIVE_KEYS = frozenset({
    "log_level", "library.reconcile_minutes", "library.settle_seconds",
    "workers.max_attempts", "workers.backoff_seconds",
    "classifier.batch_songs", "classifier.audit_min_confidence",
})


def changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dumps."""
    keys = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        dotted = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            keys += changed_keys(a, b, dotted + ".")
        elif a != b:
            keys.append(dotted)
    return keys


def with_keys(old: Config, new: Config, keys: list[str]) -> Config:
    """`old` with the values of these dotted keys taken from `new`: what runs after a
    reload that also changed keys needing a restart (those keep their running value, even
    beside a live key in the same section: library.root stays while settle_seconds moves)."""
    data, fresh = old.model_dump(), new.model_dump()
    for dotted in keys:
        *sections, leaf = dotted.split(".")
        into, source = data, fresh
        for section in sections:
            into, source = into[section], source[section]
        into[leaf] = source[leaf]
    return Config.model_validate(data)
