"""The station's canonical genres and the map from raw tag spellings to them.

The map lives in a TOML file the station edits (config.genres_path; the shipped default is
daemon/genres.toml):

    canonical = ["Blues", "Classical", ...]      # what the model learns and suggests

    [genres.Metal]
    aliases = ["Heavy Metal", "Thrash Metal", ...]

Matching ignores case, accents, spacing and punctuation, treats "&", "+" and "n" (as in
"rock 'n' roll") as "and", so "Hip Hop", "hip-hop" and "HIPHOP" are one spelling. Numeric
ID3v1 references left as text by conversion tools (`(17)`, `17`, `(17)Rock`) resolve through
the ID3v1 table. A value such as "Rock; Pop" or "Electronica/Dance" that does not match as a
whole is tried part by part. A raw genre with no mapping counts as untagged (None); with
several raw genres, the first that maps wins.
"""

from __future__ import annotations

import re
import tomllib
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType

from daemon.core.config import Config
from daemon.core.errors import GenreMapError
from daemon.tags.tagfile import ID3V1_GENRES

SHIPPED = "genres.toml"

_WORD = re.compile(r"[^\W_]+")
_NUMERIC = re.compile(r"^\(?(\d{1,3})\)?$")
_REFERENCES = re.compile(r"^((?:\((?:\d{1,3}|RX|CR)\))+)\s*(.*)$", re.IGNORECASE)
_SEPARATORS = re.compile(r"\s*(?:;|/|,|\||\\\\?)\s*")


def normalise(raw: str) -> str:
    """A raw genre -> its matching key: casefolded, accents dropped, "&"/"+"/"n" as "and",
    punctuation and spaces removed ("Rock 'n' Roll" -> "rockandroll", "Hip-Hop" -> "hiphop")."""
    text = unicodedata.normalize("NFKD", raw)
    text = "".join(c for c in text if not unicodedata.combining(c)).casefold()
    text = text.replace("&", " and ").replace("+", " and ")
    return "".join("and" if word == "n" else word for word in _WORD.findall(text))


@dataclass(frozen=True)
class GenreMap:
    """canonical: the genres in display order; aliases: normalised spelling -> canonical
    genre (every canonical name is its own alias); source: where it was loaded from."""

    canonical: tuple[str, ...]
    aliases: Mapping[str, str]
    source: str = field(default="", compare=False)

    def canonical_for(self, raw: str | Iterable[str] | None) -> str | None:
        """Raw genre value(s) from a file's tags -> canonical genre, or None (untagged)."""
        if raw is None:
            return None
        values = [raw] if isinstance(raw, str) else list(raw)
        for value in values:
            for candidate in _candidates(value):
                genre = self.aliases.get(normalise(candidate))
                if genre is not None:
                    return genre
        return None


def _candidates(value: str) -> Iterator[str]:
    """The spellings one raw value may stand for, most specific first."""
    yield from _resolved(value)
    parts = [p for p in _SEPARATORS.split(value) if p.strip()]
    if len(parts) > 1:
        for part in parts:
            yield from _resolved(part)


def _resolved(value: str) -> Iterator[str]:
    """A value with ID3v1 numeric references resolved: "(17)Rock" -> "Rock", "(17)" ->
    the 17th ID3v1 name ("Rock"), "9" -> "Metal"."""
    value = value.strip()
    number = _NUMERIC.match(value)
    if number:
        index = int(number.group(1))
        if index < len(ID3V1_GENRES):
            yield ID3V1_GENRES[index]
        return
    references = _REFERENCES.match(value)
    if not references:
        yield value
        return
    refs, text = references.groups()
    if text:
        yield text
    for ref in refs[1:-1].split(")("):
        if ref.isdigit() and int(ref) < len(ID3V1_GENRES):
            yield ID3V1_GENRES[int(ref)]


def default_genres_text() -> str:
    """The shipped genres.toml, comments and all (what `init` copies for the station)."""
    return resources.files("daemon.tags").joinpath(SHIPPED).read_text(encoding="utf-8")


def load_genre_map(path: Path | None = None) -> GenreMap:
    """genres.toml at `path` (None: the shipped file) -> validated GenreMap.
    Raises GenreMapError naming the file and the entry at fault."""
    if path is None:
        return parse_genre_map(default_genres_text(), f"shipped {SHIPPED}")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise GenreMapError(f"{path}: cannot read: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise GenreMapError(f"{path}: not UTF-8 text") from None
    return parse_genre_map(text, str(path))


def station_genre_map(config: Config) -> GenreMap:
    """The station's genres.toml (config.genres_path), else the shipped one."""
    return load_genre_map(config.genres_path if config.genres_path.exists() else None)


def parse_genre_map(text: str, source: str = "genres.toml") -> GenreMap:
    """TOML text -> validated GenreMap; `source` names the file in error messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise GenreMapError(f"{source}: not valid TOML: {err}") from None

    def fail(message: str) -> GenreMapError:
        return GenreMapError(f"{source}: {message}")

    unknown = set(data) - {"canonical", "genres"}
    if unknown:
        raise fail(f"unknown key(s) {', '.join(sorted(unknown))}; "
                   "expected `canonical = [...]` and [genres.NAME] tables")
    canonical = data.get("canonical")
    if canonical is None:
        raise fail("missing `canonical = [...]`, the list of genres to suggest")
    if not isinstance(canonical, list) or not all(isinstance(g, str) for g in canonical):
        raise fail("`canonical` must be a list of genre names in quotes")
    canonical = [g.strip() for g in canonical]
    if not canonical:
        raise fail("`canonical` is an empty list: name at least one genre")

    aliases: dict[str, str] = {}
    spelled: dict[str, str] = {}  # key -> the spelling that claimed it, for messages
    for genre in canonical:
        key = normalise(genre)
        if not key:
            raise fail(f"canonical genre {genre!r} has no letters or digits")
        if key in aliases:
            raise fail(f"canonical genres {spelled[key]!r} and {genre!r} are the same "
                       "spelling; keep one")
        aliases[key], spelled[key] = genre, genre

    tables = data.get("genres", {})
    if not isinstance(tables, dict):
        raise fail("`genres` must be tables like [genres.Rock]")
    for name, table in tables.items():
        where = f"[genres.{_quoted(name)}]"
        if name not in canonical:
            raise fail(f"{where}: {name!r} is not a canonical genre; add it to `canonical` "
                       f"or fix the spelling (canonical: {', '.join(canonical)})")
        if not isinstance(table, dict):
            raise fail(f"{where} must be a table with `aliases = [...]`")
        extra = set(table) - {"aliases"}
        if extra:
            raise fail(f"{where}: unknown key(s) {', '.join(sorted(extra))}; "
                       "only `aliases` is allowed")
        entries = table.get("aliases")
        if not isinstance(entries, list) or not all(isinstance(a, str) for a in entries):
            raise fail(f"{where}: `aliases` must be a list of spellings in quotes")
        if not entries:
            raise fail(f"{where}: `aliases` is an empty list; add spellings or delete the table")
        for alias in entries:
            key = normalise(alias)
            if not key:
                raise fail(f"{where}: alias {alias!r} has no letters or digits")
            owner = aliases.get(key)
            if owner is None:
                aliases[key], spelled[key] = name, alias
            elif owner != name:
                raise fail(f"{where}: alias {alias!r} already maps to {owner!r} "
                           f"(as {spelled[key]!r}); one spelling can have one genre")
    return GenreMap(tuple(canonical), MappingProxyType(aliases), source)


def _quoted(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else f'"{name}"'
