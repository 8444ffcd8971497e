"""Typed errors. Each names the file (or key) and the reason, so a log line or a
quarantine entry says exactly what went wrong; a bad file is data, never a crash."""

from __future__ import annotations

import errno

# The one errno -> reason table: what the station reads for a file it could not open,
# read or write (logs, quarantine entries, the write-back error on the review page).
OS_REASONS: dict[int, str] = {
    errno.ENOENT: "file vanished (deleted or moved)",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EISDIR: "is a directory, not an audio file",
    errno.ENAMETOOLONG: "file name too long for the filesystem",
    errno.EROFS: "the drive is read-only",
    errno.ELOOP: "symlink loop",
    errno.ENOSPC: "the drive is full",
    errno.EIO: "input/output error (drive offline?)",
    errno.ENOTCONN: "the drive is not connected",
    errno.ESTALE: "stale network handle",
    errno.EHOSTDOWN: "the file server is down",
}


def os_reason(err: OSError) -> str:
    """An OSError -> a short reason in the station's words (else the system's own)."""
    return OS_REASONS.get(err.errno, err.strerror or str(err))


class GenretaggerError(Exception):
    """Base of every error this package raises on purpose."""


class FileError(GenretaggerError):
    """Something about one file; `path` and `reason` go into logs and the DB."""

    def __init__(self, path: object, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class UnreadableAudio(FileError):
    """The file cannot be opened or decoded as audio."""


class TooShort(FileError):
    """The song is shorter than one clip."""


class SilentAudio(FileError):
    """The clips hold only silence: there is nothing to classify."""


class DecodeTimeout(FileError):
    """Decoding took longer than the configured limit."""


class TagError(FileError):
    """The file's tags cannot be read or written."""


class ModelMismatch(GenretaggerError):
    """A model bundle does not fit this daemon (feature spec, classes, format)."""


class ConfigError(GenretaggerError):
    """Bad configuration; the message names the key."""


class GenreMapError(ConfigError):
    """genres.toml is invalid; the message names the entry."""


class SchemaBehind(GenretaggerError):
    """The database needs migrations only the service applies (at its start)."""


class DatabaseUnreachable(GenretaggerError):
    """The database server (PostgreSQL) could not be reached; the message names it (no
    password) and the reason."""


class ReadTimeout(FileError):
    """Reading the file's tags and audio header took longer than the configured limit."""


class TooMuchMemory(FileError):
    """Reading or decoding the file needed more memory than a child process may use."""


class DatabaseDamaged(GenretaggerError):
    """The SQLite database file fails SQLite's integrity check (or is not a database at
    all); the message names it, the newest good backup and the restore command."""


class BackupFailed(GenretaggerError):
    """A backup could not be written or did not pass its integrity check; the message
    names the file and why."""


class DatabaseProblem(GenretaggerError):
    """A command met a database error (disk full, read-only, damaged, unreachable); the
    message names the database and what to do, in one line."""
