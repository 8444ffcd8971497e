"""One album and artist identity (daemon.library.albums) for the daemon and the trainer:
untagged files with no tags at all join the album their folder's tagged songs agree on
(disc folders too), a mixed folder or a compilation keeps its untagged files apart; the
library re-keys a folder once per settled batch and when a tagged song goes; migration
0006 re-keys an existing database on both backends; the real worker gives an untagged,
tagless song its album's context and reason; and the trainer counts the same mates as the
daemon on the same library."""

from __future__ import annotations

import json

import pytest
from helpers import genre_bundle, wait_for
from sqlalchemy import event, select

from daemon.core.config import load_config, parse_config
from daemon.core.db.engine import open_database
from daemon.core.db.models import Suggestion, Track
from daemon.core.states import SuggestionStatus, TrackState
from daemon.library.albums import (
    AlbumTags,
    album_identities,
    album_title,
    artist_group,
)
from daemon.library.reconcile import Library
from daemon.tags.genres import load_genre_map
from daemon.tags.write import write_tags


def identities(*tracks: tuple):
    return album_identities([AlbumTags(*t) for t in tracks])


def keys(*tracks: tuple) -> list[str | None]:
    return [i.key for i in identities(*tracks)]


# ------------------------------------------------------------------------- the rules


def test_a_tagless_file_joins_the_one_album_its_folder_holds():
    found = keys(("Blue/01.mp3", "Blue", "Joni Mitchell", "Joni Mitchell"),
                 ("Blue/02.mp3", "BLUE", None, "Joni Mitchell"),
                 ("Blue/03.mp3", None, None, None),          # no tags at all
                 ("Blue/04.mp3", None, None, "Joni Mitchell"))  # an artist, no album tag
    assert found[0] is not None and len(set(found)) == 1
    # Its artist group is the album's artist, so a split keeps it with its album-mates.
    tags = [AlbumTags("Blue/01.mp3", "Blue", None, "Joni Mitchell"),
            AlbumTags("Blue/03.mp3", None, None, None)]
    tagged, tagless = album_identities(tags)
    assert artist_group(tags[1], tagless) == artist_group(tags[0], tagged) == (
        "artist:joni mitchell")
    # Alone in a folder a tagless file is its folder's album; at the root, on none.
    alone = keys(("Tape 3/a.mp3", None, None, None), ("loose.mp3", None, None, None))
    assert alone[0] not in (None, found[0]) and alone[1] is None
    assert keys(("loose.mp3", None, None, None), ("tagged.mp3", "Blue", None, "J"))[0] is None


def test_disc_folders_and_disc_numbers_in_album_tags_are_one_album():
    found = keys(("Box/CD1/01.flac", "Soul Box (Disc 1)", "Al Green", "Al Green"),
                 ("Box/CD2/01.flac", "Soul Box [CD 2]", None, "Al Green"),
                 ("Box/CD2/02.flac", None, None, None),
                 ("Box/Disc 3/01.flac", None, None, None),
                 ("Box/cover.flac", None, None, None))
    assert len(set(found)) == 1 and found[0] is not None
    assert album_title("Soul Box - CD2") == album_title("soul box, disc 02") == "soul box"
    assert album_title("CD1") == "cd1" and album_title("Discipline") == "discipline"


def test_a_mixed_folder_or_a_compilation_keeps_its_tagless_files_apart():
    mixed = keys(("Singles/a.mp3", "Blue", None, "Joni Mitchell"),
                 ("Singles/b.mp3", "Court and Spark", None, "Joni Mitchell"),
                 ("Singles/c.mp3", None, None, None))
    assert len(set(mixed)) == 3
    assert mixed[2] == keys(("Singles/z.mp3", None, None, None))[0]  # the folder's album
    various = identities(("VA/01.mp3", "Soul Hits", "Various Artists", "Al Green"),
                         ("VA/02.mp3", "Soul Hits", None, "Ann Peebles"),
                         ("VA/03.mp3", None, None, None))
    assert various[0].compilation and various[0].key == various[1].key
    assert various[2].key != various[0].key and not various[2].compilation
    by_artists = identities(("Mix/01.mp3", "Soul Hits", None, "Al Green"),
                            ("Mix/02.mp3", "Soul Hits", None, "Ann Peebles"),
                            ("Mix/03.mp3", None, None, None))
    assert by_artists[0].compilation and by_artists[2].key != by_artists[0].key


# --------------------------------------------------------------- the library's keys


class Scanner:
    """scanner(root, now) -> the number of files settled: a walk, then the settle pass, by
    the real Library on `sessions` (made at the first call, for `root`)."""

    def __init__(self, tmp_path, sessions):
        self.tmp_path, self.sessions, self.library = tmp_path, sessions, None

    def __call__(self, root, now: float) -> int:
        if self.library is None:
            config = parse_config({"library": {"root": str(root), "settle_seconds": 1.0},
                                   "state_dir": str(self.tmp_path / "state")})
            self.library = Library(config, self.sessions, load_genre_map())
        self.library.reconcile(now=now)
        return self.library.settle_due(now=now + 5.0)

    def close(self) -> None:
        if self.library is not None:
            self.library.close()


@pytest.fixture
def scan_library(tmp_path, database):
    """A Scanner on the `database` fixture (SQLite)."""
    scanner = Scanner(tmp_path, database[1])
    yield scanner
    scanner.close()


@pytest.fixture
def database_scanner(tmp_path, database_url):
    """(engine, sessions, Scanner) on a migrated database, SQLite and PostgreSQL."""
    engine, sessions = open_database(database_url)
    scanner = Scanner(tmp_path, sessions)
    yield engine, sessions, scanner
    scanner.close()
    engine.dispose()


def stored_keys(sessions) -> dict[str, str | None]:
    with sessions() as session:
        return {t.path: t.album_key for t in session.scalars(select(Track))}


def test_the_library_re_keys_a_folders_tagless_files_once_a_batch(
        tmp_path, make_song, database_scanner):
    engine, sessions, scan_library = database_scanner
    root = tmp_path / "library"
    blue = root / "Blue"
    for i in range(3):
        make_song(f"0{i}.mp3", seconds=2.0, seed=i, folder=blue)  # no tags at all
    assert scan_library(root, 0.0) == 3
    assert len(set(stored_keys(sessions).values())) == 1  # the folder's album

    # Tagged album-mates arrive: the tagless files join their album. The folder is queried
    # once for the batch, not once a file.
    for i in range(3, 6):
        make_song(f"0{i}.mp3", seconds=2.0, seed=i, folder=blue, album="Blue",
                  artist="Joni Mitchell", genre_tag="Folk")
    folder_queries = []

    def count(conn, cursor, statement, *args):
        if "LIKE" in statement.upper() and "tracks" in statement:
            folder_queries.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        assert scan_library(root, 100.0) == 3
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert len(folder_queries) == 1
    found = stored_keys(sessions)
    album = keys(("X/1.mp3", "Blue", None, "Joni Mitchell"))[0]
    assert set(found.values()) == {album}

    # One tagged song retagged to another album: the folder mixes albums, so its tagless
    # files are the folder's again.
    write_tags(blue / "05.mp3", album="Court and Spark")
    scan_library(root, 200.0)
    found = stored_keys(sessions)
    assert {found[f"Blue/0{i}.mp3"] for i in range(3)} == {keys(("Blue/x.mp3", None, None,
                                                                 None))[0]}
    assert found["Blue/03.mp3"] == album != found["Blue/05.mp3"]

    # That song is deleted: the folder is one album again, and its tagless files rejoin.
    (blue / "05.mp3").unlink()
    scan_library(root, 300.0)
    scan_library(root, 400.0)
    with sessions() as session:
        assert session.scalar(select(Track.state).where(Track.path == "Blue/05.mp3")) == (
            TrackState.MISSING)
    found = stored_keys(sessions)
    assert {found[f"Blue/0{i}.mp3"] for i in range(5)} == {album}


# ------------------------------------------------------------------ migration 0006


def test_migration_0006_re_keys_an_existing_database(blank_database_url):
    from alembic import command
    from sqlalchemy import create_engine, text

    from daemon.core.db.engine import alembic_config
    from daemon.core.db.models import utcnow

    engine = create_engine(blank_database_url)
    command.upgrade(alembic_config(engine), "0005")
    # Rows as the 0005 daemon stored them: each tagless file on its own folder's album.
    rows = [("Blue/01.mp3", "Joni Mitchell", "Blue", None, "tagged"),
            ("Blue/02.mp3", None, None, None, "suggested"),
            ("Box/CD1/01.mp3", "Al Green", "Soul Box", "Al Green", "tagged"),
            ("Box/CD2/01.mp3", None, None, None, "queued"),
            ("VA/01.mp3", "Al Green", "Soul Hits", "Various Artists", "tagged"),
            ("VA/02.mp3", None, None, None, "queued"),
            ("Gone/01.mp3", "Someone", "Gone", None, "missing"),
            ("Gone/02.mp3", None, None, None, "queued"),
            ("loose.mp3", None, None, None, "queued")]
    with engine.begin() as conn:
        for i, (rel, artist, album, album_artist, state) in enumerate(rows):
            conn.execute(text(
                "INSERT INTO tracks (path, size, mtime, state, attempts, first_seen, last_seen, "
                "state_changed_at, artist, album, album_artist, album_key, compilation) VALUES "
                "(:p, 7, 2.5, :s, 0, :t, :t, :t, :a, :b, :aa, :k, :c)"),
                {"p": rel, "s": state, "t": utcnow(), "a": artist, "b": album,
                 "aa": album_artist, "k": f"{i:016d}", "c": False})
    engine.dispose()
    engine, sessions = open_database(blank_database_url)
    with sessions() as session:
        got = {t.path: (t.album_key, t.compilation) for t in session.scalars(select(Track))}
    engine.dispose()
    present = [r for r in rows if r[4] != "missing"]
    expected = identities(*[(rel, album, album_artist, artist)
                            for rel, artist, album, album_artist, _ in present])
    assert [got[r[0]] for r in present] == [(i.key, i.compilation) for i in expected]
    assert got["Blue/02.mp3"] == got["Blue/01.mp3"]
    assert got["Box/CD2/01.mp3"] == got["Box/CD1/01.mp3"]
    assert got["VA/01.mp3"][1] and got["VA/02.mp3"][0] != got["VA/01.mp3"][0]
    # A missing song keeps its key and has no say: its folder's tagless file is the folder's.
    assert got["Gone/01.mp3"] == (f"{6:016d}", False)
    assert got["Gone/02.mp3"][0] == keys(("Gone/x.mp3", None, None, None))[0]
    assert got["loose.mp3"] == (None, False)


# ------------------------------------------------------- the worker gives the context


CLASSES = ("Jazz", "Metal", "Rock")


def test_untagged_tagless_songs_get_their_albums_context_through_the_worker(
        tmp_path, make_song, scan_library, database):
    """A real scan, then the real worker with a real ONNX model that hears Rock in
    everything: a tagless song among three Jazz album-mates, and one in a disc folder of a
    Metal album, are turned by their albums, with the reason; tagless songs in a mixed
    folder or a compilation's folder have no tagged mate and keep the sound's answer."""
    from daemon.learn.registry import activate, register_bundle
    from daemon.suggest.worker import Worker

    root = tmp_path / "library"
    for i in range(3):
        make_song(f"0{i}.mp3", seconds=2.0, seed=i, folder=root / "Quartet", album="Live",
                  artist="The Quartet", genre_tag="Jazz")
    for i in range(2):
        make_song(f"0{i}.ogg", seconds=2.0, seed=10 + i, folder=root / "Box" / "CD1",
                  album="Iron Box (Disc 1)", album_artist="Forge", artist="Forge",
                  genre_tag="Metal")
    make_song("a.mp3", seconds=2.0, seed=20, folder=root / "Mixed", album="One",
              artist="Somebody", genre_tag="Jazz")
    make_song("b.mp3", seconds=2.0, seed=21, folder=root / "Mixed", album="Two",
              artist="Somebody", genre_tag="Metal")
    for i, artist in enumerate(("Ann", "Bob")):
        make_song(f"{i}.mp3", seconds=2.0, seed=30 + i, folder=root / "VA", album="Hits",
                  artist=artist, genre_tag="Jazz")
    tagless = {"Quartet/09.flac": "Jazz", "Box/CD2/01.flac": "Metal", "Mixed/c.flac": None,
               "VA/9.flac": None}
    for i, rel in enumerate(tagless):
        make_song(rel, genre="Jazz", seconds=4.0, seed=40 + i, folder=root)
    assert scan_library(root, 0.0) == 13

    config_path = tmp_path / "config.toml"
    config_path.write_text(
        f'state_dir = "{tmp_path / "state"}"\n'
        f'database_url = "sqlite:///{tmp_path / "genretagger.db"}"\n'
        f'[library]\nroot = "{root}"\n[workers]\nprocesses = 1\ndecode_timeout = 20\n'
        '[classifier]\nbatch_songs = 4\n[context]\nweight = 2.0\nsmoothing = 0.25\n')
    config = load_config(config_path)
    sessions = database[1]
    model = register_bundle(sessions, config, genre_bundle(tmp_path / "rock", CLASSES, "Rock"))
    activate(sessions, model.version)

    def pending() -> dict[str, Suggestion]:
        with sessions() as session:
            return {path: s for path, s in session.execute(
                select(Track.path, Suggestion).join(Suggestion.track)
                .where(Suggestion.status == SuggestionStatus.PENDING))}

    worker = Worker(config, sessions)
    worker.start()
    try:
        found = wait_for(lambda: (lambda p: p if set(tagless) <= set(p) else None)(pending()),
                         120, "the four tagless songs suggested")
    finally:
        worker.close()
    quartet, disc = found["Quartet/09.flac"], found["Box/CD2/01.flac"]
    assert quartet.genre == "Jazz" and quartet.context["changed"]
    assert quartet.context["reason"] == "3 of 3 tagged songs on this album are Jazz"
    assert quartet.context["audio_top"][0][0] == "Rock"
    assert disc.genre == "Metal"
    assert disc.context["reason"] == "2 of 2 tagged songs on this album are Metal"
    for rel in ("Mixed/c.flac", "VA/9.flac"):
        assert found[rel].genre == "Rock" and found[rel].context is None, rel
    # The album view shows the tagless song on its album, named by its tagged mates.
    from daemon.review.albums import get_album

    with sessions() as session:
        key = session.scalar(select(Track.album_key).where(Track.path == "Quartet/09.flac"))
        album = get_album(session, key)
    assert (album.title, album.artist, album.labelled) == ("Live", "The Quartet", {"Jazz": 3})
    assert [s.track.path for s in album.pending] == ["Quartet/09.flac"]


# ------------------------------------------------ the trainer counts the same mates


def test_the_trainer_and_the_daemon_count_the_same_mates(
        tmp_path, make_song, scan_library, database):
    """One library, read by the daemon's scan and by the trainer's dataset walk: the same
    album keys, and for every labelled song the same album and artist mates (the daemon's
    mates_for against the trainer's held_out_mates), a confirmed tagless song included."""
    from daemon.suggest.mates import mates_for
    from trainer.context import held_out_mates
    from trainer.dataset import find_labelled_songs, load_labels

    root = tmp_path / "library"
    songs = [("Quartet/01.mp3", dict(album="Live", artist="The Quartet", genre_tag="Jazz")),
             ("Quartet/02.mp3", dict(album="LIVE ", artist="the quartet", genre_tag="Jazz")),
             ("Quartet/03.mp3", dict(album="Live", artist="The Quartet", genre_tag="Blues")),
             ("Quartet/04.mp3", {}),  # tagless; confirmed below
             ("Quartet/05.mp3", {}),  # tagless, unlabelled
             ("The Quartet/Studio/01.mp3", dict(album="Studio", album_artist="The Quartet",
                                               genre_tag="Rock")),
             ("Box/CD1/01.mp3", dict(album="Box", artist="Forge", genre_tag="Metal")),
             ("Box/CD2/01.mp3", dict(album="Box (Disc 2)", artist="Forge", genre_tag="Rock")),
             ("Box/CD2/02.mp3", dict(genre_tag="Metal")),  # a genre, no album or artist
             ("VA/01.mp3", dict(album="Hits", album_artist="Various Artists",
                                artist="The Quartet", genre_tag="Pop")),
             ("VA/02.mp3", dict(album="Hits", artist="Forge", genre_tag="Rock")),
             ("VA/03.mp3", dict(genre_tag="Pop")),
             ("Mixed/01.mp3", dict(album="One", artist="Forge", genre_tag="Metal")),
             ("Mixed/02.mp3", dict(album="Two", artist="Other", genre_tag="Jazz")),
             ("Mixed/03.mp3", dict(genre_tag="Jazz")),
             ("loose.mp3", dict(artist="Forge", genre_tag="Metal"))]
    for i, (rel, tags) in enumerate(songs):
        make_song(rel, seconds=2.0, seed=i, folder=root, **tags)
    assert scan_library(root, 0.0) == len(songs)
    with database[1]() as session, session.begin():
        session.scalars(select(Track).where(Track.path == "Quartet/04.mp3")).one() \
            .confirmed_genre = "Jazz"
        tracks = {t.path: t for t in session.scalars(select(Track))}
        keys_stored = {path: (t.album_key, t.compilation) for path, t in tracks.items()}
        labelled = {path: t.id for path, t in tracks.items()
                    if t.confirmed_genre or t.canonical_genre}
        daemon = mates_for(session, list(labelled.values()))
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"Quartet/04.mp3": "Jazz"}))
    found, _ = find_labelled_songs(root, load_genre_map(None), load_labels(labels))
    assert {s.rel for s in found} == set(labelled)
    assert {s.rel: (s.album_key, s.compilation) for s in found} == {
        rel: keys_stored[rel] for rel in labelled}
    trainer = dict(zip([s.rel for s in found], held_out_mates(found, found), strict=True))
    assert {rel: daemon[labelled[rel]] for rel in labelled} == trainer
    # What the rules gave, in plain terms: the confirmed tagless song's album is "Live".
    assert trainer["Quartet/04.mp3"].album == {"Jazz": 2, "Blues": 1}
    assert trainer["Quartet/04.mp3"].artist == {}
    assert trainer["Quartet/01.mp3"].artist == {"Rock": 1, "Pop": 1}
    assert trainer["Box/CD2/02.mp3"].album == {"Metal": 1, "Rock": 1}
    assert trainer["VA/03.mp3"].album == {}  # a compilation's tagless file is apart


def test_the_trainer_takes_the_album_artist_from_the_daemons_known_files(tmp_path, make_song):
    """--known (the daemon's known.json) stands in for reading a file, so it must carry
    the album artist: without it two artists on one album look like a compilation."""
    from trainer.dataset import find_labelled_songs, load_known

    root = tmp_path / "library"
    for i, artist in enumerate(("Joni Mitchell", "Joni Mitchell feat. James Taylor")):
        make_song(f"0{i}.mp3", seconds=2.0, seed=i, folder=root / "Blue", album="Blue",
                  album_artist="Joni Mitchell", artist=artist, genre_tag="Folk")
    read, _ = find_labelled_songs(root, load_genre_map(None))
    album = keys(("X/1.mp3", "Blue", "Joni Mitchell", None))[0]
    assert [(s.album_key, s.compilation) for s in read] == [(album, False)] * 2

    def known(with_album_artist: bool):
        entries = {}
        for s in read:
            st = s.path.stat()
            entries[s.rel] = {"size": st.st_size, "mtime": st.st_mtime,
                              "fingerprint": s.fingerprint, "artist": s.artist,
                              "album": "Blue", "genres": ["Folk"]}
            if with_album_artist:
                entries[s.rel]["album_artist"] = s.album_artist
        path = tmp_path / "known.json"
        path.write_text(json.dumps(entries))
        return find_labelled_songs(root, load_genre_map(None), known=load_known(path))[0]

    assert known(True) == read
    assert all(s.compilation for s in known(False))
