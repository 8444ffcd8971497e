"""The demo library's albums (daemon.cli.demo, by_album): fully, partly and not at all
tagged, as `make demo` writes them; tags read back by exiftool."""

from __future__ import annotations

import json
import subprocess
from collections import defaultdict

from daemon.cli.demo import make_library


def test_demo_albums_are_fully_partly_and_not_tagged(tmp_path):
    songs = make_library(tmp_path / "library", songs_per_genre=9, genres=("Jazz",),
                         seconds=(2, 3), formats=(".flac", ".mp3"), artists_per_genre=3,
                         broken=0, by_album=True)
    by_album = defaultdict(list)
    for song in songs:
        by_album[song.artist].append(song.tagged)
    assert sorted(sum(t) for t in by_album.values()) == [0, 2, 3]  # none, partly, fully
    read = json.loads(subprocess.run(
        ["exiftool", "-json", "-Genre", "-Album", *[str(s.path) for s in songs]],
        capture_output=True, text=True, check=True).stdout)
    genres = {r["SourceFile"]: r.get("Genre") for r in read}
    for song in songs:
        assert (genres[str(song.path)] is not None) == song.tagged
    assert len({r["Album"] for r in read}) == 3  # one album per artist folder
