"""What is not a song: the one rule deciding whether a library file is a station ID,
sweeper, liner, promo or bed rather than a song.

A file is not a song when the reviewer marked it so ("Not a song"), or, unless the
reviewer marked it a song, when its path matches one of `[library] exclude`'s patterns
or it is shorter than `[library] min_song_seconds`. Whatever the marks, a file shorter
than one of the seed CNN's clips cannot be heard by any model and is not a song either.

Patterns are globs relative to the library root, "/"-separated, matched without regard
to case (SMB shares do not care about case either): `*` and `?` stay inside one folder
name, `[abc]` is a set, a `**` segment is any number of folders (none included). A
pattern that matches a folder covers everything under it, so "Jingles", "Jingles/**"
and "Jingles/*/**" all keep the Jingles folder out; "**/Sweepers" keeps out every folder
named Sweepers at any depth, and "*.wav" the WAV files at the root only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# The seed CNN's clip (daemon.audio.features.DEFAULT_SPEC.clip_seconds, written out: core
# sits below audio): nothing shorter can be classified by any model.
SHORTEST_SONG_SECONDS = 1.0

# Track.song_mark values: the reviewer's word, which wins over the rules.
MARKED_NOT_A_SONG = "not_a_song"
MARKED_SONG = "song"


def check_pattern(pattern: str) -> str:
    """A pattern as the config gives it -> its normal form ("./" and a trailing "/"
    dropped), or ValueError saying what is wrong with it."""
    text = pattern.strip()
    if text.startswith("./"):
        text = text[2:]
    text = text.rstrip("/")
    if not text:
        raise ValueError(f"{pattern!r}: an empty pattern would match nothing")
    if text.startswith("/") or re.match(r"^[A-Za-z]:[\\/]", text):
        raise ValueError(f"{pattern!r}: patterns are relative to the library root "
                         "(\"Jingles/**\", not \"/srv/music/Jingles/**\")")
    if "\\" in text:
        raise ValueError(f"{pattern!r}: separate folders with \"/\", not \"\\\"")
    segments = text.split("/")
    if "" in segments:
        raise ValueError(f"{pattern!r}: an empty folder name (\"//\")")
    if ".." in segments or "." in segments:
        raise ValueError(f"{pattern!r}: \"..\" and \".\" cannot appear in a pattern")
    return text


def _segment_regex(segment: str) -> str:
    """One folder or file name's glob -> a regex that never crosses "/"."""
    out, i = [], 0
    while i < len(segment):
        char = segment[i]
        if char == "*":
            out.append("[^/]*")
            while i + 1 < len(segment) and segment[i + 1] == "*":
                i += 1  # "a**" inside a name is "a*"
        elif char == "?":
            out.append("[^/]")
        elif char == "[" and (end := segment.find("]", i + 2)) != -1:
            body = segment[i + 1:end]
            negate = body[:1] in ("!", "^")
            body = body[1:] if negate else body
            body = "".join(c if c == "-" else re.escape(c) for c in body)
            out.append("[" + ("^/" if negate else "") + body + "]")
            i = end
        else:
            out.append(re.escape(char))
        i += 1
    return "".join(out)


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """A checked pattern -> a regex matched against "folder/" prefixes of a path (each
    ending in "/"), so a match on a folder covers what is under it."""
    parts = []
    for segment in check_pattern(pattern).split("/"):
        parts.append("(?:[^/]+/)*" if segment == "**" else _segment_regex(segment) + "/")
    return re.compile("".join(parts), re.IGNORECASE)


@dataclass(frozen=True)
class SongRules:
    """`[library] exclude` and `min_song_seconds`, compiled once."""

    exclude: tuple[str, ...] = ()
    min_song_seconds: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "_compiled",
                           tuple((p, compile_pattern(p)) for p in self.exclude))

    def excluded_by(self, path: str) -> str | None:
        """The first exclude pattern `path` (stored form, relative) falls under, or None."""
        if not self.exclude:
            return None
        parts = path.split("/")
        prefixes = ["/".join(parts[:n]) + "/" for n in range(1, len(parts) + 1)]
        for pattern, regex in self._compiled:  # type: ignore[attr-defined]
            if any(regex.fullmatch(prefix) for prefix in prefixes):
                return pattern
        return None

    def reason(self, path: str, duration: float | None, mark: str | None = None) -> str | None:
        """Why the file at `path` (stored form) of `duration` seconds (None: not known
        yet) is not a song, given the reviewer's mark -> the reason in words, or None
        when it is a song."""
        if duration is not None and duration < SHORTEST_SONG_SECONDS:
            return (f"{duration:.2f} s long: shorter than the {SHORTEST_SONG_SECONDS:g} s "
                    "a model needs to hear")
        if mark == MARKED_NOT_A_SONG:
            return "marked not a song in review"
        if mark == MARKED_SONG:
            return None
        pattern = self.excluded_by(path)
        if pattern is not None:
            return f"matches [library] exclude pattern {pattern!r}"
        if duration is not None and duration < self.min_song_seconds:
            return (f"{duration:.1f} s long: shorter than [library] min_song_seconds "
                    f"({self.min_song_seconds:g} s)")
        return None
