"""One validated config object, loaded once at start-up and passed down.

The file is TOML. Unknown keys and bad values are errors that name the key
(`workers.decode_timeout: Input should be greater than 0`).
"""

from __future__ import annotations

import ipaddress
import json
import os
import tomllib
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from daemon.core.errors import ConfigError

DEFAULT_CONFIG_PATHS = (Path("/etc/genretagger/config.toml"),)
ENV_CONFIG = "GENRETAGGER_CONFIG"

AUDIO_EXTENSIONS = (
    ".mp3", ".flac", ".ogg", ".oga", ".opus", ".m4a", ".mp4", ".aac",
    ".wav", ".aif", ".aiff", ".aifc", ".wma",
)


# The template's commented-out database_url line, which `init --database-url` replaces.
DATABASE_URL_COMMENT = (
    '# database_url = "postgresql+psycopg://genretagger:password@dbhost/genretagger"')
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def is_loopback(host: str | None) -> bool:
    """True for 127.0.0.0/8, ::1 and the localhost names (brackets and zone ids allowed)."""
    if not host:
        return False
    host = host.strip().strip("[]").split("%")[0].lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


class KeyedError(ValueError):
    """A rule across several keys of a section, reported under the key it is about."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(message)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LibraryConfig(Section):
    root: Path
    # auto: polling on network filesystems (inotify cannot see other SMB/NFS clients).
    watch: Literal["auto", "native", "polling"] = "auto"
    poll_seconds: float = Field(30.0, gt=0)
    settle_seconds: float = Field(10.0, ge=0)
    reconcile_minutes: float = Field(15.0, gt=0)
    extensions: tuple[str, ...] = AUDIO_EXTENSIONS
    # Refuse to mark tracks missing when more than this share vanishes in one walk.
    missing_guard: float = Field(0.20, gt=0, le=1)
    # Files that are not songs (station IDs, sweepers, liners, beds): never queued, never
    # trained on, listed with the reason (daemon.core.songrules). Globs relative to root.
    exclude: tuple[str, ...] = ()
    # Shorter files are not songs either. Off by default: IDs and sweepers run 3-30 s, but
    # so do interludes and intros, which a length alone would hide without a word.
    min_song_seconds: float = Field(0.0, ge=0)

    @field_validator("exclude")
    @classmethod
    def _checked_patterns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from daemon.core.songrules import check_pattern

        return tuple(dict.fromkeys(check_pattern(p) for p in value))

    @property
    def song_rules(self):
        """The exclude patterns and min_song_seconds as a daemon.core.songrules.SongRules."""
        from daemon.core.songrules import SongRules

        return SongRules(self.exclude, self.min_song_seconds)

    @field_validator("extensions")
    @classmethod
    def _lower_dotted(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in value)


class WorkersConfig(Section):
    processes: int = Field(default_factory=lambda: max(1, (os.cpu_count() or 2) - 1), ge=1)
    decode_timeout: float = Field(60.0, gt=0)
    max_attempts: int = Field(4, ge=1)
    backoff_seconds: float = Field(60.0, gt=0)
    nice: int = Field(10, ge=0, le=19)
    # Child processes are replaced after this many files so a leaking decoder cannot grow.
    max_tasks_per_child: int = Field(500, ge=1)
    # Reading a settled file's tags and audio header (in a child process) may take this
    # long; the review page's preview and spectrogram get decode_timeout.
    read_timeout: float = Field(30.0, gt=0)
    # Address space each decoder / tag-reader child may use (RLIMIT_AS). A child with
    # numpy and FFmpeg loaded starts near 450 MB; a 150 MB cover picture needs ~300 more.
    memory_max_mb: int = Field(2048, ge=512)
    # A worker (the service, or `genretagger worker` on any host) whose heartbeat is this
    # old is dead: the tracks it held go back to the queue. Several heartbeats' worth.
    dead_after_seconds: float = Field(60.0, ge=15)


class ClassifierConfig(Section):
    threads: int = Field(1, ge=1)
    batch_songs: int = Field(32, ge=1)
    # Windows of each song the model hears at inference (the CNN's clips and the
    # backbone's patches alike); the default is bench/windows.py's measurement.
    windows_per_song: int = Field(8, ge=1)
    # Also classify already-tagged files and flag strong disagreements for review.
    audit: bool = False
    audit_min_confidence: float = Field(0.9, gt=0, le=1)
    # Train and serve models on the pretrained musicnn backbone (see the README for its
    # licence); false keeps the station on the seed CNN alone.
    backbone: bool = True


class ReviewConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(8650, ge=1, le=65535)
    # Needed before the review page may listen on anything but loopback.
    password_hash: str | None = None
    token: str | None = None
    write_tags: bool = True
    tag_mode: Literal["replace", "add"] = "replace"
    reviewer: str = "music director"

    @model_validator(mode="after")
    def _no_open_page_without_a_login(self) -> ReviewConfig:
        # Here, not in `run`: check-config and every command see the same rule.
        if not is_loopback(self.host) and not (self.password_hash or self.token):
            raise KeyedError("host", (
                f"{self.host!r} is reachable from other machines: set review.password_hash "
                "(make one with `genretagger hash-password`) or review.token first, or keep "
                'review.host = "127.0.0.1"'))
        return self


class MetricsConfig(Section):
    # /metrics on the review page (Prometheus text format), behind the page's own rules:
    # this machine only without a password or token; else sign-in or the token as a
    # bearer token (what a scraper sends).
    enabled: bool = True


class ContextConfig(Section):
    # The album/artist prior (daemon.suggest.context): on by default. weight and smoothing
    # are used only when the active model carries no fitted values (a bundle from before
    # the trainer fitted them, or the cold-start one).
    enabled: bool = True
    weight: float = Field(0.8, ge=0)
    smoothing: float = Field(1.0, gt=0)


class RetrainConfig(Section):
    enabled: bool = True
    hour: int = Field(3, ge=0, le=23)
    minute: int = Field(0, ge=0, le=59)
    misfire_grace_minutes: int = Field(120, ge=1)
    min_new_labels: int = Field(25, ge=1)
    timeout_minutes: float = Field(180.0, gt=0)
    memory_max_mb: int = Field(4096, ge=256)
    epochs: int = Field(30, ge=1)
    # Promote a candidate only if macro-F1 >= active - this many points ...
    max_f1_drop: float = Field(0.5, ge=0)
    # ... and no class's recall drops by more than this many points.
    max_recall_drop: float = Field(5.0, ge=0)


class ServiceConfig(Section):
    # A standby `run` (another service holds the leader lock) tries the lock this often,
    # and the leader checks it still holds it as often.
    leader_poll_seconds: float = Field(5.0, gt=0, le=60)


class Config(Section):
    library: LibraryConfig
    state_dir: Path
    database_url: str | None = None
    # How long a write waits for another connection's lock (SQLite's busy timeout,
    # PostgreSQL's lock_timeout) before it fails; a failed job is logged, shown in
    # `status` and retried.
    database_busy_seconds: float = Field(30.0, gt=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    min_songs_per_genre: int = Field(20, ge=1)
    # The backbone head learns a genre from this many songs (the seed CNN needs the above).
    min_songs_per_genre_backbone: int = Field(3, ge=1)
    workers: WorkersConfig = WorkersConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    review: ReviewConfig = ReviewConfig()
    retrain: RetrainConfig = RetrainConfig()
    metrics: MetricsConfig = MetricsConfig()
    service: ServiceConfig = ServiceConfig()
    context: ContextConfig = ContextConfig()

    @field_validator("database_url")
    @classmethod
    def _supported_database(cls, value: str | None) -> str | None:
        # Only the two backends the tests run on; anything else fails here, not at the
        # first query (a bare postgresql:// would pick a driver we do not install).
        if value is None:
            return None
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(value)
        except ArgumentError:
            raise ValueError("not a database URL (sqlite:////path/genretagger.db or "
                             "postgresql+psycopg://user:password@host/database)") from None
        if url.drivername == "sqlite" and url.database not in (None, "", ":memory:"):
            return value
        if url.drivername == "postgresql+psycopg" and url.database:
            return value
        raise ValueError(f"{url.drivername}: use sqlite:////path/genretagger.db or "
                         "postgresql+psycopg://user:password@host/database")

    # Everything the daemon keeps lives under state_dir (local disk, not the share).
    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.state_dir / 'genretagger.db'}"

    @property
    def models_dir(self) -> Path:
        return self.state_dir / "models"

    @property
    def cache_dir(self) -> Path:
        return self.state_dir / "features"

    @property
    def runs_dir(self) -> Path:
        return self.state_dir / "runs"

    @property
    def health_path(self) -> Path:
        """Where the running service publishes its components' health for `status`."""
        return self.state_dir / "health.json"

    @property
    def genres_path(self) -> Path:
        """The station's editable genre map; the shipped one until `init` copies it."""
        return self.state_dir / "genres.toml"


def _describe(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        cause = (e.get("ctx") or {}).get("error")
        if isinstance(cause, KeyedError):
            loc.append(cause.key)
            msg = str(cause)
        key = ".".join(loc) or "(top level)"
        lines.append(f"{key}: {msg}")
    return "; ".join(lines)


def parse_config(data: dict, source: str = "config") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{source}: {_describe(err)}") from None


def find_config(path: Path | None) -> Path:
    """The config file to use: --config, $GENRETAGGER_CONFIG, then /etc/genretagger."""
    if path is not None:
        return path
    if os.environ.get(ENV_CONFIG):
        return Path(os.environ[ENV_CONFIG])
    for candidate in DEFAULT_CONFIG_PATHS:
        if candidate.exists():
            return candidate
    raise ConfigError(
        "no config file: pass --config, set GENRETAGGER_CONFIG, or run "
        "`genretagger init --library DIR` first"
    )


def load_config(path: Path | None = None) -> Config:
    path = find_config(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    return parse_config(data, str(path))


def render_config(library: Path, state_dir: Path, database_url: str | None = None) -> str:
    """The commented config.toml that `init` writes (database_url set when given)."""
    template = resources.files("daemon.core").joinpath("config.template.toml").read_text("utf-8")
    text = template.format(library=library, state_dir=state_dir)
    if database_url is None:
        return text
    # A TOML basic string is JSON's string syntax for what a URL can hold.
    return text.replace(DATABASE_URL_COMMENT, f"database_url = {json.dumps(database_url)}", 1)
