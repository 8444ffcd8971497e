"""A messy station's library, seeded: the shapes a real station's drive has, for whatever
learns (tests and bench/learning.py).

Per station (make_messy_station): genres of very different sizes (1 to `max_songs`
songs), 1-6 artists per genre, one artist whose songs carry two genres, about
`wrong_share` of the tags naming another genre than the music, albums in folders
(artist/album/), some partly tagged, whose untagged songs carry no tags at all (no
title, artist, album or genre), a genre whose songs are all by one artist, and a genre
with a single song. The audio is daemon.cli.demo's synthesised genres, written by the
real encoders (daemon.cli.demo.encode); tags by the daemon's writer.

Not a module of the daemon: tests import it as `messy`, the bench from tests/.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from daemon.cli.demo import SPELLINGS, encode, synthesize
from daemon.tags.write import write_tags

# Six genres the synthesiser keeps apart; a station's order decides their roles (see
# make_messy_station): the last has one song, the one before one artist.
GENRES = ("Classical", "Electronic", "Hip-Hop", "Jazz", "Metal", "Folk")
FORMATS = (".flac", ".mp3", ".ogg")
# Share of albums partly tagged (the rest fully tagged); in a partly tagged album about
# half the songs carry no tags at all.
PARTLY_TAGGED = 0.35


@dataclass(frozen=True)
class MessySong:
    path: Path
    rel: str  # POSIX, relative to the station's root
    genre: str  # what it sounds like: the truth
    tag: str | None  # the genre tag written (canonical name), None: no tags at all
    artist: str
    album: str

    @property
    def tagged(self) -> bool:
        return self.tag is not None

    @property
    def wrong(self) -> bool:
        return self.tag is not None and self.tag != self.genre


@dataclass(frozen=True)
class MessyStation:
    root: Path
    songs: tuple[MessySong, ...]
    # The roles: {"one_song": genre, "one_artist": genre, "two_genres": artist}.
    roles: dict[str, str] = field(default_factory=dict)

    def tagged(self) -> list[MessySong]:
        return [s for s in self.songs if s.tagged]

    def tagged_per_genre(self) -> Counter:
        """{genre tag: tagged songs}: what the trainer counts (the tags, wrong or not)."""
        return Counter(s.tag for s in self.songs if s.tagged)

    def artists_per_genre(self) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for song in self.tagged():
            found.setdefault(song.tag, set()).add(song.artist)
        return found


def _audio(genre: str, others: Sequence[str], seconds: float, sr: int, seed: int,
           mix: float) -> np.ndarray:
    """`genre`'s synthesised song, with another genre's mixed in at `mix` (0: none) so
    that the sound alone is sometimes ambiguous, as a real station's genres are."""
    audio = synthesize(genre, seconds, sr, seed)
    if not mix:
        return audio
    other = others[seed % len(others)]
    return (audio + mix * synthesize(other, seconds, sr, seed + 1)) / (1 + mix)


def _sizes(rng: np.random.Generator, n: int, max_songs: int, min_songs: int) -> list[int]:
    """Song counts of the genres: the last has 1, the others spread over min..max_songs
    (one of them max_songs, so sizes differ by an order of magnitude)."""
    sizes = [int(rng.integers(min_songs, max_songs + 1)) for _ in range(n - 1)] + [1]
    sizes[int(rng.integers(0, n - 2))] = max_songs
    return sizes


def make_messy_station(root: Path, *, seed: int = 0, genres: Sequence[str] = GENRES,
                       max_songs: int = 40, min_songs: int = 3, wrong_share: float = 0.1,
                       seconds: tuple[float, float] = (6.0, 9.0), sr: int = 22_050,
                       formats: Sequence[str] = FORMATS, album_size: int = 6,
                       mix: float = 0.0) -> MessyStation:
    """Write a messy station under `root` (see the module docstring); `genres` in role
    order: genres[-1] gets one song, genres[-2] one artist, genres[0]'s first artist also
    sings genres[1]. `mix`: another genre mixed into each song at this level (harder
    to tell apart). Everything drawn from `seed`."""
    if len(genres) < 4:
        raise ValueError("a messy station needs at least 4 genres")
    rng = np.random.default_rng(seed)
    root = Path(root)
    sizes = _sizes(rng, len(genres), max_songs, min_songs)
    plan: list[tuple[str, str]] = []  # (genre, artist) per song
    for g_index, (genre, size) in enumerate(zip(genres, sizes, strict=True)):
        one = g_index >= len(genres) - 2  # the one-artist genre and the one-song genre
        n_artists = 1 if one else int(rng.integers(2, 7))
        n_artists = min(n_artists, size)
        for i in range(size):
            plan.append((genre, f"{genre} Artist {i % n_artists + 1}"))
    two_genres = f"{genres[0]} Artist 1"
    crossing = max(2, sizes[1] // 4)  # songs of genres[1] sung by genres[0]'s artist
    moved = [i for i, (g, _) in enumerate(plan) if g == genres[1]][:crossing]
    for i in moved:
        plan[i] = (genres[1], two_genres)

    by_artist: dict[str, list[str]] = {}
    for genre, artist in plan:
        by_artist.setdefault(artist, []).append(genre)
    songs: list[MessySong] = []
    for artist in sorted(by_artist):
        # An artist's songs in albums of album_size, in plan order (a two-genre artist's
        # second genre shares its album's folder with the first).
        for a_start in range(0, len(by_artist[artist]), album_size):
            album = f"{artist} Vol {a_start // album_size + 1}"
            partly = rng.random() < PARTLY_TAGGED
            for n, genre in enumerate(by_artist[artist][a_start:a_start + album_size]):
                number = a_start + n + 1
                ext = formats[(len(songs)) % len(formats)]
                rel = f"{artist}/{album}/{number:02d} {genre} Song{ext}"
                path = root / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                encode(path, _audio(genre, [g for g in genres if g != genre],
                                    float(rng.uniform(*seconds)), sr,
                                    int(rng.integers(1 << 31)), mix), sr)
                tagless = partly and rng.random() < 0.5
                tag = None
                if not tagless:
                    tag = genre
                    if rng.random() < wrong_share:
                        tag = str(rng.choice([g for g in genres if g != genre]))
                    spelling = SPELLINGS[tag][number % len(SPELLINGS[tag])]
                    write_tags(path, title=f"{genre} Song {number}", artist=artist,
                               album=album, genre=spelling)
                songs.append(MessySong(path, rel, genre, tag, artist, album))
    # The roles must hold whatever the draws: the one-song genre's song is tagged, right.
    single = genres[-1]
    songs = [_tag_right(s) if s.genre == single else s for s in songs]
    return MessyStation(root, tuple(songs), {"one_song": single, "one_artist": genres[-2],
                                             "two_genres": two_genres})


def _tag_right(song: MessySong) -> MessySong:
    spelling = SPELLINGS[song.genre][0]
    write_tags(song.path, title=f"{song.genre} Song", artist=song.artist, album=song.album,
               genre=spelling)
    return MessySong(song.path, song.rel, song.genre, song.genre, song.artist, song.album)


def make_unseen_artists(root: Path, genres: Sequence[str], songs_per_genre: int, *,
                        seed: int = 1000, seconds: tuple[float, float] = (6.0, 9.0),
                        sr: int = 22_050, formats: Sequence[str] = FORMATS,
                        mix: float = 0.0, artists: int = 3) -> list[MessySong]:
    """Songs by artists no station of this module has (for judging on unseen artists),
    every one tagged with its true genre: root/<genre> Newcomer <n>/<song>; `mix` as in
    make_messy_station."""
    rng = np.random.default_rng(seed)
    songs = []
    for genre in genres:
        for i in range(songs_per_genre):
            artist = f"{genre} Newcomer {i % artists + 1}"
            rel = f"{artist}/{i + 1:02d} {genre} Song{formats[i % len(formats)]}"
            path = Path(root) / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            encode(path, _audio(genre, [g for g in genres if g != genre],
                                float(rng.uniform(*seconds)), sr, int(rng.integers(1 << 31)),
                                mix), sr)
            write_tags(path, title=f"{genre} Song {i + 1}", artist=artist,
                       album=f"{artist} Debut", genre=genre)
            songs.append(MessySong(path, rel, genre, genre, artist, f"{artist} Debut"))
    return songs
