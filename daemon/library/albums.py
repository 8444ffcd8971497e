"""Album identity: which tracks are one album. Pure functions; the one implementation
(daemon.library.record stores it on every track it reads; migrations 0004 and 0006
filled in the keys of tracks stored before these rules).

The rules, in order, for the tracks of one album folder (the track's folder, or its parent
when the folder is a disc folder such as "CD1" or "Disc 2") that share an album tag:

- an album artist of "Various Artists" / "Various" / "VA" / "V.A." on any of them, or no
  album artist and per-track artists that differ: a **compilation**, one album per album
  tag and album folder, whatever its songs' artists;
- one album artist among them: the album is (album tag, that album artist), and the
  tracks that lack the tag are on it too (partial tagging is normal);
- no album artist, one artist: (album tag, artist);
- several different album artists: each track is (album tag, its album artist, else
  its artist);
- no artist at all: (album tag, album folder).

A track without an album tag (a file with no tags at all included) is on the album its
album folder's tagged tracks agree on: a folder of one album, not a compilation, takes its
untagged files in (a ripped album where only some songs were tagged is one album, so the
tagged songs are the untagged ones' mates). A folder mixing albums, or holding a
compilation (whose untagged files could be anyone's), leaves them on the folder's album
(the album folder, as stored); a loose file at the library root is on no album (key None).
The rule looks at the folder's other tracks, so daemon.library.record recomputes a whole
folder whenever one of its files is read or goes missing.

Text is compared after normalise(): NFKC, case folded, typographic quotes and dashes made
plain, whitespace collapsed, so "Kind of Blue", "KIND OF BLUE " and "Kind  of Blue" join;
an album tag also loses a trailing disc number ("Soul Box (Disc 2)", "Soul Box CD2"), the
way disc folders lose theirs.

The (album, artist) key does not include the folder, so an album split over two folders
is one album; a compilation's does, since "Greatest Hits" by Various Artists names many.

The key stored in tracks.album_key is the first 16 hex digits of the SHA-256 of the rule
and its normalised parts: stable for as long as these rules hold (a change to them needs a
migration that recomputes every key), short enough to index, and the same for the same
album from any spelling the rules join. The readable label is not stored: label() builds
it from the album's tracks as written in their tags. Each song's own artist stays on its
track: artist priors use song_artist(), never the album's artist.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

# Album artists that say "compilation", compared normalised.
VARIOUS_ARTISTS = frozenset({"various artists", "various", "va", "v.a.", "v/a"})

# A folder holding one disc of a multi-disc album: its parent is the album folder.
DISC_FOLDER = re.compile(r"(?:cd|dis[ck])[\s._-]*\d{1,2}")
# The same disc number at the end of an album tag (normalised): "x (disc 2)", "x - cd1".
DISC_SUFFIX = re.compile(r"[\s,:;._-]*[(\[]?\s*(?:cd|dis[ck])[\s._-]*\d{1,2}\s*[)\]]?$")

# What NFKC leaves alone but taggers spell both ways.
_PLAIN = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"',
                        "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-",
                        "\u2014": "-", "\u2212": "-"})

KEY_DIGITS = 16


@dataclass(frozen=True)
class AlbumTags:
    """What album identity needs of one track: its stored path (relative to the library
    root, daemon.core.paths' stored form) and its tags as read."""

    path: str
    album: str | None
    album_artist: str | None
    artist: str | None


@dataclass(frozen=True)
class AlbumIdentity:
    """key: tracks.album_key (None: on no album); compilation: tracks.compilation; artist:
    who the album is by, normalised (None: a compilation, or nobody known)."""

    key: str | None
    compilation: bool
    artist: str | None = None


def normalise(text: str | None) -> str:
    """Tag text in the form albums and artists are compared in ("" for nothing)."""
    if not text:
        return ""
    folded = unicodedata.normalize("NFKC", text).casefold().translate(_PLAIN)
    return " ".join(folded.split())


def album_title(text: str | None) -> str:
    """An album tag in the form albums are compared in: normalise()d, without a trailing
    disc number ("" for nothing; a tag that is only a disc number stays as it is)."""
    title = normalise(text)
    return DISC_SUFFIX.sub("", title) or title


def is_various(artist: str | None) -> bool:
    """Whether an (album) artist tag says "various artists"."""
    return normalise(artist) in VARIOUS_ARTISTS


def artist_key(artist: str | None) -> str | None:
    """An artist tag in the form artists are compared in (None: no usable artist, or
    "Various Artists")."""
    name = normalise(artist)
    return name if name and name not in VARIOUS_ARTISTS else None


def song_artist(artist: str | None, album_artist: str | None,
                compilation: bool) -> str | None:
    """The artist a song is by, for its artist's other songs (daemon.suggest.mates): its
    artist tag, else its album artist, except on a compilation, whose album artist is
    "Various Artists" (None: no usable artist)."""
    return artist_key(artist) if compilation else artist_key(artist or album_artist)


def artist_group(tags: AlbumTags, identity: AlbumIdentity) -> str:
    """Which songs are one artist's, for keeping artists apart (the trainer's splits): the
    song's artist (song_artist), else who its album is by (a tagless file on a tagged
    album), else its album, else its album folder."""
    artist = song_artist(tags.artist, tags.album_artist, identity.compilation)
    if artist or identity.artist:
        return f"artist:{artist or identity.artist}"
    if identity.key:
        return f"album:{identity.key}"
    return f"folder:{normalise(album_folder(tags.path))}"


def album_folder(path: str) -> str:
    """The folder a track's album lives in ("" for the library root): its folder, or that
    folder's parent when the folder is a disc folder ("Album/CD2/01.mp3" -> "Album")."""
    folder = posixpath.dirname(path)
    parent, name = posixpath.split(folder)
    if parent and DISC_FOLDER.fullmatch(normalise(name)):
        return parent
    return folder


def album_key(*parts: str) -> str:
    """The stored key of a rule and its normalised parts."""
    material = "\x1f".join(parts).encode("utf-8", "surrogatepass")
    return hashlib.sha256(material).hexdigest()[:KEY_DIGITS]


def album_identities(tracks: Sequence[AlbumTags]) -> list[AlbumIdentity]:
    """Each track's album identity, in the order given. The compilation, album-artist and
    untagged-file rules look at the other tracks of the same album folder, so pass all of
    them (a folder's tracks, or the whole library); tracks of other folders do not meet."""
    groups: dict[tuple[str, str], list[int]] = {}
    for i, track in enumerate(tracks):
        groups.setdefault((album_folder(track.path), album_title(track.album)), []).append(i)
    found: list[AlbumIdentity | None] = [None] * len(tracks)
    tagged: dict[str, set[AlbumIdentity]] = {}  # album folder -> its tagged tracks' albums
    for (folder, album), members in groups.items():
        if album:
            identities = _group_identities(folder, album, [tracks[i] for i in members])
            for i, identity in zip(members, identities, strict=True):
                found[i] = identity
            tagged.setdefault(folder, set()).update(identities)
    for (folder, album), members in groups.items():
        if not album:
            identity = _untagged_identity(folder, tagged.get(folder, set()))
            for i in members:
                found[i] = identity
    return [identity for identity in found if identity is not None]


def _untagged_identity(folder: str, albums: set[AlbumIdentity]) -> AlbumIdentity:
    """The album of an album folder's tracks without an album tag, given the albums of its
    tagged tracks: the one album they agree on, else the folder's (None at the root)."""
    if folder and len(albums) == 1:
        (album,) = albums
        if not album.compilation:
            return album
    return AlbumIdentity(album_key("folder", folder) if folder else None, False)


def _group_identities(folder: str, album: str,
                      tracks: list[AlbumTags]) -> list[AlbumIdentity]:
    """The identities of the tracks of one album folder that share one album tag."""
    album_artists = {normalise(t.album_artist) for t in tracks} - {""}
    artists = {normalise(t.artist) for t in tracks} - {""}
    compilation = AlbumIdentity(album_key("compilation", album, folder), True)
    if album_artists & VARIOUS_ARTISTS or (not album_artists and len(artists) > 1):
        return [compilation] * len(tracks)
    if len(album_artists) == 1:
        (by,) = album_artists
        return [AlbumIdentity(album_key("album", album, by), False, by)] * len(tracks)
    identities = []
    for track in tracks:
        artist = normalise(track.album_artist) or normalise(track.artist)
        identities.append(AlbumIdentity(album_key("album", album, artist), False, artist)
                          if artist else
                          AlbumIdentity(album_key("album-in-folder", album, folder), False))
    return identities


def label(tracks: Sequence[AlbumTags], compilation: bool) -> str:
    """A person's name for the album of `tracks` (one album's tracks, as album_identities
    grouped them): "Kind of Blue — Miles Davis", "Jazz Hits — Various Artists", or the
    album folder for tracks without an album tag. Spelled as the first track with each
    part has it."""
    album = next((t.album.strip() for t in tracks if t.album and t.album.strip()), None)
    if album is None:
        folder = album_folder(tracks[0].path) if tracks else ""
        return folder or "(library root)"
    if compilation:
        return f"{album} — Various Artists"
    who = next((t.album_artist.strip() for t in tracks
                if t.album_artist and t.album_artist.strip()), None)
    who = who or next((t.artist.strip() for t in tracks if t.artist and t.artist.strip()), None)
    return f"{album} — {who}" if who else album
