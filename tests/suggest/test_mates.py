"""Counting a song's tagged album and artist mates on the real database (both backends),
then the real worker with a real ONNX model storing the context and its reason, the
re-score keeping it, `review list` and the review page showing it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import genre_bundle, wait_for
from sqlalchemy import select

from daemon.cli import cli
from daemon.cli.demo import encode, synthesize
from daemon.core.db.engine import open_database, transaction
from daemon.core.db.models import Suggestion, Track
from daemon.core.states import SuggestionStatus, TrackState
from daemon.learn.registry import activate, register_bundle
from daemon.learn.rescore import rescore_pending
from daemon.review.web import create_app
from daemon.suggest.classifier import Classifier
from daemon.suggest.mates import ARTIST_SHARE, ContextSettings, mates_for, with_context
from daemon.suggest.worker import Worker

CLASSES = ("Jazz", "Metal", "Rock")
ALBUM, OTHER, COMP = "a" * 16, "b" * 16, "c" * 16


def _add(session, path: str, **fields) -> int:
    fields.setdefault("state", TrackState.TAGGED)
    track = Track(path=path, size=1, mtime=1.0, **fields)
    session.add(track)
    session.flush()
    return track.id


def test_mates_count_album_artist_compilation_confirmed_and_never_the_song(database_url):
    engine, sessions = open_database(database_url)
    with transaction(sessions) as session:
        song = _add(session, "Miles/Blue/1.mp3", album_key=ALBUM, artist="Miles",
                    canonical_genre="Rock")  # its own tag is not its mate
        for i in range(3):
            _add(session, f"Miles/Blue/{i + 2}.mp3", album_key=ALBUM, artist="Miles",
                 canonical_genre="Jazz")
        # Confirmed beats the tag; an untagged mate is not counted.
        _add(session, "Miles/Blue/5.mp3", album_key=ALBUM, artist="Miles",
             canonical_genre="Blues", confirmed_genre="Jazz")
        _add(session, "Miles/Blue/6.mp3", album_key=ALBUM, artist="Miles",
             state=TrackState.QUEUED)
        _add(session, "Miles/Blue/7.mp3", album_key=ALBUM, artist="Miles",
             canonical_genre="Rock", state=TrackState.MISSING)  # gone: not counted
        # The artist elsewhere, spelled another way; another artist's album is not counted.
        _add(session, "Miles/Red/1.mp3", album_key=OTHER, artist="MILES ",
             canonical_genre="Blues")
        _add(session, "Coltrane/1.mp3", album_key="d" * 16, artist="Coltrane",
             canonical_genre="Metal")
        # A compilation: its songs are one album; the song's own artist, not "Various".
        on_comp = _add(session, "VA/Hits/1.mp3", album_key=COMP, compilation=True,
                       artist="Coltrane", album_artist="Various Artists")
        _add(session, "VA/Hits/2.mp3", album_key=COMP, compilation=True, artist="Miles",
             album_artist="Various Artists", canonical_genre="Jazz")
        _add(session, "VA/Other/1.mp3", album_key="e" * 16, compilation=True,
             artist="Someone", album_artist="Various Artists", canonical_genre="Rock")
        loose = _add(session, "loose.mp3", canonical_genre=None, state=TrackState.QUEUED)
    with sessions() as session:
        mates = mates_for(session, [song, on_comp, loose])
    assert mates[song].album == {"Jazz": 4}
    # Miles elsewhere: "MILES " on another album, and his song on the compilation.
    assert mates[song].artist == {"Blues": 1, "Jazz": 1}
    assert mates[song].counts() == {"Jazz": 4 + ARTIST_SHARE, "Blues": ARTIST_SHARE}
    assert mates[on_comp].album == {"Jazz": 1}
    assert mates[on_comp].artist == {"Metal": 1}  # Coltrane's own song, not Various Artists'
    assert not mates[loose]
    engine.dispose()


def test_no_tagged_mate_leaves_the_audio_exactly_as_it_was(database_url):
    engine, sessions = open_database(database_url)
    with transaction(sessions) as session:
        alone = _add(session, "Untagged/1.mp3", album_key=ALBUM, state=TrackState.QUEUED)
        _add(session, "Untagged/2.mp3", album_key=ALBUM, state=TrackState.QUEUED)
    audio = np.array([[0.2, 0.5, 0.3]])
    with sessions() as session:
        probs, contexts = with_context(session, [alone], audio, CLASSES,
                                       ContextSettings(2.0, 1.0))
    assert contexts == [None]
    assert np.array_equal(probs, audio)
    # An audit (id None) hears the sound alone, however many tagged mates it has.
    with transaction(sessions) as session:
        _add(session, "Untagged/3.mp3", album_key=ALBUM, canonical_genre="Jazz")
    with sessions() as session:
        probs, contexts = with_context(session, [None, alone], np.vstack([audio, audio]),
                                       CLASSES, ContextSettings(2.0, 1.0))
    assert contexts[0] is None and np.array_equal(probs[0], audio[0])
    assert contexts[1]["album"] == {"counts": {"Jazz": 1}} and probs[1, 0] > audio[0, 0]
    engine.dispose()


@pytest.fixture
def album_station(database_url, make_station, tmp_path):
    """(station, {path: track id}) of a library with one album (3 songs tagged Jazz, one
    untagged song as a real file) and a loose untagged song; a model that hears Rock in
    everything; weight 2, smoothing 0.25 from config."""
    station = make_station(database_url=database_url,
                           workers={"processes": 1, "decode_timeout": 20},
                           classifier={"batch_songs": 4},
                           context={"weight": 2.0, "smoothing": 0.25})
    config, sessions, library = station.config, station.sessions, station.library
    (library / "Quartet").mkdir(parents=True)
    ids = {}
    with transaction(sessions) as session:
        for i in range(3):
            _add(session, f"Quartet/{i + 2}.mp3", album_key=ALBUM, artist="Quartet",
                 canonical_genre="Jazz")
        for rel, key in (("Quartet/1.flac", ALBUM), ("loose.flac", None)):
            encode(library / rel, synthesize("Jazz", 6.0, 22_050, len(ids)), 22_050)
            st = (library / rel).stat()
            ids[rel] = _add(session, rel, album_key=key, artist="Quartet" if key else None,
                            state=TrackState.QUEUED)
            session.get(Track, ids[rel]).size = st.st_size
            session.get(Track, ids[rel]).mtime = st.st_mtime
    model = register_bundle(sessions, config, genre_bundle(tmp_path / "rock", CLASSES, "Rock"))
    activate(sessions, model.version)
    return station, ids


def _pending(sessions, track_id: int) -> Suggestion | None:
    with sessions() as session:
        return session.scalar(select(Suggestion).where(
            Suggestion.track_id == track_id, Suggestion.status == SuggestionStatus.PENDING))


def test_the_worker_stores_the_context_and_rescore_keeps_it(album_station, tmp_path):
    station, ids = album_station
    config, config_path, sessions = station.config, station.config_path, station.sessions
    worker = Worker(config, sessions)
    worker.start()
    try:
        wait_for(lambda: all(_pending(sessions, i) for i in ids.values()), 60,
                 "both songs suggested")
    finally:
        worker.close()
    on_album, loose = _pending(sessions, ids["Quartet/1.flac"]), _pending(sessions,
                                                                          ids["loose.flac"])
    # The sound says Rock; three Jazz album-mates at weight 2 turn it.
    assert on_album.genre == "Jazz" and on_album.top[0][0] == "Jazz"
    context = on_album.context
    assert context["reason"] == "3 of 3 tagged songs on this album are Jazz"
    assert context["album"] == {"counts": {"Jazz": 3}} and context["artist"] == {"counts": {}}
    assert (context["weight"], context["smoothing"], context["changed"]) == (2.0, 0.25, True)
    assert context["audio_top"][0][0] == "Rock"
    # No tagged mate: the sound's own answer, unchanged, and no context.
    assert loose.genre == "Rock" and loose.context is None
    assert loose.confidence == pytest.approx(np.exp(4) / (np.exp(4) + 2), abs=1e-4)

    listed = CliRunner().invoke(cli, ["--config", str(config_path), "review", "list",
                                      "--json"])
    rows = {r["id"]: r for r in json.loads(listed.stdout)["suggestions"]}
    assert rows[on_album.id]["context"] == context and rows[loose.id]["context"] is None
    text = CliRunner().invoke(cli, ["--config", str(config_path), "review", "list"]).stdout
    assert ("context: 3 of 3 tagged songs on this album are Jazz; this changed the pick: "
            "by sound alone Rock") in text
    app = create_app(config, sessions)
    app.testing = True
    page = app.test_client().get("/").get_data(as_text=True)
    row = page[page.index(f'id="s{on_album.id}"'):]
    row = row[:row.index("</article>")]
    assert '<p class="context">3 of 3 tagged songs on this album are Jazz; this changed ' \
           'the pick: by sound alone Rock (96%)</p>' in row
    loose_row = page[page.index(f'id="s{loose.id}"'):]
    assert 'class="context"' not in loose_row[:loose_row.index("</article>")]

    # A new model (hears Metal) re-scores from the cache: the context is computed again.
    metal = register_bundle(sessions, config, genre_bundle(tmp_path / "metal", CLASSES,
                                                           "Metal"))
    activate(sessions, metal.version)
    counts = rescore_pending(sessions, config, Classifier.load(Path(metal.path)), metal.id)
    assert counts["rescored"] == 2
    again = _pending(sessions, ids["Quartet/1.flac"])
    assert again.model_id == metal.id and again.genre == "Jazz"
    assert again.context["audio_top"][0][0] == "Metal" and again.context["changed"]
    assert _pending(sessions, ids["loose.flac"]).context is None


@pytest.mark.slow  # trains a bundle
def test_the_trained_bundle_carries_its_fitted_context_and_the_daemon_uses_it(
        trained_bundle, make_config, tmp_path):
    """The real trainer fits weight and smoothing, writes both into report.json (with the
    audio-only and with-context figures apart) and the bundle; the daemon reads them."""
    from daemon.suggest.mates import settings_for

    report = json.loads((trained_bundle / "report.json").read_text())["context"]
    assert report["weight"] is not None and report["fitted_on"]
    assert {"song_accuracy", "macro_f1", "log_likelihood"} <= report["audio"].keys()
    assert report["with_context"]["n_songs"] == report["audio"]["n_songs"] > 0
    classifier = Classifier.load(trained_bundle / "model.onnx")
    assert classifier.metadata["context"] == {"weight": report["weight"],
                                              "smoothing": report["smoothing"]}
    config = make_config(tmp_path, context={"weight": 0.1, "smoothing": 9.0})
    assert settings_for(config, classifier.metadata) == ContextSettings(
        report["weight"], report["smoothing"])
    assert settings_for(config, {}) == ContextSettings(0.1, 9.0)
    off = make_config(tmp_path, context={"enabled": False})
    assert settings_for(off, classifier.metadata) is None


def test_models_show_gives_audio_only_and_with_context_apart(album_station):
    station = album_station[0]
    config_path, sessions = station.config_path, station.sessions
    figures = {"song_accuracy": 0.7, "macro_f1": 0.65, "log_likelihood": -0.8, "n_songs": 40}
    fitted = {"weight": 0.75, "smoothing": 2.0, "chosen_by": "held-out log-likelihood",
              "songs": 40, "songs_with_mates": 30, "fitted_on": "context split",
              "audio": figures, "with_context": {**figures, "song_accuracy": 0.85},
              "with_mates": {"audio": figures, "with_context": {**figures, "macro_f1": 0.9}}}
    from daemon.core.db.models import Model

    with transaction(sessions) as session:
        model = session.scalars(select(Model)).one()
        model.metrics = {**(model.metrics or {}), "context": fitted}
        version = model.version
    shown = CliRunner().invoke(cli, ["--config", str(config_path), "models", "show",
                                     str(version)]).stdout
    assert ("context: weight 0.75, smoothing 2 (chosen by held-out log-likelihood on 40 "
            "held-out songs, 30 with a tagged mate; context split)") in shown
    assert "accuracy 70.0% audio -> 85.0% with context; macro-F1 0.650 -> 0.650" in shown
    assert "macro-F1 0.650 -> 0.900" in shown
    data = json.loads(CliRunner().invoke(cli, ["--config", str(config_path), "models", "show",
                                               str(version), "--json"]).stdout)
    assert data["context"] == fitted
