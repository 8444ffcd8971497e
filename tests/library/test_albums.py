"""Album identity (daemon.library.albums): the rules, the album artist read from real
files tagged by kid3-cli (TagLib) and mutagen, the keys a scanned library stores, and
migration 0004 filling keys into a database made at 0003."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess

import pytest
from sqlalchemy import create_engine, select

from daemon.core.config import parse_config
from daemon.core.db.engine import alembic_config, open_database, pending_migrations
from daemon.core.db.models import Track
from daemon.library.albums import (
    AlbumTags,
    album_folder,
    album_identities,
    artist_key,
    label,
    normalise,
)
from daemon.library.reconcile import Library
from daemon.tags.genres import load_genre_map
from daemon.tags.read import read_tags
from daemon.tags.write import write_tags


def keys(*tracks: tuple) -> list[tuple[str | None, bool]]:
    found = album_identities([AlbumTags(*t) for t in tracks])
    return [(i.key, i.compilation) for i in found]


def test_album_artist_wins_over_artist_and_joins_partly_tagged_mates():
    found = keys(("Blue/01.mp3", "Blue", "Joni Mitchell", "Joni Mitchell"),
                 ("Blue/02.mp3", "Blue", None, "Joni Mitchell feat. James Taylor"),
                 ("Blue/03.mp3", "Blue", None, None))
    assert len(set(found)) == 1 and found[0][0] is not None and found[0][1] is False
    # The same album with the album artist only as the artist, in another folder: one album.
    elsewhere = keys(("Moved/Blue/01.mp3", "Blue", None, "Joni Mitchell"))
    assert elsewhere == found[:1]


def test_same_album_name_by_different_artists_are_different_albums():
    found = keys(("Hits/a.mp3", "Greatest Hits", "ABBA", "ABBA"),
                 ("Hits/b.mp3", "Greatest Hits", "Queen", "Queen"))
    assert found[0] != found[1] and not found[0][1] and not found[1][1]
    assert keys(("X/a.mp3", "Greatest Hits", None, "ABBA"))[0] == found[0]


def test_without_an_album_tag_the_folder_is_the_album_and_the_root_is_none():
    found = keys(("Tape 3/a.mp3", None, None, "A"), ("Tape 3/b.wav", "  ", None, "B"),
                 ("Tape 4/a.mp3", None, None, "A"), ("loose.mp3", None, None, "A"))
    assert found[0] == found[1] and found[0] != found[2]
    assert found[0][0] is not None and found[3] == (None, False)
    # Folders are stored forms: two folders differing in case are two folders.
    assert keys(("tape 3/a.mp3", None, None, "A"))[0] != found[0]


def test_a_compilation_with_different_artists_is_one_album():
    found = keys(("Soul 1972/01.mp3", "Soul Hits 1972", None, "Ann Peebles"),
                 ("Soul 1972/02.mp3", "Soul Hits 1972", None, "Al Green"),
                 ("Soul 1972/03.mp3", "soul hits 1972", None, "Bill Withers"))
    assert len(set(found)) == 1 and found[0][1] is True
    # Another folder's compilation of the same name is another album.
    other = keys(("Soul Box/01.mp3", "Soul Hits 1972", None, "Ann Peebles"),
                 ("Soul Box/02.mp3", "Soul Hits 1972", None, "O. V. Wright"))
    assert other[0][1] and other[0] != found[0]


@pytest.mark.parametrize("various",
                         ["Various Artists", "VARIOUS", "va", "V.A.", " Various  Artists"])
def test_various_artists_makes_a_compilation_even_with_one_artist(various):
    found = keys(("Jazz Now/01.flac", "Jazz Now", various, "Esperanza Spalding"),
                 ("Jazz Now/02.flac", "Jazz Now", None, "Esperanza Spalding"))
    assert found[0] == found[1] and found[0][1] is True
    assert found[0] == keys(("Jazz Now/09.flac", "Jazz Now", "Various Artists", "X"))[0]


def test_spelling_variants_of_one_album_join():
    spellings = ["Kind of Blue", "KIND OF BLUE ", "Kind  of\tBlue", "ｋｉｎｄ ｏｆ ｂｌｕｅ"]
    found = {keys((f"Miles/{i}.mp3", album, "Miles Davis", "Miles Davis"))[0]
             for i, album in enumerate(spellings)}
    found |= {keys(("Miles/x.mp3", "Kind of Blue", None, "MILES  DAVIS"))[0]}
    assert len(found) == 1
    assert normalise("Don’t Stop — Live") == normalise("don't stop - live")
    assert keys(("Miles/y.mp3", "Kind of Blue (Legacy)", None, "Miles Davis"))[0] not in found


def test_disc_folders_are_one_album_folder():
    assert album_folder("Box/CD2/01.mp3") == album_folder("Box/Disc 1/01.mp3") == "Box"
    assert album_folder("Box/Bonus/01.mp3") == "Box/Bonus"
    assert album_folder("CD1/01.mp3") == "CD1" and album_folder("01.mp3") == ""
    found = keys(("Box/CD1/01.mp3", "Soul Box", None, "Ann Peebles"),
                 ("Box/CD2/01.mp3", "Soul Box", None, "Al Green"),
                 ("Box/CD3/01.mp3", None, None, "Al Green"), ("Box/x.mp3", None, None, "Al Green"))
    assert found[0] == found[1] and found[0][1] is True and found[2] == found[3]


def test_each_song_keeps_its_own_artist_and_the_album_its_label():
    assert artist_key("Al  Green") == artist_key("al green") == "al green"
    assert artist_key("Various Artists") is None and artist_key("  ") is None
    tracks = [AlbumTags("S/1.mp3", "Soul Hits", None, "Al Green"),
              AlbumTags("S/2.mp3", "soul hits", None, "Ann Peebles")]
    assert label(tracks, compilation=True) == "Soul Hits — Various Artists"
    assert label([AlbumTags("B/1.mp3", "Blue", None, "Joni Mitchell")], False) == (
        "Blue — Joni Mitchell")
    assert label([AlbumTags("Tape 3/a.mp3", None, None, None)], False) == "Tape 3"


def test_several_album_artists_in_one_folder_stay_apart():
    found = keys(("Hits/a.mp3", "Greatest Hits", "ABBA", "ABBA"),
                 ("Hits/b.mp3", "Greatest Hits", "Queen", "Queen"),
                 ("Hits/c.mp3", "Greatest Hits", None, "Queen"),
                 ("Hits/d.mp3", "Greatest Hits", None, None))
    assert found[1] == found[2] and found[0] != found[1] and not any(c for _, c in found)
    assert found[3] not in found[:3]  # no artist: the album in this folder


# ------------------------------------------------------------------ real files


def kid3_get(path, field: str) -> str:
    done = subprocess.run(["kid3-cli", "-c", f"get '{field}' 2", str(path)],
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.strip()


@pytest.mark.parametrize("ext", [".mp3", ".flac", ".ogg", ".m4a", ".wma", ".wav"])
def test_album_artist_written_by_mutagen_is_read_and_taglib_agrees(make_song, ext):
    path = make_song(f"song{ext}", seconds=2.0, artist="Al Green",
                     album_artist="Various Artists", album="Soul Hits")
    tags = read_tags(path)
    assert (tags.album_artist, tags.artist, tags.album) == ("Various Artists", "Al Green",
                                                            "Soul Hits")
    if ext != ".wav":  # kid3 shows a WAV's RIFF INFO as tag 2, where no album artist lives
        assert kid3_get(path, "album artist") == "Various Artists"


@pytest.mark.parametrize("ext", [".mp3", ".flac", ".m4a", ".ogg"])
def test_album_artist_written_by_kid3_is_read(make_song, ext):
    path = make_song(f"song{ext}", seconds=2.0)
    subprocess.run(["kid3-cli", "-c", "set 'album artist' 'Joni Mitchell' 2",
                    "-c", "set artist 'Joni Mitchell feat. James Taylor' 2", str(path)],
                   check=True, timeout=60, capture_output=True)
    tags = read_tags(path)
    assert tags.album_artist == "Joni Mitchell"
    assert tags.artist == "Joni Mitchell feat. James Taylor"
    assert read_tags(make_song(f"plain{ext}", seconds=2.0)).album_artist is None


def test_foobar_style_vorbis_album_artist_is_read(make_song):
    from mutagen.flac import FLAC

    path = make_song("song.flac", seconds=2.0)
    audio = FLAC(path)
    audio["ALBUM ARTIST"] = "Various Artists"
    audio.save()
    assert read_tags(path).album_artist == "Various Artists"


@pytest.fixture
def library_of(tmp_path, database):
    made = []

    def make(root) -> Library:
        config = parse_config({"library": {"root": str(root), "settle_seconds": 1.0},
                               "state_dir": str(tmp_path / "state")})
        made.append(Library(config, database[1], load_genre_map()))
        return made[-1]

    yield make
    for library in made:
        library.close()


def scan(library: Library, now: float) -> int:
    """A walk, then the settle pass that reads what the walk found; how many were read."""
    library.reconcile(now=now)
    return library.settle_due(now=now + 5.0)


def stored(sessions) -> dict[str, tuple]:
    with sessions() as session:
        return {t.path: (t.album_key, t.compilation, t.album_artist)
                for t in session.scalars(select(Track))}


def test_a_scanned_library_stores_album_keys(tmp_path, make_song, database, library_of):
    root = tmp_path / "library"
    soul = root / "Soul Hits"
    make_song("01.mp3", seconds=2.0, folder=soul, album="Soul Hits", artist="Ann Peebles")
    make_song("02.flac", seconds=2.0, seed=1, folder=soul, album="SOUL HITS", artist="Al Green")
    make_song("01.mp3", seconds=2.0, seed=2, folder=root / "Blue", album="Blue",
              artist="Joni Mitchell", album_artist="Joni Mitchell")
    make_song("02.ogg", seconds=2.0, seed=3, folder=root / "Blue", album="Blue",
              artist="Joni Mitchell feat. James Taylor")
    make_song("a.wav", seconds=2.0, seed=4, folder=root / "Tape 3")
    make_song("loose.mp3", seconds=2.0, seed=5, folder=root)
    assert scan(library_of(root), 0.0) == 6

    found = stored(database[1])
    assert len(found) == 6
    assert found["Soul Hits/01.mp3"][:2] == found["Soul Hits/02.flac"][:2]
    assert found["Soul Hits/01.mp3"][1] is True
    assert found["Blue/01.mp3"][:2] == found["Blue/02.ogg"][:2] and not found["Blue/01.mp3"][1]
    assert found["Blue/01.mp3"][2] == "Joni Mitchell" and found["Blue/02.ogg"][2] is None
    assert found["Tape 3/a.wav"][0] is not None and found["loose.mp3"][0] is None
    assert len({v[0] for v in found.values()}) == 4

    # A third song joins the folder later with the same artist as one already there: the
    # album stays a compilation. Then the folder's second artist is retagged: no longer.
    make_song("03.mp3", seconds=2.0, seed=6, folder=soul, album="Soul Hits", artist="Al Green")
    scan(library_of(root), 100.0)
    assert stored(database[1])["Soul Hits/03.mp3"][:2] == found["Soul Hits/01.mp3"][:2]
    write_tags(soul / "01.mp3", artist="Al Green")
    scan(library_of(root), 200.0)
    now = stored(database[1])
    assert {now[f"Soul Hits/{n}"][:2] for n in ("01.mp3", "02.flac", "03.mp3")} == {
        (now["Soul Hits/01.mp3"][0], False)}
    assert now["Soul Hits/01.mp3"][0] != found["Soul Hits/01.mp3"][0]


def test_a_moved_track_takes_its_album_along_and_leaves_the_old_folder_right(
        tmp_path, make_song, database, library_of):
    root = tmp_path / "library"
    make_song("01.mp3", seconds=2.0, folder=root / "Mix", album="Mix", artist="A")
    make_song("02.mp3", seconds=2.0, seed=1, folder=root / "Mix", album="Mix", artist="B")
    library = library_of(root)
    scan(library, 0.0)
    assert all(c for _, c, _ in stored(database[1]).values())
    (root / "Elsewhere").mkdir()
    shutil.move(root / "Mix/02.mp3", root / "Elsewhere/02.mp3")
    scan(library, 100.0)
    found = stored(database[1])
    assert set(found) == {"Mix/01.mp3", "Elsewhere/02.mp3"}
    # Alone in its folder each is its artist's album "Mix".
    assert found["Mix/01.mp3"][:2] == keys(("Z/1.mp3", "Mix", None, "A"))[0]
    assert found["Elsewhere/02.mp3"][:2] == keys(("Z/2.mp3", "Mix", None, "B"))[0]


# ------------------------------------------------------------------ migration 0004


def test_migration_0004_keeps_every_row_and_fills_album_keys(tmp_path):
    from alembic import command

    path = tmp_path / "station.db"
    engine = create_engine(f"sqlite:///{path}")
    command.upgrade(alembic_config(engine), "0003")
    assert pending_migrations(engine)[0] == "0004"
    engine.dispose()
    rows = [("Soul/01.mp3", "Ann Peebles", "Soul Hits", "Soul"),
            ("Soul/02.mp3", "Al Green", "soul hits", None),
            ("Blue/01.mp3", "Joni Mitchell", "Blue", "Folk"),
            ("Moved/Blue/02.mp3", "joni mitchell", "BLUE", "Folk"),
            ("Tape 3/a.wav", None, None, None), ("loose.mp3", "X", None, None)]
    stamp = "'2026-11-30 10:00:00'"
    with sqlite3.connect(path) as conn:
        for rel, artist, album, genre in rows:
            conn.execute("INSERT INTO tracks (path, size, mtime, state, attempts, first_seen, "
                         "last_seen, state_changed_at, artist, album, canonical_genre) VALUES "
                         f"(?, 7, 2.5, 'queued', 0, {stamp}, {stamp}, {stamp}, ?, ?, ?)",
                         (rel, artist, album, genre))
    engine, sessions = open_database(f"sqlite:///{path}")
    assert pending_migrations(engine) == []
    with sessions() as session:
        found = {t.path: t for t in session.scalars(select(Track))}
        assert [(t.path, t.artist, t.album, t.canonical_genre) for t in found.values()] == [
            (rel, artist, album, genre) for rel, artist, album, genre in rows]
        assert all(t.album_artist is None for t in found.values())
        got = {t.path: (t.album_key, t.compilation) for t in found.values()}
    engine.dispose()
    expected = keys(*[(rel, album, None, artist) for rel, artist, album, _ in rows])
    assert list(got.values()) == expected
    assert got["Soul/01.mp3"] == got["Soul/02.mp3"] and got["Soul/01.mp3"][1] is True
    assert got["Blue/01.mp3"] == got["Moved/Blue/02.mp3"] and got["Blue/01.mp3"][1] is False
    assert got["loose.mp3"] == (None, False) and got["Tape 3/a.wav"][0] is not None
    with sqlite3.connect(path) as conn:
        indexes = {row[1] for row in conn.execute("PRAGMA index_list('tracks')")}
    assert "ix_tracks_album_key" in indexes


def test_migration_0004_downgrades_back_to_0003(tmp_path):
    from alembic import command

    path = tmp_path / "station.db"
    engine, _ = open_database(f"sqlite:///{path}")
    command.downgrade(alembic_config(engine), "0003")
    with sqlite3.connect(path) as conn:
        columns = {row[1] for row in conn.execute("PRAGMA table_info('tracks')")}
    assert {"album", "artist"} <= columns and not columns & {"album_key", "compilation",
                                                            "album_artist"}
    engine.dispose()



def test_refreshing_an_album_folder_loads_only_that_folder(database):
    """The record step's recompute is bounded: the folder's tracks and its disc folders'
    are read, no sibling whose name shares the prefix, nothing deeper."""
    from daemon.core.db.models import utcnow
    from daemon.library.record import refresh_albums

    paths = ["Mi_/a.mp3", "Mi_/CD1/b.mp3", "Mi_/Sub/Deep/c.mp3", "Mix/d.mp3", "Mi_0/e.mp3",
             "Mi_ Tape/f.mp3", "MI_/g.mp3", "root.mp3", "Mi%/h.mp3"]
    with database[1]() as session, session.begin():
        for i, path in enumerate(paths):
            session.add(Track(path=path, size=1, mtime=1.0, album="Mix", artist=f"A{i}",
                              first_seen=utcnow(), album_key="untouched"))
    for folder, loaded in [("Mi_", {"Mi_/a.mp3", "Mi_/CD1/b.mp3"}), ("", {"root.mp3"}),
                           ("Mi%", {"Mi%/h.mp3"})]:
        with database[1]() as session, session.begin():
            refresh_albums(session, folder)
            seen = {obj.path for obj in session.identity_map.values()}
            assert seen == loaded
    found = stored(database[1])
    assert found["Mi_/a.mp3"][:2] == found["Mi_/CD1/b.mp3"][:2] and found["Mi_/a.mp3"][1]
    assert found["Mix/d.mp3"][0] == found["Mi_/Sub/Deep/c.mp3"][0] == "untouched"
    assert found["root.mp3"][0] != "untouched"
