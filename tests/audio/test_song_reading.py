"""A song file's facts are read one way (daemon.audio.song.read_song): the service's tag
reader, `genretagger scan` and the trainer say the same of the same file, good or bad."""

from __future__ import annotations

import pytest

from daemon.audio.fingerprint import fingerprint
from daemon.audio.song import read_song
from daemon.library.scan import inspect_file
from daemon.tags.genres import load_genre_map
from trainer.dataset import _read_song


def test_a_good_song_reads_the_same_everywhere(make_song):
    path = make_song("Artist/Song.mp3", seconds=4.0, title="Song", artist="Artist",
                     album="Album", genre_tag="Jazz")
    song = read_song(path)
    assert song.fingerprint == fingerprint(path)
    assert song.tags.title == "Song" and song.tags.genres == ("Jazz",)
    assert song.info is not None and song.problems == ()
    assert song.format == "mp3" and song.duration == pytest.approx(4.0, abs=0.1)
    assert song.duration == song.info.duration  # the header's, as the service stores it
    report = inspect_file(str(path), "Artist/Song.mp3", load_genre_map())
    assert (report.format, report.duration, report.genre, report.error) == (
        "mp3", song.duration, "Jazz", None)
    tags, genres, why = _read_song("Artist/Song.mp3", path)
    assert (tags.artist, tags.album, genres, why) == ("Artist", "Album", ("Jazz",), None)
    assert read_song(path, fingerprinted=False).fingerprint is None


def test_a_bad_file_gives_each_reader_the_same_reason(tmp_path):
    path = tmp_path / "random.mp3"
    path.write_bytes(bytes(range(256)) * 64)
    song = read_song(path)
    assert song.fingerprint == fingerprint(path)
    assert song.tags is None and song.info is None
    assert song.tags_problem and song.audio_problem
    assert song.problems == (f"tags: {song.tags_problem}", f"audio: {song.audio_problem}")
    assert inspect_file(str(path), "random.mp3", load_genre_map()).error == song.tags_problem
    assert _read_song("random.mp3", path)[2] == song.tags_problem


def test_a_vanished_file(tmp_path):
    gone = tmp_path / "gone.flac"
    assert read_song(gone) is None
    unread = read_song(gone, fingerprinted=False)
    assert unread.tags is None and "file vanished" in unread.tags_problem
    assert _read_song("gone.flac", gone)[2] == unread.tags_problem
