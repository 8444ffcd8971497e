""""Sounds like": the nearest confirmed-or-tagged songs by the backbone's embedding.

Embeddings are real: songs of several genres synthesised, cut into patches by the
daemon's backbone front end, run through the converted musicnn backbone (onnxruntime,
output "penultimate"; needs `make backbone`), stored in a real embedding cache; labels in
a real migrated SQLite file.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from helpers import wait_for

from daemon.audio.featurecache import FeatureCache
from daemon.audio.features import BACKBONE_SPEC, EMBEDDING_SPEC, backbone_patches, clip_starts
from daemon.cli.demo import synthesize
from daemon.core.db.models import Track
from daemon.core.states import TrackState
from daemon.learn.backbone_file import default_dir
from daemon.suggest.neighbours import Neighbours

GENRES = ("Classical", "Electronic", "Metal", "Hip-Hop")
SONGS_PER_GENRE = 3


def embed(session: ort.InferenceSession, genre: str, seed: int) -> np.ndarray:
    """A synthesised 12-s song of `genre` -> its per-patch embedding (patches, 200)."""
    spec, sr = BACKBONE_SPEC, BACKBONE_SPEC.sample_rate
    audio = synthesize(genre, 12.0, sr, seed, channels=1)[:, 0]
    starts = [int(s * sr) for s in clip_starts(len(audio) / sr, spec)]
    windows = np.stack([audio[s:s + spec.patch_samples] for s in starts])
    return session.run(["penultimate"], {"patches": backbone_patches(windows)})[0]


@pytest.fixture(scope="module")
def embeddings() -> dict[tuple[str, int], np.ndarray]:
    """(genre, seed) -> per-patch embedding: SONGS_PER_GENRE references per genre (seeds
    0..) and one more song per genre to ask about (seed 100)."""
    path = default_dir() / "backbone.onnx"
    assert path.is_file(), f"{path} is missing: run `make backbone`"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return {(g, seed): embed(session, g, seed) for g in GENRES
            for seed in (*range(SONGS_PER_GENRE), 100)}


def add_track(sessions, path: str, fingerprint: str, *, canonical: str | None = None,
              confirmed: str | None = None, state: str = TrackState.TAGGED) -> int:
    with sessions() as session, session.begin():
        track = Track(path=path, size=1, mtime=1.0, fingerprint=fingerprint, state=state,
                      canonical_genre=canonical, confirmed_genre=confirmed)
        session.add(track)
        session.flush()
        return track.id


@pytest.fixture
def references(any_database, tmp_path, embeddings):
    """References in the DB and the cache: seed 0 tagged, seeds 1.. confirmed by the
    reviewer. Returns (sessions, cache, {(genre, seed): track id})."""
    _, sessions = any_database
    cache = FeatureCache(tmp_path / "features", EMBEDDING_SPEC)
    ids = {}
    for (genre, seed), embedding in embeddings.items():
        if seed == 100:
            continue
        fp = f"{genre.lower().replace('-', '')}{seed:02d}".ljust(64, "0")
        cache.put(fp, embedding)
        ids[genre, seed] = add_track(
            sessions, f"{genre}/{seed}.mp3", fp, canonical=genre if seed == 0 else None,
            confirmed=genre if seed else None,
            state=TrackState.TAGGED if seed == 0 else TrackState.REVIEWED)
    return sessions, cache, ids


def unit_mean(embedding: np.ndarray) -> np.ndarray:
    vector = embedding.astype(np.float64).mean(axis=0)
    return vector / np.linalg.norm(vector)


def test_nearest_are_the_truly_nearest_references(references, embeddings, tmp_path):
    sessions, cache, ids = references
    # Not references: an unlabelled song, and a labelled one no longer in the library,
    # both with cached embeddings (of a Metal song, so they would be near a Metal query).
    cache.put("f" * 64, embeddings["Metal", 100])
    unlabelled = add_track(sessions, "new/untagged.mp3", "f" * 64, state=TrackState.SUGGESTED)
    gone = add_track(sessions, "gone/metal.mp3", "f" * 64, canonical="Metal",
                     state=TrackState.MISSING)
    neighbours = Neighbours(tmp_path / "features")
    counts = neighbours.refresh(sessions)
    assert counts["songs"] == len(ids) == len(GENRES) * SONGS_PER_GENRE
    by_id = {track_id: key for key, track_id in ids.items()}
    for genre in GENRES:
        query = embeddings[genre, 100]
        got = neighbours.nearest(query, k=3)
        # The truth, computed independently in float64 over every reference.
        truth = sorted(((float(unit_mean(embeddings[key]) @ unit_mean(query)), track_id)
                        for key, track_id in ids.items()), reverse=True)[:3]
        assert [n["track_id"] for n in got] == [t for _, t in truth]
        assert [n["similarity"] for n in got] == pytest.approx([s for s, _ in truth],
                                                               abs=2e-3)
        assert got[0]["genre"] == genre  # synthesised genres are far apart
        assert got[0]["path"] == f"{genre}/{by_id[got[0]['track_id']][1]}.mp3"
        assert unlabelled not in {n["track_id"] for n in got}
        assert gone not in {n["track_id"] for n in got}
    # Labels come from the rule: the tagged seed-0 songs count as well as confirmed ones.
    assert {n["track_id"] for g in GENRES for n in neighbours.nearest(
        embeddings[g, 0], k=1)} == {ids[g, 0] for g in GENRES}
    # A mean embedding works as well as a per-patch one.
    assert neighbours.nearest(embeddings["Metal", 100].mean(axis=0)) == \
        neighbours.nearest(embeddings["Metal", 100])


def test_a_song_is_never_its_own_neighbour(references, embeddings, tmp_path):
    sessions, _, ids = references
    neighbours = Neighbours(tmp_path / "features")
    neighbours.refresh(sessions)
    own = embeddings["Electronic", 1]
    with_itself = neighbours.nearest(own, k=3)
    assert with_itself[0]["track_id"] == ids["Electronic", 1]
    assert with_itself[0]["similarity"] == pytest.approx(1.0, abs=1e-3)
    without = neighbours.nearest(own, k=3, exclude_track_id=ids["Electronic", 1])
    assert ids["Electronic", 1] not in {n["track_id"] for n in without}
    assert [n["track_id"] for n in without] == [n["track_id"] for n in with_itself[1:]] + [
        neighbours.nearest(own, k=4)[3]["track_id"]]
    assert neighbours.nearest(np.zeros(200, np.float32)) == []  # no direction, no answer


def test_refresh_picks_up_new_labels_embeddings_and_changes(references, embeddings, tmp_path):
    sessions, cache, ids = references
    neighbours = Neighbours(tmp_path / "features")
    neighbours.refresh(sessions)
    query = embeddings["Hip-Hop", 100]
    # The reviewer confirms a song whose embedding the worker cached: it is found next time.
    cache.put("a" * 64, query)
    new = add_track(sessions, "new/beat.mp3", "a" * 64, state=TrackState.SUGGESTED)
    assert neighbours.refresh(sessions)["added"] == 0
    with sessions() as session, session.begin():
        session.get(Track, new).confirmed_genre = "Hip-Hop"
    counts = neighbours.refresh(sessions)
    assert (counts["added"], counts["removed"]) == (1, 0)
    assert neighbours.nearest(query, k=1)[0]["track_id"] == new
    # A labelled song whose embedding is not cached yet waits, then joins when it is.
    late = add_track(sessions, "late/metal.mp3", "b" * 64, canonical="Metal")
    assert neighbours.refresh(sessions)["waiting"] == 1
    cache.put("b" * 64, embeddings["Metal", 100])
    assert neighbours.refresh(sessions)["added"] == 1
    assert neighbours.nearest(embeddings["Metal", 100], k=1)[0]["track_id"] == late
    # Nothing changed: nothing read, nothing moved.
    assert neighbours.refresh(sessions) | {"seconds": 0} == {
        "songs": len(ids) + 2, "added": 0, "removed": 0, "updated": 0, "waiting": 0,
        "seconds": 0}
    # The reviewer corrects a genre; a song leaves the library.
    with sessions() as session, session.begin():
        session.get(Track, new).confirmed_genre = "Electronic"
        session.get(Track, ids["Metal", 1]).state = TrackState.MISSING
    counts = neighbours.refresh(sessions)
    assert (counts["updated"], counts["removed"]) == (1, 1)
    assert neighbours.nearest(query, k=1)[0] == {
        "track_id": new, "path": "new/beat.mp3", "genre": "Electronic", "similarity": 1.0}
    assert ids["Metal", 1] not in {n["track_id"] for n in neighbours.nearest(
        embeddings["Metal", 1], k=len(neighbours))}


def test_the_component_refreshes_in_its_own_thread(references, tmp_path):
    sessions, _, ids = references
    neighbours = Neighbours(tmp_path / "features", sessions=sessions, refresh_seconds=0.2)
    neighbours.start()
    try:
        wait_for(lambda: len(neighbours) == len(ids), 10, "the first refresh")
        report = neighbours.health_report()
        assert report["alive"] and report["healthy"] and report["songs"] == len(ids)
    finally:
        neighbours.close(5)
    assert not neighbours.health_report()["alive"]
