"""Files that are not songs: `[library] exclude`, `min_song_seconds`, the reviewer's "Not a
song" / "This is a song", and short songs under a backbone bundle.

A real drive of encoded files (a Jingles folder, a Sweepers folder deep down, 2-25 s
imaging) walked and settled by the real Library on SQLite and PostgreSQL; `scan`,
`status` and `review` through the real CLI; labels read back by the daemon's label
queries and the trainer's library walk.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import add_suggested_track, wait_for
from sqlalchemy import select

from daemon.cli import cli
from daemon.cli.demo import encode, synthesize
from daemon.cli.status_text import render_status
from daemon.core.config import parse_config
from daemon.core.db.engine import open_database, transaction
from daemon.core.db.models import Suggestion, Track
from daemon.core.errors import ConfigError
from daemon.core.songrules import SongRules
from daemon.core.states import SuggestionStatus, TrackState
from daemon.learn.labels import confirmed_labels, current_labels, label_counts, not_songs
from daemon.library.reconcile import Library
from daemon.review.decisions import NotPending
from daemon.review.songmarks import UnknownTrack
from daemon.service.status import collect_status
from daemon.suggest.queue import queue_depth
from daemon.tags.genres import load_genre_map
from daemon.tags.write import write_tags

SR = 22_050
SETTLE = 1.0
EXCLUDE = ["Jingles", "**/Sweepers"]

# rel path -> (seconds, genre tag or None); the first group are songs, the rest not.
SONGS = {"Rock/Band/one.flac": (12.0, "Rock"), "Jazz/two.wav": (11.0, None),
         "Rock/Band/interlude.wav": (6.0, None)}
IMAGING = {
    "Jingles/station id.wav": (2.0, None),
    "Jingles/Top of hour/legal id.flac": (8.0, "Pop"),   # tagged like a song
    "Imaging/Sweepers/sweeper 20s.wav": (20.0, "Electronic"),
    "Imaging/Sweepers/sweeper 25s.flac": (25.0, None),
    "Imaging/liner.wav": (3.0, None),                     # short: min_song_seconds
    "Rock/Band/count-in.wav": (0.5, None),                # too short for any model
}


# ------------------------------------------------------------------ the rule itself

@pytest.mark.parametrize("path, pattern", [
    ("Jingles/a.mp3", "Jingles"), ("jingles/deep/a.mp3", "Jingles"),
    ("Sweepers/a.mp3", "**/Sweepers"), ("Rock/Imaging/Sweepers/a.mp3", "**/Sweepers"),
    ("IDs/a.mp3", "IDs/**"), ("bed.wav", "*.wav"), ("Promo 7/x.mp3", "Promo ?/**"),
    ("Rock/a.wav", None), ("JinglesOld/a.mp3", None), ("Rock/Sweepers.mp3", None),
    ("Rock/song.mp3", None), ("Beds/[x].mp3", "Beds/[[]x].mp3"),
])
def test_exclude_patterns_cover_folders_at_any_depth_and_ignore_case(path, pattern):
    rules = SongRules(("Jingles", "**/Sweepers", "IDs/**", "*.wav", "Promo ?/**",
                       "Beds/[[]x].mp3"))
    assert rules.excluded_by(path) == pattern


def test_the_rule_weighs_marks_patterns_and_length():
    rules = SongRules(("Jingles",), 30.0)
    assert rules.reason("Rock/a.mp3", 200.0) is None
    assert rules.reason("Rock/a.mp3", None) is None  # length not known yet
    assert "min_song_seconds (30 s)" in rules.reason("Rock/a.mp3", 12.5)
    assert "'Jingles'" in rules.reason("Jingles/a.mp3", 200.0)
    assert rules.reason("Jingles/a.mp3", 12.0, "song") is None  # the reviewer's word wins
    assert rules.reason("Rock/a.mp3", 200.0, "not_a_song") == "marked not a song in review"
    # ... except that no model can hear less than one clip.
    assert "shorter than the 1 s" in rules.reason("Rock/a.mp3", 0.4, "song")


@pytest.mark.parametrize("patterns, message", [
    (["/srv/music/Jingles/**"], "relative to the library root"),
    (["Jingles/../Rock"], "cannot appear"),
    ([""], "empty pattern"), (["A//B"], "empty folder name"), (["A\\B"], 'with "/"'),
])
def test_bad_exclude_patterns_are_config_errors_naming_the_key(tmp_path, patterns, message):
    with pytest.raises(ConfigError, match=r"library\.exclude: .*" + message):
        parse_config({"library": {"root": str(tmp_path), "exclude": patterns},
                      "state_dir": str(tmp_path / "s")})
    with pytest.raises(ConfigError, match=r"library\.min_song_seconds"):
        parse_config({"library": {"root": str(tmp_path), "min_song_seconds": -1},
                      "state_dir": str(tmp_path / "s")})


# ------------------------------------------------------------------ a station's drive

@pytest.fixture(scope="module")
def drive_masters(tmp_path_factory):
    """Every file of the drive, encoded once for the module."""
    folder = tmp_path_factory.mktemp("drive")
    for i, (rel, (seconds, tag)) in enumerate({**SONGS, **IMAGING}.items()):
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        encode(path, synthesize(("Rock", "Jazz", "Electronic")[i % 3], seconds, SR, i, 1), SR)
        if tag:
            write_tags(path, genre=tag)
    return folder


def _config(tmp_path, library: Path, database_url: str, **library_keys):
    return parse_config({
        "library": {"root": str(library), "settle_seconds": SETTLE, "watch": "native",
                    "exclude": EXCLUDE, "min_song_seconds": 5, **library_keys},
        "state_dir": str(tmp_path / "state"), "database_url": database_url})


def _settle(library: Library, now: float) -> None:
    library.reconcile(now=now)
    library.settle_due(now=now + SETTLE)


def _states(sessions) -> dict[str, tuple[str, str | None]]:
    with sessions() as session:
        return {t.path: (t.state, t.not_song_reason) for t in session.scalars(select(Track))}


def test_a_drive_with_jingle_folders_queues_only_the_songs(tmp_path, drive_masters,
                                                           database_url):
    root = tmp_path / "library"
    shutil.copytree(drive_masters, root)
    config = _config(tmp_path, root, database_url)
    engine, sessions = open_database(config.db_url)
    library = Library(config, sessions, load_genre_map())
    try:
        _settle(library, 1000.0)
        states = _states(sessions)
        assert {p for p, (s, _) in states.items() if s == TrackState.NOT_A_SONG} == set(IMAGING)
        assert states["Rock/Band/one.flac"][0] == TrackState.TAGGED
        assert states["Jazz/two.wav"][0] == TrackState.QUEUED
        assert states["Rock/Band/interlude.wav"][0] == TrackState.QUEUED  # 6 s >= 5 s
        reasons = {p: r for p, (_, r) in states.items()}
        assert "'Jingles'" in reasons["Jingles/Top of hour/legal id.flac"]
        assert "'**/Sweepers'" in reasons["Imaging/Sweepers/sweeper 20s.wav"]
        assert "min_song_seconds (5 s)" in reasons["Imaging/liner.wav"]
        assert "shorter than the 1 s" in reasons["Rock/Band/count-in.wav"]
        with sessions() as session:
            assert queue_depth(session) == 2
            # Tagged imaging never becomes a training label.
            assert label_counts(session) == {"Rock": 1}
            assert set(not_songs(session)) == set(IMAGING)

        # `status`: every one listed with its reason, in text and JSON.
        data = collect_status(config, sessions)
        assert data["not_songs_total"] == len(IMAGING)
        assert data["tracks"]["by_state"]["not_a_song"] == len(IMAGING)
        assert {n["path"]: n["reason"] for n in data["not_songs"]} == {
            p: reasons[p] for p in IMAGING}
        assert data["quarantined_total"] == 0
        text = render_status(data)
        assert f"not songs:   {len(IMAGING)} file(s)" in text
        assert "Imaging/Sweepers/sweeper 25s.flac: matches [library] exclude" in text
        # ... and the same through the command.
        config_path = tmp_path / "config.toml"
        config_path.write_text(f'state_dir = "{tmp_path / "state"}"\n'
                               f'database_url = "{database_url}"\n[library]\n'
                               f'root = "{root}"\nexclude = {json.dumps(EXCLUDE)}\n')
        done = CliRunner().invoke(cli, ["--config", str(config_path), "status", "--json"])
        assert done.exit_code == 0, done.output
        assert json.loads(done.stdout)["not_songs"] == data["not_songs"]

        # A song moved into the Jingles folder is the same track (its history kept), and
        # now not a song.
        with sessions() as session:
            moved_id = session.scalar(select(Track.id).where(Track.path == "Jazz/two.wav"))
        (root / "Jazz" / "two.wav").rename(root / "Jingles" / "two.wav")
        _settle(library, 1100.0)
        with sessions() as session:
            moved = session.get(Track, moved_id)
            assert (moved.path, moved.state) == ("Jingles/two.wav", TrackState.NOT_A_SONG)
            assert queue_depth(session) == 1

        # The station drops the Jingles pattern and lowers the length: the next walk moves
        # the files that are songs now into the queue (the tagged one is tagged), without
        # their files changing.
        config2 = _config(tmp_path, root, database_url, exclude=["**/Sweepers"],
                          min_song_seconds=2)
        Library(config2, sessions, load_genre_map()).reconcile(now=2000.0)
        states = _states(sessions)
        assert states["Jingles/station id.wav"] == (TrackState.QUEUED, None)
        assert states["Jingles/two.wav"] == (TrackState.QUEUED, None)
        assert states["Jingles/Top of hour/legal id.flac"] == (TrackState.TAGGED, None)
        assert states["Imaging/liner.wav"][0] == TrackState.QUEUED
        assert states["Imaging/Sweepers/sweeper 20s.wav"][0] == TrackState.NOT_A_SONG
        assert states["Rock/Band/count-in.wav"][0] == TrackState.NOT_A_SONG
    finally:
        library.close()
        engine.dispose()


def test_scan_lists_what_is_not_a_song_with_the_reason(tmp_path, drive_masters):
    root = tmp_path / "library"
    shutil.copytree(drive_masters, root)
    config_path = tmp_path / "config.toml"
    config_path.write_text(f'state_dir = "{tmp_path / "state"}"\n[library]\nroot = "{root}"\n'
                           f'exclude = {json.dumps(EXCLUDE)}\nmin_song_seconds = 5\n')
    runner = CliRunner()
    done = runner.invoke(cli, ["--config", str(config_path), "scan", str(root), "--json"])
    assert done.exit_code == 0, done.output
    data = json.loads(done.stdout)
    found = {f["path"]: f["not_song"] for f in data["files"]}
    assert {p for p, why in found.items() if why} == set(IMAGING)
    assert "'**/Sweepers'" in found["Imaging/Sweepers/sweeper 20s.wav"]
    assert data["summary"]["not_songs"] == len(IMAGING)
    # The genre counts are the songs': the tagged jingle and sweeper are not in them.
    assert data["summary"]["genres"] == {"Rock": 1}

    # A folder inside the library is matched at its place there.
    done = runner.invoke(cli, ["--config", str(config_path), "scan", str(root / "Imaging"),
                               "--json"])
    inside = {f["path"]: f["not_song"] for f in json.loads(done.stdout)["files"]}
    assert "'**/Sweepers'" in inside["Sweepers/sweeper 25s.flac"]
    done = runner.invoke(cli, ["--config", str(config_path), "scan", str(root)])
    assert "Jingles/station id.wav\tNOT A SONG\t" in done.stdout
    assert f"not songs ({len(IMAGING)}," in done.stdout


# ------------------------------------------------------------------ the reviewer's word

@pytest.fixture
def excluding_station(database_url, make_station):
    """A station whose exclude and min_song_seconds are set, on SQLite and on PostgreSQL."""
    return make_station(database_url=database_url,
                        library={"exclude": ["Jingles"], "min_song_seconds": 30})


def review(config_path, *args):
    done = CliRunner().invoke(cli, ["--config", str(config_path), "review", *args, "--json"])
    return done, json.loads(done.stdout) if done.exit_code == 0 else None


def _track(sessions, track_id: int) -> Track:
    with sessions() as session:
        return session.get(Track, track_id)


def _suggestion(sessions, suggestion_id: int) -> Suggestion:
    with sessions() as session:
        return session.get(Suggestion, suggestion_id)


def test_not_a_song_and_its_undo_from_the_command_line(excluding_station):
    config_path, sessions = excluding_station.config_path, excluding_station.sessions
    track_id, suggestion_id = add_suggested_track(
        sessions, "Imaging/promo.mp3", top=(("Pop", 0.9), ("Rock", 0.05), ("Jazz", 0.05)),
        duration=45.0)
    other_id, _ = add_suggested_track(sessions, "Pop/song.mp3", duration=200.0)
    with transaction(sessions) as session:  # confirmed earlier by mistake
        session.get(Track, track_id).confirmed_genre = "Pop"

    done, data = review(config_path, "not-a-song", "Imaging/promo.mp3")
    assert done.exit_code == 0, done.output
    [mark] = data["decisions"]
    assert mark["action"] == "not_a_song" and mark["write_status"] == "none"
    track = _track(sessions, track_id)
    assert track.state == TrackState.NOT_A_SONG
    assert track.not_song_reason == "marked not a song in review"
    assert _suggestion(sessions, suggestion_id).status == SuggestionStatus.SUPERSEDED
    done, listed = review(config_path, "list")
    assert [s["path"] for s in listed["suggestions"]] == ["Pop/song.mp3"]
    with sessions() as session:  # out of training, its confirmed genre included
        assert "Imaging/promo.mp3" not in confirmed_labels(session)
        assert current_labels(session, ["Imaging/promo.mp3"]) == {"Imaging/promo.mp3": None}
        assert not_songs(session) == {"Imaging/promo.mp3": "marked not a song in review"}
    # Errors are typed (the command prints their message as its error line).
    done, _ = review(config_path, "not-a-song", "Imaging/promo.mp3")
    assert isinstance(done.exception, NotPending)
    assert "already marked not a song" in str(done.exception)
    done, _ = review(config_path, "not-a-song", "Nowhere/else.mp3")
    assert isinstance(done.exception, UnknownTrack) and "Nowhere/else.mp3" in str(
        done.exception)

    done, data = review(config_path, "undo", str(mark["id"]))
    assert done.exit_code == 0, done.output
    assert data["decisions"][0]["action"] == "undo"
    track = _track(sessions, track_id)
    assert (track.state, track.song_mark, track.not_song_reason) == (
        TrackState.SUGGESTED, None, None)
    assert _suggestion(sessions, suggestion_id).status == SuggestionStatus.PENDING
    with sessions() as session:
        assert confirmed_labels(session)["Imaging/promo.mp3"] == "Pop"
    assert _track(sessions, other_id).state == TrackState.SUGGESTED


def test_a_short_song_the_rules_caught_is_marked_a_song_and_back(excluding_station, tmp_path):
    config_path, sessions = excluding_station.config_path, excluding_station.sessions
    library = tmp_path / "library"
    (library / "Punk").mkdir()
    encode(library / "Punk" / "short song.wav", synthesize("Rock", 2.0, SR, 3, 1), SR)
    with transaction(sessions) as session:
        session.add(Track(path="Punk/short song.wav", size=1, mtime=1.0, duration=2.0,
                          state=TrackState.NOT_A_SONG,
                          not_song_reason="2.0 s long: shorter than [library] "
                                          "min_song_seconds (30 s)"))
        session.add(Track(path="Jingles/id.wav", size=1, mtime=1.0, duration=200.0,
                          state=TrackState.NOT_A_SONG, not_song_reason="excluded"))
    # Given as a path into the library, as the IT volunteer copies it from `status`.
    done, data = review(config_path, "song", str(library / "Punk" / "short song.wav"))
    assert done.exit_code == 0, done.output
    with sessions() as session:
        track = session.scalars(select(Track).where(Track.path == "Punk/short song.wav")).one()
        assert (track.state, track.song_mark) == (TrackState.QUEUED, "song")
        assert queue_depth(session) == 1
    done, _ = review(config_path, "song", "Punk/short song.wav")
    assert isinstance(done.exception, NotPending)
    assert "already marked a song" in str(done.exception)

    done, _ = review(config_path, "undo", str(data["decisions"][0]["id"]))
    assert done.exit_code == 0, done.output
    with sessions() as session:
        track = session.scalars(select(Track).where(Track.path == "Punk/short song.wav")).one()
        assert (track.state, track.song_mark) == (TrackState.NOT_A_SONG, None)
        assert "min_song_seconds (30 s)" in track.not_song_reason
        assert queue_depth(session) == 0


def test_the_not_songs_page_lists_them_and_brings_a_song_back(excluding_station):
    import re

    from daemon.core.config import load_config
    from daemon.review.web import create_app

    config_path, sessions = excluding_station.config_path, excluding_station.sessions
    with transaction(sessions) as session:
        for path, duration, reason in [
                ("Punk/Short Song.mp3", 25.0,
                 "25.0 s long: shorter than [library] min_song_seconds (30 s)"),
                ("Jingles/ID <1>.mp3", 8.0, "matches [library] exclude pattern 'Jingles'")]:
            session.add(Track(path=path, size=1, mtime=1.0, duration=duration,
                              state=TrackState.NOT_A_SONG, not_song_reason=reason))
        session.add(Track(path="Rock/Song.mp3", size=1, mtime=1.0, duration=200.0,
                          state=TrackState.QUEUED))
    app = create_app(load_config(config_path), sessions)
    app.testing = True
    client = app.test_client()
    page = client.get("/not-songs").get_data(as_text=True)
    assert '<span class="count">2</span>' in page
    assert "shorter than [library] min_song_seconds (30 s)" in page
    assert "Jingles/ID &lt;1&gt;.mp3" in page and "Rock/Song.mp3" not in page
    assert 'href="/not-songs"' in client.get("/").get_data(as_text=True)  # in the nav
    with sessions() as session:
        short_id = session.scalar(select(Track.id).where(Track.path == "Punk/Short Song.mp3"))
    token = re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)
    answer = client.post(f"/tracks/{short_id}/song", headers={
        "X-CSRFToken": token, "Accept": "application/json"})
    assert answer.status_code == 200 and answer.json["ok"], answer.json
    assert answer.json["decisions"][0]["action"] == "song"
    assert _track(sessions, short_id).state == TrackState.QUEUED
    page = client.get("/not-songs").get_data(as_text=True)
    assert '<span class="count">1</span>' in page and "Short Song" not in page
    # Once is enough: a second "This is a song" is refused with the reason.
    again = client.post(f"/tracks/{short_id}/song", headers={
        "X-CSRFToken": token, "Accept": "application/json"})
    assert again.status_code == 409 and "already" in again.json["error"]


# ------------------------------------------------------------------ training

def test_files_that_are_not_songs_are_never_training_labels_for_the_trainer(tmp_path,
                                                                           drive_masters):
    from daemon.learn.trainer_process import trainer_command
    from trainer.dataset import find_labelled_songs, load_not_songs

    root = tmp_path / "library"
    shutil.copytree(drive_masters, root)
    not_songs_file = tmp_path / "not_songs.json"
    not_songs_file.write_text(json.dumps({
        "Jingles/Top of hour/legal id.flac": "matches [library] exclude pattern 'Jingles'",
        "Imaging/Sweepers/sweeper 20s.wav": "marked not a song in review"}))
    songs, left_out = find_labelled_songs(root, load_genre_map(),
                                          {"Imaging/Sweepers/sweeper 20s.wav": "Electronic"},
                                          not_songs=load_not_songs(not_songs_file))
    assert [s.rel for s in songs] == ["Rock/Band/one.flac"]
    assert dict(left_out)["Jingles/Top of hour/legal id.flac"].startswith("not a song: ")
    assert dict(left_out)["Imaging/Sweepers/sweeper 20s.wav"] == (
        "not a song: marked not a song in review")
    # The nightly retrain hands the list over.
    config = _config(tmp_path, root, f"sqlite:///{tmp_path / 'x.db'}")
    argv = trainer_command(config, tmp_path / "run", tmp_path / "labels.json", None,
                           not_songs=not_songs_file)
    assert argv[argv.index("--not-songs") + 1] == str(not_songs_file)


# ------------------------------------------------------------------ short songs

def test_a_song_shorter_than_one_backbone_patch_fills_it_with_itself(tmp_path):
    from daemon.audio.decode import decode_song, read_window
    from daemon.audio.features import BACKBONE_SPEC

    path = encode(tmp_path / "two seconds.wav", synthesize("Jazz", 2.0, SR, 5, 1), SR)
    info, windows = decode_song(path, ["cnn", "backbone"])
    patches = windows["backbone"]
    assert patches.shape == (5, BACKBONE_SPEC.patch_samples)
    whole = read_window(path, 0.0, info.duration, sr=BACKBONE_SPEC.sample_rate)
    assert len(whole) == round(info.duration * BACKBONE_SPEC.sample_rate)
    for patch in patches:  # the whole song, repeated: no silence in the patch
        np.testing.assert_array_equal(patch, np.resize(whole, BACKBONE_SPEC.patch_samples))
    assert windows["cnn"].shape == (5, SR)
    # A song of one patch or more is placed exactly as before (no repetition).
    path = encode(tmp_path / "four seconds.wav", synthesize("Jazz", 4.0, SR, 5, 1), SR)
    _, windows = decode_song(path, ["backbone"])
    from daemon.audio.features import clip_starts
    starts = clip_starts(4.0, BACKBONE_SPEC)
    first = read_window(path, starts[-1], BACKBONE_SPEC.clip_seconds,
                        sr=BACKBONE_SPEC.sample_rate)
    np.testing.assert_array_equal(windows["backbone"][-1, :len(first)], first)


@pytest.mark.slow
def test_a_two_second_song_under_a_backbone_bundle_is_suggested_not_failed(tmp_path,
                                                                           make_config):
    from helpers import two_input_bundle

    from daemon.learn.registry import activate, register_bundle
    from daemon.suggest.worker import Worker

    library = tmp_path / "library"
    rel = "Punk/two seconds.wav"
    (library / "Punk").mkdir(parents=True)
    path = encode(library / rel, synthesize("Rock", 2.0, SR, 9, 1), SR)
    config = make_config(library, workers={"processes": 1, "decode_timeout": 30,
                                           "max_attempts": 1},
                         classifier={"batch_songs": 2})
    engine, sessions = open_database(config.db_url)
    model = register_bundle(sessions, config, two_input_bundle(tmp_path / "b", ("Jazz", "Rock"),
                                                               "Rock"))
    activate(sessions, model.version)
    with transaction(sessions) as session:
        session.add(Track(path=rel, size=path.stat().st_size, mtime=path.stat().st_mtime,
                          state=TrackState.QUEUED))
    worker = Worker(config, sessions)
    try:
        worker.start()
        wait_for(lambda: _track(sessions, 1).state != TrackState.QUEUED
                 and _track(sessions, 1).state != TrackState.WORKING, 60, "the short song")
    finally:
        worker.close()
    track = _track(sessions, 1)
    assert track.state == TrackState.SUGGESTED, track.last_error
    with sessions() as session:
        [suggestion] = session.scalars(select(Suggestion)).all()
        assert suggestion.genre == "Rock" and suggestion.model_id == model.id
    engine.dispose()
