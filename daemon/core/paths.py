"""The three forms of a library path, and the one checked resolution inside the library.

    filesystem  what the OS gives and takes: a str from os.fsdecode, i.e. UTF-8 with
                `surrogateescape` (a byte that is not valid UTF-8, say a Latin-1 name
                copied from an old Windows share, is a lone surrogate U+DC80..U+DCFF)
    stored      Track.path: the filesystem form relative to the library root, with each
                such byte written as the four characters `\\xNN` (NN lower-case hex,
                80..ff) and each literal backslash doubled (`\\\\`). SQL databases refuse
                lone surrogates; doubling the escape character is what makes the form
                one-to-one: a file literally named `a\\xe9.mp3` is stored `a\\\\xe9.mp3`,
                the one with the raw byte 0xE9 `a\\xe9.mp3`. A name that is valid UTF-8
                and has no backslash is stored unchanged, so nearly every row reads as
                the name on disk.
    display     for people (logs, errors, `scan`, `status`): the bytes decoded as UTF-8
                with each undecodable byte shown `\\xNN` (Python's backslashreplace). Not
                one-to-one (a literal `\\xe9` shows the same), so never stored or parsed.

`stored_path` and `filesystem_path` are inverses over every name a POSIX filesystem
allows; `filesystem_path` refuses text that is not a stored form instead of guessing.
Migration 0002 rewrote rows stored before backslashes were doubled.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

from daemon.core.errors import FileError

# One token of the stored form: an escape (doubled backslash or a raw byte), or a
# backslash that starts neither (not a stored form).
_TOKEN = re.compile(r"\\(?:(\\)|x([89a-f][0-9a-f]))|\\")


class OutsideLibrary(FileError):
    """A track's stored path does not lead to a file inside the library root."""


def stored_path(relpath: str) -> str:
    """A relative path in filesystem form (surrogateescape str) -> the stored form.

    Raises ValueError for text no filesystem name decodes to (a surrogate outside
    U+DC80..U+DCFF)."""
    if "\\" not in relpath and relpath.isascii():
        return relpath  # the common case, fast
    out = []
    for ch in relpath:
        if ch == "\\":
            out.append("\\\\")
        elif "\udc80" <= ch <= "\udcff":
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        elif "\ud800" <= ch <= "\udfff":
            raise ValueError(f"not a filesystem name: {relpath!r}")
        else:
            out.append(ch)
    return "".join(out)


def filesystem_path(stored: str) -> str:
    """The stored form -> the relative path in filesystem form (inverse of stored_path).

    Raises ValueError when `stored` is not a stored form (a lone backslash, an escape of
    a byte below 0x80, or a surrogate)."""
    if "\\" not in stored:
        if any("\ud800" <= ch <= "\udfff" for ch in stored):
            raise ValueError(f"not a stored path: {stored!r}")
        return stored

    def token(m: re.Match) -> str:
        if m.group(1):
            return "\\"
        if m.group(2):
            return chr(0xDC00 + int(m.group(2), 16))
        raise ValueError(f"not a stored path (lone backslash at {m.start()}): {stored!r}")

    return _TOKEN.sub(token, stored)


def display(path: str | os.PathLike | bytes) -> str:
    """A filesystem path (str, Path or bytes) -> text for people (see the module docstring)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def display_stored(stored: str) -> str:
    """A stored path -> text for people; a row that is not a stored form is shown as is."""
    try:
        return display(filesystem_path(stored))
    except ValueError:
        return stored


def within(folder: str, path: str) -> bool:
    """Whether `path` is `folder` or lies under it, both absolute and normalised (names
    compared as they are: resolve them first where symlinks matter)."""
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def relative_inside(folder: str, path: str) -> str | None:
    """`path` relative to `folder` (both absolute and normalised), or None when it is the
    folder itself or lies outside it."""
    if path == folder or not within(folder, path):
        return None
    return path[len(folder.rstrip("/")) + 1:]


def is_inside(real_root: str, path: str | os.PathLike) -> bool:
    """Whether `path`, through every symlink, ends inside `real_root` (an
    os.path.realpath). Resolves names only: nothing is opened, so a link to a FIFO or a
    device never blocks."""
    return within(real_root, os.path.realpath(path))


def library_file(root: Path | str, stored: str) -> Path:
    """The real file of a track's stored path; raises OutsideLibrary when the path is not
    a stored form, is absolute, climbs with "..", is gone, resolves (through symlinks)
    outside `root`, or is not a regular file. A backslash is an ordinary POSIX name
    character here. The review page's media and the writer both go through here."""
    shown = display_stored(stored)
    try:
        on_disk = filesystem_path(stored)
    except ValueError:
        raise OutsideLibrary(shown, "not a path inside the library") from None
    pure = PurePosixPath(on_disk)
    if not stored or pure.is_absolute() or ".." in pure.parts:
        raise OutsideLibrary(shown, "not a path inside the library")
    root = Path(root).resolve()
    try:
        real = (root / Path(*pure.parts)).resolve(strict=True)
    except (OSError, RuntimeError):
        raise OutsideLibrary(shown, "the file is gone") from None
    if not is_inside(str(root), real):
        raise OutsideLibrary(shown, "leads outside the library")
    if not real.is_file():
        raise OutsideLibrary(shown, "not a regular file")
    return real
