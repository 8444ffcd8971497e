"""The station's canonical genres and the map from raw tag spellings to them.

The map lives in a TOML file the station edits (genres.toml in the state dir, which `init`
copies from the shipped daemon/tags/genres.toml; `station_genre_map` loads it):

    canonical = ["Blues", "Classical", ...]      # what the model learns and suggests

    [genres.Metal]
    aliases = ["Heavy Metal", "Thrash Metal", ...]

    [cold_start]                                # unverified: suggestions before a model
    verified = false
    [cold_start.msd_tags]
    Metal = ["metal", "heavy metal"]             # backbone MSD tags meaning the genre

Matching ignores case, accents, spacing and punctuation, treats "&", "+" and "n" (as in
"rock 'n' roll") as "and", so "Hip Hop", "hip-hop" and "HIPHOP" are one spelling. Numeric
ID3v1 references left as text by conversion tools (`(17)`, `17`, `(17)Rock`) resolve through
the ID3v1 table. A value such as "Rock; Pop" or "Electronica/Dance" that does not match as a
whole is tried part by part. A raw genre with no mapping counts as untagged (None); with
several raw genres, the first that maps wins.

The [cold_start] table maps genres to the backbone's 50 Million Song Dataset tags
(MSD_TAGS): before the station has a trained model, trainer.coldstart turns the tags'
probabilities into genre suggestions, marked unverified. A genre it does not name gets none.
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
from daemon.tags.read import ID3V1_GENRES

SHIPPED = "genres.toml"

_WORD = re.compile(r"[^\W_]+")
_NUMERIC = re.compile(r"^\(?(\d{1,3})\)?$")
_REFERENCES = re.compile(r"^((?:\((?:\d{1,3}|RX|CR)\))+)\s*(.*)$", re.IGNORECASE)
_SEPARATORS = re.compile(r"\s*(?:;|/|,|\||\\\\?)\s*")

# The musicnn MSD_musicnn taggram's 50 tags in its output order, written out (the daemon
# never reads the wheel; tests/tags/test_genres.py checks them against the wheel's own list).
MSD_TAGS = (
    "rock", "pop", "alternative", "indie", "electronic", "female vocalists", "dance", "00s",
    "alternative rock", "jazz", "beautiful", "metal", "chillout", "male vocalists",
    "classic rock", "soul", "indie rock", "Mellow", "electronica", "80s", "folk", "90s",
    "chill", "instrumental", "punk", "oldies", "blues", "hard rock", "ambient", "acoustic",
    "experimental", "female vocalist", "guitar", "Hip-Hop", "70s", "party", "country",
    "easy listening", "sexy", "catchy", "funk", "electro", "heavy metal", "Progressive rock",
    "60s", "rnb", "indie pop", "sad", "House", "happy",
)


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
    # [cold_start.msd_tags]: canonical genre -> the MSD tags that mean it (only genres with
    # at least one tag, in canonical order; spelled as in MSD_TAGS). Empty: no table.
    cold_start: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: MappingProxyType({}))

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


def station_genres_file(config: Config) -> Path | None:
    """The station's genres.toml in its state dir; None while it has none (then the
    shipped one applies)."""
    path = config.genres_path
    return path if path.exists() else None


def station_genre_map(config: Config) -> GenreMap:
    """The station's genres.toml in state_dir, else the shipped one. Raises GenreMapError."""
    return load_genre_map(station_genres_file(config))


def parse_genre_map(text: str, source: str = "genres.toml") -> GenreMap:
    """TOML text -> validated GenreMap; `source` names the file in error messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise GenreMapError(f"{source}: not valid TOML: {err}") from None

    def fail(message: str) -> GenreMapError:
        return GenreMapError(f"{source}: {message}")

    unknown = set(data) - {"canonical", "genres", "cold_start"}
    if unknown:
        raise fail(f"unknown key(s) {', '.join(sorted(unknown))}; "
                   "expected `canonical = [...]`, [genres.NAME] and [cold_start] tables")
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
    cold_start = _cold_start_table(data.get("cold_start"), canonical, fail)
    return GenreMap(tuple(canonical), MappingProxyType(aliases), source, cold_start)


def _cold_start_table(table: object, canonical: list[str], fail
                      ) -> Mapping[str, tuple[str, ...]]:
    """[cold_start] -> {genre: MSD tags}, validated: genres must be canonical, tags among
    MSD_TAGS (matched ignoring case, stored in the taggram's spelling)."""
    if table is None:
        return MappingProxyType({})
    if not isinstance(table, dict):
        raise fail("`cold_start` must be a table: [cold_start] with verified = false "
                   "and [cold_start.msd_tags]")
    extra = set(table) - {"verified", "msd_tags"}
    if extra:
        raise fail(f"[cold_start]: unknown key(s) {', '.join(sorted(extra))}; "
                   "only `verified` and [cold_start.msd_tags] are allowed")
    if table.get("verified", False) is not False:
        raise fail("[cold_start]: `verified` must be false: suggestions from MSD tags are "
                   "never checked against the station's songs (a trained model is)")
    tags = table.get("msd_tags", {})
    if not isinstance(tags, dict):
        raise fail('[cold_start.msd_tags] must be a table like Rock = ["rock", "punk"]')
    spelling = {tag.casefold(): tag for tag in MSD_TAGS}
    for genre, names in tags.items():
        where = f"[cold_start.msd_tags] {_quoted(genre)}"
        if genre not in canonical:
            raise fail(f"{where}: {genre!r} is not a canonical genre (canonical: "
                       f"{', '.join(canonical)})")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise fail(f"{where}: must be a list of MSD tags in quotes")
        unknown_tags = [n for n in names if n.strip().casefold() not in spelling]
        if unknown_tags:
            raise fail(f"{where}: {', '.join(map(repr, unknown_tags))} is not one of the "
                       f"backbone's MSD tags ({', '.join(MSD_TAGS)})")
    return MappingProxyType({
        genre: tuple(dict.fromkeys(spelling[n.strip().casefold()] for n in tags[genre]))
        for genre in canonical if tags.get(genre)})


def _quoted(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else f'"{name}"'
