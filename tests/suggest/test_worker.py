"""The suggest flow in-process: real decoder pool, real feature cache, real model, real
SQLite (and PostgreSQL).

Tracks are put into the database the way the library does it (queued, with size and
mtime); the flow turns them into suggestions, retries and quarantines. Most tests run the
stages one after the other (daemon.suggest.flow.suggest_songs: no threads, no sleeps);
the threaded Worker the service runs has its own tests below.
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from helpers import ODD_NAMES, locks_waiting, wait_for
from sqlalchemy import select

from daemon.audio.featurecache import FeatureCache
from daemon.audio.features import CNN, DEFAULT_SPEC
from daemon.cli.demo import encode, synthesize
from daemon.core.db.engine import open_database, transaction
from daemon.core.db.models import Decision, Event, Suggestion, Track, utcnow
from daemon.core.retry import backoff as backoff_delay
from daemon.core.states import SuggestionStatus, TrackState
from daemon.learn.registry import activate, register_bundle
from daemon.suggest.flow import Classified, Flow, Heard, Tally, suggest_songs
from daemon.suggest.queue import claim_tracks, requeue_working
from daemon.suggest.worker import Worker
from daemon.suggest.workers import requeue_dead
from daemon.tags.live import Live

pytestmark = pytest.mark.slow
SR = 22_050
GENRES = ("Classical", "Hip-Hop", "Metal")


@pytest.fixture
def shop(tmp_path, make_config, database_url):
    """(config, sessions, library) with a fresh migrated database (SQLite, PostgreSQL) and
    no model yet."""
    library = tmp_path / "library"
    library.mkdir()
    config = make_config(library, workers={"processes": 1, "max_attempts": 2,
                                           "backoff_seconds": 0.2, "decode_timeout": 20},
                         classifier={"batch_songs": 4}, database_url=database_url)
    engine, sessions = open_database(config.db_url)
    yield config, sessions, library
    engine.dispose()


def add_model(config, sessions, bundle: Path) -> int:
    model = register_bundle(sessions, config, bundle)
    activate(sessions, model.version)
    return model.id


def add_track(sessions, library: Path, rel: str, state=TrackState.QUEUED, **fields) -> int:
    st = (library / rel).stat()
    with transaction(sessions) as session:
        track = Track(path=rel, size=st.st_size, mtime=st.st_mtime, state=state, **fields)
        session.add(track)
        session.flush()
        return track.id


def songs(library: Path, n: int, seconds: float = 6.0) -> list[str]:
    rels = []
    for i in range(n):
        rel = f"new/song {i}.{('mp3', 'flac', 'wav')[i % 3]}"
        (library / rel).parent.mkdir(parents=True, exist_ok=True)
        encode(library / rel, synthesize(GENRES[i % 3], seconds, SR, seed=i), SR)
        rels.append(rel)
    return rels


def tracks(sessions) -> dict[str, Track]:
    with sessions() as session:
        return {t.path: t for t in session.scalars(select(Track))}


def pending(sessions, track_id: int) -> list[Suggestion]:
    with sessions() as session:
        return list(session.scalars(select(Suggestion).where(
            Suggestion.track_id == track_id, Suggestion.status == SuggestionStatus.PENDING)))


def requeue(sessions, track_id: int, **fields) -> None:
    """What the library does when a file changed: the track goes back to the queue."""
    with transaction(sessions) as session:
        track = session.get(Track, track_id)
        track.state = TrackState.QUEUED
        for key, value in fields.items():
            setattr(track, key, value)


def flow_for(config, sessions, **options) -> Flow:
    """A Flow that asks the registry for the active model at every pass."""
    return Flow(config, sessions, model_check_seconds=0.0, **options)


def test_backoff_doubles():
    assert [backoff_delay(n, 60) for n in (1, 2, 3, 4)] == [60, 120, 240, 480]


def test_claims_only_due_tracks_and_requeues_working(shop):
    config, sessions, library = shop
    (library / "a.mp3").write_bytes(b"x")
    now = utcnow()
    queued = add_track(sessions, library, "a.mp3")
    with transaction(sessions) as session:
        for path, when in (("later.mp3", now + timedelta(minutes=5)),
                           ("due.mp3", now - timedelta(seconds=1))):
            session.add(Track(path=path, size=1, mtime=1.0, state=TrackState.RETRYING,
                              attempts=1, next_attempt_at=when))
        session.add(Track(path="done.mp3", size=1, mtime=1.0, state=TrackState.SUGGESTED))
    claimed = claim_tracks(sessions, 10, exclude=set(), now=now)
    assert sorted(t.path for t, _ in claimed) == ["a.mp3", "due.mp3"]
    assert {t.path: t.state for t in tracks(sessions).values()}["later.mp3"] == "retrying"
    assert claim_tracks(sessions, 10, exclude=set(), now=now) == []
    assert requeue_working(sessions, [queued]) == 1
    assert tracks(sessions)["a.mp3"].state == TrackState.QUEUED
    # Claimed by no worker (no registry row): what start-up hands back after a crash.
    assert requeue_dead(sessions, 60, unclaimed=True) == 1  # due.mp3
    assert tracks(sessions)["due.mp3"].state == TrackState.QUEUED


def test_suggests_retries_quarantines_caches_and_swaps_models(shop, trained_bundle):
    config, sessions, library = shop
    model_id = add_model(config, sessions, trained_bundle)
    rels = songs(library, 5)
    (library / "new" / "noise.mp3").write_bytes(np.random.default_rng(3).bytes(30_000))
    ids = {rel: add_track(sessions, library, rel) for rel in [*rels, "new/noise.mp3"]}
    live = Live(config)  # what a reload replaces
    flow = flow_for(live, sessions)
    with flow.open_pool() as pool:
        assert suggest_songs(flow, pool, limit=10) == Tally(6, 5, 1, 0)
        # The noise file's retry, once its backoff has passed: quarantined.
        later = utcnow() + timedelta(seconds=5)
        assert suggest_songs(flow, pool, limit=10, now=later) == Tally(1, 0, 1, 0)
        assert {t.state for t in tracks(sessions).values()} == {"suggested", "quarantined"}
        by_path = tracks(sessions)
        noise = by_path["new/noise.mp3"]
        assert noise.state == TrackState.QUARANTINED
        assert noise.attempts == 2 and noise.last_error
        cache = FeatureCache(config.cache_dir, flow.specs.cnn)  # the config's windows
        for rel in rels:
            track = by_path[rel]
            assert track.state == TrackState.SUGGESTED and track.attempts == 0
            assert track.fingerprint and cache.has(track.fingerprint)
            assert track.duration == pytest.approx(6.0, abs=0.1)
            [suggestion] = pending(sessions, track.id)
            assert suggestion.model_id == model_id
            assert len(suggestion.top) == 3
            assert suggestion.top[0] == [suggestion.genre, pytest.approx(suggestion.confidence)]
            assert sum(c for _, c in suggestion.top) <= 1.0 + 1e-6
        with sessions() as session:
            kinds = [e.kind for e in session.scalars(select(Event).order_by(Event.id))]
        assert kinds.count("classified") == 5 and kinds.count("failed") == 2

        # The file "changed" (same audio): a new suggestion from cached features replaces
        # the old one; still exactly one pending.
        first = pending(sessions, ids[rels[1]])[0]
        requeue(sessions, ids[rels[1]])
        assert suggest_songs(flow, pool) == Tally(1, 1, 0, 0)
        [second] = pending(sessions, ids[rels[1]])
        assert second.id != first.id and second.replaces_id == first.id
        with sessions() as session:
            assert session.get(Suggestion, first.id).status == SuggestionStatus.SUPERSEDED
            last = session.scalars(select(Event).order_by(Event.id.desc())).first()
        assert last.detail["cached"] is True

        # Another model becomes active (by DB row only): the flow follows it.
        new_id = add_model(config, sessions, trained_bundle)
        requeue(sessions, ids[rels[2]])
        suggest_songs(flow, pool)
        assert flow.model.model_id == new_id
        assert pending(sessions, ids[rels[2]])[0].model_id == new_id

        # Audit mode: a tagged file the model agrees with goes back to tagged; one it
        # disagrees with gets a suggestion flagged with the file's genre.
        agreed = pending(sessions, ids[rels[3]])[0].genre
        other = next(g for g in GENRES if g != agreed)
        requeue(sessions, ids[rels[3]], canonical_genre=agreed)
        suggest_songs(flow, pool)
        assert tracks(sessions)[rels[3]].state == "tagged"
        live.replace(config.model_copy(update={"classifier": config.classifier.model_copy(
            update={"audit_min_confidence": 1e-6})}))
        requeue(sessions, ids[rels[3]], canonical_genre=other)
        suggest_songs(flow, pool)
        assert tracks(sessions)[rels[3]].state == "suggested"
        assert pending(sessions, ids[rels[3]])[0].disagrees_with == other


def test_a_rejected_genre_is_never_suggested_again(shop, trained_bundle):
    """The worker files a re-classified song away when its genre was rejected before; a
    new model re-suggests rejected songs only where it hears another genre."""
    from daemon.learn.rescore import resuggest_rejected
    from daemon.review import decisions as review
    from daemon.suggest.classifier import Classifier

    config, sessions, library = shop
    model_id = add_model(config, sessions, trained_bundle)
    first, second = songs(library, 2)
    ids = [add_track(sessions, library, rel) for rel in (first, second)]
    flow = flow_for(config, sessions)
    with flow.open_pool() as pool:
        suggest_songs(flow, pool)
        assert all(pending(sessions, i) for i in ids)
        rejected = [pending(sessions, i)[0] for i in ids]
        review.reject(sessions, config, [s.id for s in rejected], who="t")
        requeue(sessions, ids[0])  # the file changed: classified again, same genre
        suggest_songs(flow, pool)
        assert tracks(sessions)[first].state == "reviewed"
        assert pending(sessions, ids[0]) == []

    # As if an older model had suggested another genre for the second song.
    with transaction(sessions) as session:
        old = session.get(Suggestion, rejected[1].id)
        old.genre = next(g for g in GENRES if g != rejected[1].genre)
    classifier = Classifier.load(trained_bundle / "model.onnx")
    counts = resuggest_rejected(sessions, config, classifier, model_id)
    assert counts == {"resuggested": 1, "still_rejected": 1, "no_features": 0}
    by_path = tracks(sessions)
    assert by_path[first].state == "reviewed" and pending(sessions, ids[0]) == []
    [again] = pending(sessions, ids[1])
    assert by_path[second].state == "suggested"
    assert (again.genre, again.replaces_id, again.model_id) == (
        rejected[1].genre, rejected[1].id, model_id)
    # Nothing left to give a second chance to.
    assert resuggest_rejected(sessions, config, classifier, model_id)["resuggested"] == 0


def test_no_model_means_tracks_wait_then_close_hands_work_back(shop, trained_bundle):
    """The threaded Worker the service runs: start-up hands back what a crash left
    working; without a model nothing is claimed; close() with no time to drain leaves
    nothing working, and closes the pool."""
    config, sessions, library = shop
    rels = songs(library, 6, seconds=5.0)
    for rel in rels:
        add_track(sessions, library, rel)
    with transaction(sessions) as session:  # a crash left this one working
        session.scalars(select(Track)).first().state = TrackState.WORKING
    worker = Worker(config, sessions, drain_seconds=0.0)
    worker.start()
    try:
        time.sleep(1.5)
        assert {t.state for t in tracks(sessions).values()} == {"queued"}
        assert worker.healthy()
        add_model(config, sessions, trained_bundle)
        wait_for(lambda: any(
            t.state != "queued" for t in tracks(sessions).values()), 60, "work starts")
    finally:
        worker.close()
    # Stopped with no time to drain: nothing is left working; every track is queued
    # again or done.
    states = {t.state for t in tracks(sessions).values()}
    assert states <= {"queued", "suggested"}, states
    assert worker.pool is None


def _one_working_song(shop, trained_bundle):
    """One library song in `working`, a Flow with the trained model, and the song as the
    features stage hands it on, with (blank) CNN features: (sessions, flow, song, the
    track as claimed)."""
    from daemon.suggest.queue import Claim

    config, sessions, library = shop
    [rel] = songs(library, 1)
    track_id = add_track(sessions, library, rel, state=TrackState.WORKING)
    before = tracks(sessions)[rel]
    add_model(config, sessions, trained_bundle)
    flow = flow_for(config, sessions)
    assert flow.model.refresh(config)
    features = np.zeros((5, *DEFAULT_SPEC.input_shape), np.float32)
    claim = Claim(track_id, rel, before.size, before.mtime, None, None, token=1)
    return sessions, flow, Heard(claim, "00" * 16, {CNN: features}, cached=False), before


def scored(flow: Flow, song: Heard) -> list[Classified]:
    """The classify stage's record for `song`, by the song probabilities alone."""
    [probs] = flow.classifier.predict_songs([song.features[CNN]])
    return [Classified(song, probs)]


def test_a_file_replaced_while_decoding_is_not_suggested_from_old_audio(
        shop, trained_bundle):
    """The library saw the file change mid-decode (track back to queued, new size): the
    result of the old bytes is dropped, and the track waits for its next turn."""
    sessions, flow, song, before = _one_working_song(shop, trained_bundle)
    track_id, rel = song.claim.track_id, song.claim.path
    with transaction(sessions) as session:  # what Library does on a changed file
        track = session.get(Track, track_id)
        track.state, track.size = TrackState.QUEUED, before.size + 1000
    assert flow.suggest(scored(flow, song)) == []
    assert pending(sessions, track_id) == []
    assert tracks(sessions)[rel].state == TrackState.QUEUED
    # The same file unchanged: the result stands.
    with transaction(sessions) as session:
        track = session.get(Track, track_id)
        track.state, track.size = TrackState.WORKING, before.size
    assert flow.suggest(scored(flow, song)) == [song.claim]
    assert len(pending(sessions, track_id)) == 1
    assert tracks(sessions)[rel].state == TrackState.SUGGESTED


def test_a_file_changing_as_its_result_is_stored_is_not_suggested_from_old_audio(
        shop, trained_bundle):
    """The library's "this file changed" and the flow's result arrive together: the
    library's change is committing when the flow stores its suggestion. The flow must
    see the change (on PostgreSQL, READ COMMITTED: by locking the track), not store a
    suggestion from the old bytes over it."""
    import threading

    sessions, flow, song, before = _one_working_song(shop, trained_bundle)
    track_id, rel = song.claim.track_id, song.claim.path
    batch = scored(flow, song)
    postgres = sessions.kw["bind"].dialect.name == "postgresql"
    store = threading.Thread(target=flow.suggest, args=(batch,))
    with transaction(sessions) as session:  # what Library does on a changed file
        track = session.get(Track, track_id)
        track.state, track.size = TrackState.QUEUED, before.size + 1000
        session.flush()  # the row is the library's until it commits
        store.start()
        if postgres:
            wait_for(lambda: locks_waiting(sessions), 10, "the flow waiting for the track")
        else:
            time.sleep(0.3)
    store.join(30)
    assert pending(sessions, track_id) == []
    track = tracks(sessions)[rel]
    assert (track.state, track.size) == (TrackState.QUEUED, before.size + 1000)


def test_a_stalled_copy_is_never_suggested_from_partial_audio_nor_quarantined(
        tmp_path, make_config, trained_bundle):
    """A real copy of a lame-encoded MP3 stalls half-way for 4 s (longer than settle_seconds),
    then goes on slowly. The partial file may fail once (its Xing header promises more
    audio than there is), but the retry, landing while the copy goes on, finds the file
    changed: it waits instead of failing again, so nothing is quarantined and the one
    suggestion is made from the complete file (its duration is the whole song's)."""
    import subprocess
    import threading

    from daemon.audio.decode import probe
    from daemon.library.reconcile import Library
    from daemon.tags.genres import load_genre_map

    library_dir = tmp_path / "library"
    library_dir.mkdir()
    wav = encode(tmp_path / "master.wav", synthesize("Metal", 20.0, SR, seed=7), SR)
    master = tmp_path / "master.mp3"
    subprocess.run(["lame", "--quiet", "-V", "4", str(wav), str(master)], check=True)
    full = probe(master).duration
    config = make_config(library_dir, library={"settle_seconds": 1.0},
                         workers={"processes": 1, "max_attempts": 2, "backoff_seconds": 3.5,
                                  "decode_timeout": 20})
    engine, sessions = open_database(config.db_url)
    add_model(config, sessions, trained_bundle)
    library = Library(config, sessions, load_genre_map())
    stop = threading.Event()

    def walk_and_settle():  # what the service's reconcile and settle jobs do
        while not stop.wait(0.1):
            library.reconcile()
            library.settle_due()

    walker = threading.Thread(target=walk_and_settle, daemon=True)
    walker.start()
    worker = Worker(config, sessions)
    worker.start()
    data = master.read_bytes()
    target = library_dir / "copy.mp3"
    try:
        with open(target, "wb") as out:
            out.write(data[:len(data) // 2])
            out.flush()
            time.sleep(4.0)  # the stall
            rest = data[len(data) // 2:]
            for i in range(0, len(rest), len(rest) // 6 + 1):  # then on, slowly
                out.write(rest[i:i + len(rest) // 6 + 1])
                out.flush()
                time.sleep(0.5)
        copied = utcnow()
        wait_for(lambda: tracks(sessions).get("copy.mp3") is not None
                 and tracks(sessions)["copy.mp3"].state == "suggested", 90, "a suggestion")
    finally:
        worker.close()
        stop.set()
        walker.join(10)
    track = tracks(sessions)["copy.mp3"]
    assert track.size == len(data) and track.duration == pytest.approx(full, abs=0.1)
    with sessions() as session:
        suggestions = session.scalars(select(Suggestion)).all()
        failed = [e.detail for e in session.scalars(select(Event).where(Event.kind == "failed"))]
    assert len(suggestions) == 1 and suggestions[0].created_at >= copied
    assert not any(f["quarantined"] for f in failed), failed
    assert len(failed) <= 1, failed  # the stalled, still partial file at most
    engine.dispose()


def test_odd_names_go_from_the_walk_through_the_real_worker_to_a_written_tag(
        tmp_path, make_config, trained_bundle):
    """255 bytes, backslashes, a raw byte beside its literal escape, a non-UTF-8 folder:
    walked and settled by the library, suggested by the real worker, accepted, written by
    the writer, read back by exiftool. (The 255-byte name also needs the tag writer's
    temp name to fit NAME_MAX: daemon.tags.write.temp_path.)"""
    import os
    import subprocess

    from daemon.core.paths import filesystem_path
    from daemon.library.reconcile import Library
    from daemon.review import decisions as review
    from daemon.review.writeback import Writer
    from daemon.tags.genres import load_genre_map

    library_dir = tmp_path / "library"
    library_dir.mkdir()
    for i, raw in enumerate(ODD_NAMES.values()):
        target = os.fsencode(library_dir) + b"/" + raw
        os.makedirs(os.path.dirname(target), exist_ok=True)
        encode(os.fsdecode(target), synthesize(GENRES[i % 3], 6.0, SR, seed=40 + i), SR)
    config = make_config(library_dir, library={"settle_seconds": 0.0},
                         workers={"processes": 1, "decode_timeout": 20})
    engine, sessions = open_database(config.db_url)
    add_model(config, sessions, trained_bundle)
    library = Library(config, sessions, load_genre_map())
    library.reconcile(now=10.0)
    assert library.settle_due(now=11.0) == len(ODD_NAMES)
    worker = Worker(config, sessions)
    worker.start()
    try:
        wait_for(lambda: {t.state for t in tracks(sessions).values()} == {"suggested"}, 60,
                 "a suggestion for every name")
    finally:
        worker.close()
    by_path = tracks(sessions)
    assert sorted(os.fsencode(filesystem_path(p)) for p in by_path) == sorted(ODD_NAMES.values())
    sids = [s.id for t in by_path.values() for s in pending(sessions, t.id)]
    assert len(sids) == len(ODD_NAMES)
    review.accept(sessions, config, sids, who="t")
    Writer(config, sessions).run_once()
    with sessions() as session:
        decisions = {session.get(Track, d.track_id).path: (d.genre, d.write_status,
                                                          d.write_error)
                     for d in session.scalars(select(Decision))}
    for stored, (genre, status, error) in decisions.items():
        assert status == "written", (stored, error)
        out = subprocess.run(["exiftool", "-s3", "-Genre",
                              os.fsdecode(os.fsencode(library_dir) + b"/"
                                          + os.fsencode(filesystem_path(stored)))],
                             capture_output=True, text=True, check=True)
        assert out.stdout.strip() == genre
    engine.dispose()


class _Recorder:
    """Stands in for the service's Neighbours at the flow's "sounds like": records what
    it is asked; None = "no neighbours known", which the flow stores as nothing."""

    def __init__(self):
        self.asked: list[tuple[np.ndarray, int]] = []

    def nearest(self, embedding, exclude_track_id):
        self.asked.append((np.array(embedding), exclude_track_id))
        return None


def test_a_two_input_bundle_fills_all_three_caches_with_the_configs_windows(
        tmp_path, make_config):
    """A cnn bundle that also embeds (clips + patches): one decode pass per song gives
    both inputs at windows_per_song 8; the CNN, backbone and embedding caches all hold
    the song, and the song's mean embedding reaches the "sounds like" hook. A song whose
    CNN features were cached by an earlier CNN-only model decodes only the backbone's.
    The whole bundle in this process (the decoders running its backbone:
    tests/suggest/test_backbone_in_decoders.py)."""
    from helpers import genre_bundle, two_input_bundle

    from daemon.audio.features import EMBEDDING_SPEC
    from daemon.suggest.inputs import WindowSpecs

    library = tmp_path / "library"
    library.mkdir()
    config = make_config(library, workers={"processes": 1, "decode_timeout": 30},
                         classifier={"batch_songs": 4, "windows_per_song": 8})
    engine, sessions = open_database(config.db_url)
    specs = WindowSpecs.for_windows(8)
    cnn_cache = FeatureCache(config.cache_dir, specs.cnn)
    backbone_cache = FeatureCache(config.cache_dir, specs.backbone)
    embeddings = FeatureCache(config.cache_dir, EMBEDDING_SPEC)
    first, *rest = songs(library, 3)
    ids = {first: add_track(sessions, library, first)}
    recorder = _Recorder()
    flow = flow_for(config, sessions, neighbours=recorder, backbone_in_decoders=False)
    with flow.open_pool() as pool:
        # First a CNN-only model: the first song's clips are cached, nothing else.
        add_model(config, sessions, genre_bundle(tmp_path / "cnn", GENRES, "Metal"))
        suggest_songs(flow, pool)
        assert tracks(sessions)[first].state == "suggested"
        fp = tracks(sessions)[first].fingerprint
        assert cnn_cache.get(fp).shape == (8, 129, 98, 1)
        assert not backbone_cache.has(fp) and not embeddings.has(fp) and not recorder.asked
        clips_written = cnn_cache.path(fp).stat().st_mtime_ns

        model_id = add_model(config, sessions,
                             two_input_bundle(tmp_path / "two", GENRES, "Classical"))
        ids.update({rel: add_track(sessions, library, rel) for rel in rest})
        requeue(sessions, ids[first])
        assert suggest_songs(flow, pool) == Tally(3, 3, 0, 0)
        assert flow.model.model_id == model_id
        assert flow.classifier.needs == {"cnn", "backbone"}
        assert all(pending(sessions, i)[0].model_id == model_id for i in ids.values())
    engine.dispose()
    by_path = tracks(sessions)
    for rel, track_id in ids.items():
        fp = by_path[rel].fingerprint
        assert pending(sessions, track_id)[0].genre == "Classical"
        assert cnn_cache.get(fp).shape == (8, 129, 98, 1)
        patches = backbone_cache.get(fp)
        assert patches.shape == (8, 187, 96)
        per_patch = embeddings.get(fp)
        assert per_patch.shape == (8, 200)
        # The embedding is the model's on this song's own patches (float16-cached ones
        # here, each band within 2^-11 of its value: the vectors agree to 1e-3 of their
        # size, while two songs' differ by far more, checked below).
        again = flow.classifier.predict([{"cnn": cnn_cache.get(fp), "backbone": patches}])
        error = np.linalg.norm(again.embeddings[0] - per_patch, axis=1)
        assert (error < 1e-3 * np.linalg.norm(per_patch, axis=1)).all()
        [mean] = [e for e, asked_id in recorder.asked if asked_id == track_id]
        np.testing.assert_allclose(mean, per_patch.mean(axis=0), rtol=1e-6)
    # The first song's clips came from the cache: only its patches were decoded.
    assert cnn_cache.path(by_path[first].fingerprint).stat().st_mtime_ns == clips_written
    means = [e for e, _ in recorder.asked]
    assert len(means) == 3 and min(np.linalg.norm(a - b) for i, a in enumerate(means)
                                   for b in means[i + 1:]) > 1e-2 * np.linalg.norm(means[0])
