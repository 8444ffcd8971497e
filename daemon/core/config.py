"""One validated config object, loaded once at start-up and passed down.

The file is TOML. Unknown keys and bad values are errors that name the key
(`workers.decode_timeout: Input should be greater than 0`).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import tomllib
from importlib import resources
from pathlib import Path
from typing import Literal, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
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
# The largest number any setting may be.
MAX_NUMBER = 1_000_000
# A bearer token anyone could guess within the sign-in limits is no lock.
MIN_TOKEN_LENGTH = 32
# What werkzeug's generate_password_hash writes: method$salt$hex digest.
_HASH_SHAPE = re.compile(
    r"(?:scrypt(?::[1-9]\d*:[1-9]\d*:[1-9]\d*)?|pbkdf2(?::(?P<name>[\w-]+)(?::[1-9]\d*)?)?)"
    r"\$[^$]+\$[0-9a-f]+")


def is_password_hash(value: str) -> bool:
    """Is `value` a password hash werkzeug can check (scrypt or pbkdf2)?"""
    shape = _HASH_SHAPE.fullmatch(value)
    return bool(shape) and (shape["name"] is None
                            or shape["name"] in hashlib.algorithms_available)


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


def usable_directory(path: Path) -> Path:
    """`path` if it is a directory, or one this user can create (its nearest existing
    parent is a directory it can write in); else ValueError saying why. (An existing
    directory may belong to the service's user: `status` reads it as anyone.)"""
    given, path = path, Path(os.path.abspath(path))
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{path} is not a directory")
        return given
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{path} cannot be created: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{path} cannot be created: this user cannot write in {parent}")
    return given


class KeyedError(ValueError):
    """A rule across several keys of a section, reported under the key it is about."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(message)


class Section(BaseModel):
    # strict: `port = true`, `port = "8750"` and `write_tags = "yes"` are mistakes to
    # name, not values to guess at; a non-finite number is never a setting.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _from_toml(cls, value: object, info: ValidationInfo) -> object:
        # What TOML has no type for, and strict mode would refuse: a path is a string,
        # a tuple an array. Every section's Path and tuple fields, present and future.
        kinds = (annotation := cls.model_fields[info.field_name].annotation,
                 *get_args(annotation))
        if isinstance(value, str) and Path in kinds:
            return Path(value)
        if isinstance(value, list) and any(get_origin(k) is tuple for k in kinds):
            return tuple(value)
        return value

    @model_validator(mode="after")
    def _no_huge_numbers(self):
        # No setting needs more; far past it, a wait overflows (threading.TIMEOUT_MAX).
        for key, value in self:
            if isinstance(value, int | float) and not isinstance(value, bool) \
                    and abs(value) > MAX_NUMBER:
                raise KeyedError(key, f"Input should be at most {MAX_NUMBER:,}")
        return self


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


def _cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. systemd's CPUAffinity)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class WorkersConfig(Section):
    # Every core: the decoder children do the heavy part of a song (decoding and, with the
    # backbone, the backbone itself, ~300 ms); the service's own share is ~20 ms, and the
    # children run niced, so the review page and the database stay responsive.
    processes: int = Field(default_factory=_cores, ge=1)
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
    # onnxruntime threads for the model in the service itself. With the backbone, the
    # decoders run the costly part and one thread is plenty; without it the service runs
    # the whole CNN and is the bottleneck, so it gets two (bench/daemon.py --family
    # seed: 27 -> 33 songs/s on 2 cores).
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

    @model_validator(mode="before")
    @classmethod
    def _threads_for_the_cnn_alone(cls, data: object) -> object:
        if isinstance(data, dict) and "threads" not in data and data.get("backbone") is False:
            return {**data, "threads": 2}
        return data


class ReviewConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(8650, ge=1, le=65535)
    # Needed before the review page may listen on anything but loopback.
    password_hash: str | None = None
    token: str | None = None
    write_tags: bool = True
    tag_mode: Literal["replace", "add"] = "replace"
    reviewer: str = "music director"
    # Connections one address may hold open at once (a reverse proxy is one address).
    connections_per_address: int = Field(20, ge=1, le=500)
    # A request (headers and body) must arrive whole within this many seconds of its
    # first byte, and an idle connection is closed after as long.
    request_seconds: int = Field(20, ge=1, le=600)
    # The address of the reverse proxy in front of the page (README): its
    # X-Forwarded-For and X-Forwarded-Proto are believed, so the sign-in limits count each
    # browser, not the proxy, and the proxy is not held to connections_per_address.
    trusted_proxy: str | None = None

    @field_validator("trusted_proxy")
    @classmethod
    def _an_address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return str(ipaddress.ip_address(value))  # the form waitress compares with
        except ValueError:
            raise ValueError("the proxy's IP address (e.g. \"127.0.0.1\"), not a name "
                             "or a network") from None

    @field_validator("password_hash", "token", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("password_hash")
    @classmethod
    def _a_real_hash(cls, value: str | None) -> str | None:
        # A password pasted here would leave the page open to the LAN with nobody able
        # to sign in: only what `genretagger hash-password` prints is a hash.
        if value is not None and not is_password_hash(value):
            raise ValueError("not a password hash: put the line `genretagger "
                             "hash-password` prints here, never the password itself")
        return value

    @field_validator("token")
    @classmethod
    def _a_long_token(cls, value: str | None) -> str | None:
        if value is not None and (len(value) < MIN_TOKEN_LENGTH
                                  or any(c.isspace() for c in value)):
            raise ValueError(f"use at least {MIN_TOKEN_LENGTH} characters and no spaces "
                             "(e.g. `openssl rand -hex 24`)")
        return value

    @model_validator(mode="after")
    def _no_open_page_without_a_login(self) -> ReviewConfig:
        # Here, not in `run`: check-config and every command see the same rule.
        if not is_loopback(self.host) and not (self.password_hash or self.token):
            raise KeyedError("host", (
                f"{self.host!r} is reachable from other machines: set review.password_hash "
                "(make one with `genretagger hash-password`) or review.token first, or keep "
                'review.host = "127.0.0.1"'))
        if self.trusted_proxy and not (self.password_hash or self.token):
            # The page refuses every proxied request without one (daemon.review.web.auth).
            raise KeyedError("trusted_proxy", (
                "a page behind a proxy answers other machines: set review.password_hash "
                "(make one with `genretagger hash-password`) or review.token too"))
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
    weight: float = Field(0.8, ge=0, le=10)
    smoothing: float = Field(1.0, gt=0, le=1000)


class RetrainConfig(Section):
    enabled: bool = True
    hour: int = Field(3, ge=0, le=23)
    minute: int = Field(0, ge=0, le=59)
    misfire_grace_minutes: int = Field(120, ge=1)
    min_new_labels: int = Field(25, ge=1)
    timeout_minutes: float = Field(180.0, gt=0)
    memory_max_mb: int = Field(4096, ge=256)
    epochs: int = Field(30, ge=1)
    # The CNN trains on at most this many songs an epoch (a fresh sample, balanced across
    # genres, every epoch): a night's fit stops growing with the library. 2,000 songs of
    # 8 windows are ~16,000 clips, about 2 minutes an epoch on 2 cores.
    songs_per_epoch: int = Field(2000, ge=100)
    # Promote a candidate only if macro-F1 >= active - this many points ...
    max_f1_drop: float = Field(0.5, ge=0)
    # ... and no class's recall drops by more than this many points.
    max_recall_drop: float = Field(5.0, ge=0)


class ServiceConfig(Section):
    # A standby `run` (another service holds the leader lock) tries the lock this often,
    # and the leader checks it still holds it as often.
    leader_poll_seconds: float = Field(5.0, gt=0, le=60)


class BackupConfig(Section):
    # A SQLite database is copied (SQLite's online backup, checked) into
    # state_dir/backups daily at hour:minute local time and before every migration; the
    # newest `keep` copies stay. PostgreSQL: pg_dump, the DBA's own (README).
    enabled: bool = True
    hour: int = Field(2, ge=0, le=23)
    minute: int = Field(30, ge=0, le=59)
    keep: int = Field(7, ge=1)


class Config(Section):
    library: LibraryConfig
    state_dir: Path
    database_url: str | None = None
    # How long a write waits for another connection's lock (SQLite's busy timeout,
    # PostgreSQL's lock_timeout) before it fails; a failed job is logged, shown in
    # `status` and retried.
    database_busy_seconds: float = Field(30.0, gt=0, le=3600)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    min_songs_per_genre: int = Field(20, ge=1)
    # The backbone head learns a genre from this many songs (the seed CNN needs the above).
    min_songs_per_genre_backbone: int = Field(3, ge=1)
    workers: WorkersConfig = Field(default_factory=WorkersConfig)  # its cores: when read
    classifier: ClassifierConfig = ClassifierConfig()
    review: ReviewConfig = ReviewConfig()
    retrain: RetrainConfig = RetrainConfig()
    metrics: MetricsConfig = MetricsConfig()
    service: ServiceConfig = ServiceConfig()
    context: ContextConfig = ContextConfig()
    backup: BackupConfig = BackupConfig()

    @field_validator("state_dir")
    @classmethod
    def _a_directory_we_can_make(cls, value: Path) -> Path:
        # Checked, not created: check-config changes nothing on disk.
        return usable_directory(value)

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
    def backups_dir(self) -> Path:
        """Where the SQLite database's backups go (daemon.core.db.backup)."""
        return self.state_dir / "backups"

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
        elif e["type"] == "value_error" and cause is not None:
            msg = str(cause)  # our own sentence, without pydantic's "Value error, "
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
