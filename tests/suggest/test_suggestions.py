"""THE suggestion rule (daemon.suggest.suggestions): pure cases, then end to end with the real
worker, real ONNX models promoted through the registry and the real database."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from helpers import genre_bundle, locks_waiting, wait_for
from sqlalchemy import select

from daemon.cli.demo import encode, synthesize
from daemon.core.db.engine import open_database, transaction
from daemon.core.db.models import Suggestion, Track
from daemon.core.states import SuggestionStatus, TrackState
from daemon.learn.registry import activate, register_bundle
from daemon.learn.rescore import rescore_pending, resuggest_rejected
from daemon.review import decisions as review
from daemon.suggest.classifier import Classifier
from daemon.suggest.suggestions import AGREES_WITH_TAG, REJECTED_BEFORE, SUGGESTED, decide
from daemon.suggest.worker import Worker

CLASSES = ("Jazz", "Metal", "Rock")
TOP = [("Jazz", 0.95), ("Rock", 0.03), ("Metal", 0.02)]


def test_the_rule_refuses_a_rejected_genre_whoever_asks():
    plain = decide(TOP, rejected=set(), audit_genre=None, audit_min_confidence=0.9)
    assert (plain.genre, plain.state, plain.why) == ("Jazz", TrackState.SUGGESTED, SUGGESTED)
    again = decide(TOP, rejected={"Jazz"}, audit_genre=None, audit_min_confidence=0.9)
    assert (again.genre, again.state, again.why) == (None, TrackState.REVIEWED,
                                                     REJECTED_BEFORE)
    # An audit stands only while the model strongly disagrees with the file's tag.
    agrees = decide(TOP, rejected=set(), audit_genre="Jazz", audit_min_confidence=0.9)
    assert (agrees.genre, agrees.state, agrees.why) == (None, TrackState.TAGGED,
                                                        AGREES_WITH_TAG)
    unsure = decide(TOP, rejected=set(), audit_genre="Rock", audit_min_confidence=0.99)
    assert unsure.genre is None and unsure.state == TrackState.TAGGED
    disagrees = decide(TOP, rejected=set(), audit_genre="Rock", audit_min_confidence=0.9)
    assert (disagrees.genre, disagrees.disagrees_with) == ("Jazz", "Rock")
    rejected_audit = decide(TOP, rejected={"Jazz"}, audit_genre="Rock",
                            audit_min_confidence=0.9)
    assert rejected_audit.genre is None and rejected_audit.state == TrackState.TAGGED


def _promote(config, sessions, tmp_path: Path, hears: str) -> tuple[int, Classifier]:
    """Register and activate a real model that hears `hears` (what a promotion does before
    it re-scores); returns its id and its classifier."""
    model = register_bundle(sessions, config, genre_bundle(tmp_path / f"hears-{hears}",
                                                           CLASSES, hears))
    activate(sessions, model.version)
    return model.id, Classifier.load(Path(model.path))


def _suggestions(sessions, track_id: int) -> list[tuple[str, str]]:
    with sessions() as session:
        return [(s.genre, s.status) for s in session.scalars(
            select(Suggestion).where(Suggestion.track_id == track_id).order_by(Suggestion.id))]


def test_a_rejected_genre_never_comes_back_through_a_later_promotion(tmp_path, make_config,
                                                                   database_url):
    """Reject A -> a later model suggests B -> the nightly re-score with a model that hears
    A again must not put A back."""
    library = tmp_path / "library"
    library.mkdir()
    encode(library / "song.flac", synthesize("Jazz", 6.0, 22_050, 3), 22_050)
    config = make_config(library, workers={"processes": 1, "decode_timeout": 20},
                         classifier={"batch_songs": 1}, database_url=database_url)
    engine, sessions = open_database(config.db_url)
    st = (library / "song.flac").stat()
    with transaction(sessions) as session:
        track = Track(path="song.flac", size=st.st_size, mtime=st.st_mtime,
                      state=TrackState.QUEUED)
        session.add(track)
        session.flush()
        track_id = track.id

    _promote(config, sessions, tmp_path, "Jazz")
    worker = Worker(config, sessions)  # the real worker: decodes, caches, suggests
    worker.start()
    try:
        wait_for(lambda: _suggestions(sessions, track_id) == [("Jazz", "pending")], 60,
                 "the first model's suggestion")
    finally:
        worker.close()
    with sessions() as session:
        [first] = session.scalars(select(Suggestion).where(Suggestion.track_id == track_id))
    review.reject(sessions, config, [first.id], who="music director")

    # A later model hears Metal: the rejected song gets a second chance with it.
    metal_id, metal = _promote(config, sessions, tmp_path, "Metal")
    assert rescore_pending(sessions, config, metal, metal_id)["rescored"] == 0
    assert resuggest_rejected(sessions, config, metal, metal_id)["resuggested"] == 1
    assert _suggestions(sessions, track_id) == [("Jazz", "rejected"), ("Metal", "pending")]

    # The next nightly promotion hears Jazz again: re-scoring must not bring it back.
    jazz_id, jazz = _promote(config, sessions, tmp_path, "Jazz")
    counts = rescore_pending(sessions, config, jazz, jazz_id)
    assert counts["rescored"] == 0 and counts["dropped"] == 1
    assert resuggest_rejected(sessions, config, jazz, jazz_id)["resuggested"] == 0
    history = _suggestions(sessions, track_id)
    assert ("Jazz", "pending") not in history
    assert history == [("Jazz", "rejected"), ("Metal", "superseded")]
    with sessions() as session:
        assert session.get(Track, track_id).state == TrackState.REVIEWED
        assert session.scalar(select(Suggestion).where(
            Suggestion.status == SuggestionStatus.PENDING)) is None
    engine.dispose()


def test_rescoring_keeps_what_the_song_sounds_like(tmp_path, make_config, database_url):
    """A re-scored suggestion and a rejected song's second chance keep the sounds-like
    list: it comes from the backbone's embedding, which a new model does not change."""
    from daemon.audio.featurecache import FeatureCache
    from daemon.audio.features import DEFAULT_SPEC, song_features
    from daemon.suggest.inputs import WindowSpecs

    config = make_config(tmp_path / "library", database_url=database_url)
    engine, sessions = open_database(config.db_url)
    sr = DEFAULT_SPEC.sample_rate
    audio = synthesize("Metal", 6.0, sr, 1, channels=1)[:, 0]
    # The worker's cache: features at the config's windows per song.
    spec = WindowSpecs.for_windows(config.classifier.windows_per_song).cnn
    clips = np.stack([audio[i * sr // 2:(i + 2) * sr // 2] for i in range(spec.clips_per_song)])
    FeatureCache(config.cache_dir, spec).put("c" * 64, song_features(clips, spec))
    nearest = [{"track_id": 7, "path": "Metal/a.mp3", "genre": "Metal", "similarity": 0.97}]
    with transaction(sessions) as session:
        track = Track(path="song.mp3", size=1, mtime=1.0, fingerprint="c" * 64,
                      state=TrackState.SUGGESTED)
        session.add(track)
        session.flush()
        session.add(Suggestion(track_id=track.id, genre="Jazz", confidence=0.6,
                               top=[["Jazz", 0.6]], status="pending", sounds_like=nearest))
        track_id = track.id

    metal_id, metal = _promote(config, sessions, tmp_path, "Metal")
    assert rescore_pending(sessions, config, metal, metal_id)["rescored"] == 1
    with sessions() as session:
        [rescored] = session.scalars(select(Suggestion).where(
            Suggestion.status == SuggestionStatus.PENDING))
        assert (rescored.genre, rescored.sounds_like) == ("Metal", nearest)
    review.reject(sessions, config, [rescored.id], who="music director")
    rock_id, rock = _promote(config, sessions, tmp_path, "Rock")
    assert resuggest_rejected(sessions, config, rock, rock_id)["resuggested"] == 1
    with sessions() as session:
        [again] = session.scalars(select(Suggestion).where(
            Suggestion.status == SuggestionStatus.PENDING))
        assert (again.track_id, again.genre, again.sounds_like) == (track_id, "Rock", nearest)
    engine.dispose()


def test_a_decision_made_while_a_rescore_runs_is_not_superseded(tmp_path, make_config,
                                                                  database_url):
    """The nightly re-score and the director meet on one song: the director's accept holds
    the suggestion when the re-score comes to replace it. The re-score must see the
    decision (and leave the song alone), not supersede an accepted suggestion under it;
    on PostgreSQL (READ COMMITTED) that takes its row locks."""
    import threading

    from sqlalchemy import func

    from daemon.audio.featurecache import FeatureCache
    from daemon.audio.features import DEFAULT_SPEC, song_features
    from daemon.core.db.engine import locked
    from daemon.core.db.models import Decision
    from daemon.suggest.inputs import WindowSpecs

    config = make_config(tmp_path / "library", database_url=database_url)
    engine, sessions = open_database(config.db_url)
    postgres = engine.dialect.name == "postgresql"
    sr = DEFAULT_SPEC.sample_rate
    audio = synthesize("Metal", 6.0, sr, 1, channels=1)[:, 0]
    spec = WindowSpecs.for_windows(config.classifier.windows_per_song).cnn
    clips = np.stack([audio[i * sr // 2:(i + 2) * sr // 2] for i in range(spec.clips_per_song)])
    FeatureCache(config.cache_dir, spec).put("d" * 64, song_features(clips, spec))
    with transaction(sessions) as session:
        track = Track(path="song.mp3", size=1, mtime=1.0, fingerprint="d" * 64,
                      state=TrackState.SUGGESTED)
        session.add(track)
        session.flush()
        suggestion = Suggestion(track_id=track.id, genre="Jazz", confidence=0.6,
                                top=[["Jazz", 0.6]], status="pending")
        session.add(suggestion)
        session.flush()
        track_id, sid = track.id, suggestion.id
    metal_id, metal = _promote(config, sessions, tmp_path, "Metal")

    outcome: dict[str, object] = {}

    def accept():
        try:
            outcome["accept"] = review.accept(sessions, config, [sid], who="director")
        except review.NotPending as err:
            outcome["accept"] = err

    with transaction(sessions) as holder:
        locked(holder, Track, track_id)  # another write unit holds the track a moment
        director = threading.Thread(target=accept)
        director.start()  # takes the suggestion, waits for the track
        if postgres:
            wait_for(lambda: locks_waiting(sessions) == 1, 10, "the accept waiting")
        rescore = threading.Thread(target=lambda: outcome.__setitem__(
            "rescore", rescore_pending(sessions, config, metal, metal_id)))
        rescore.start()
        if postgres:
            wait_for(lambda: locks_waiting(sessions) >= 2, 20, "the re-score waiting")
        else:
            time.sleep(0.5)
    director.join(30)
    rescore.join(30)
    with sessions() as session:
        decisions = session.scalar(select(func.count()).select_from(Decision))
        statuses = _suggestions(sessions, track_id)
        state = session.get(Track, track_id).state
    engine.dispose()
    if isinstance(outcome["accept"], list):  # the director went first: the song is decided
        assert decisions == 1 and statuses == [("Jazz", "accepted")]
        assert state == TrackState.REVIEWED
    else:  # the re-score went first (SQLite may): the director was told, nothing decided
        assert decisions == 0 and statuses == [("Jazz", "superseded"), ("Metal", "pending")]
    if postgres:  # row locks are granted in the order asked
        assert isinstance(outcome["accept"], list)
