"""The bundle's backbone run in the decoder children (daemon.audio.embedding) decides
exactly as the whole bundle run in the service: real songs by real encoders, the real
decoder pool, bundles composed on the real backbone (tests/suggest/conftest.py), real
SQLite. The children hand back per-patch embeddings, never patches; those go to the
embedding cache, and a song heard again never reaches the decoders.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from helpers import wait_for
from sqlalchemy import select

from daemon.audio.extract import ExtractPool
from daemon.audio.featurecache import FeatureCache
from daemon.audio.features import BACKBONE, BACKBONE_SPEC, CNN, EMBEDDING_SPEC
from daemon.core.db.engine import open_database, transaction
from daemon.core.db.models import Suggestion, Track
from daemon.core.errors import UnreadableAudio
from daemon.core.states import TrackState
from daemon.learn.registry import activate, register_bundle
from daemon.suggest.embedded import EmbeddedClassifier, backbone_graph
from daemon.suggest.flow import Flow, Heard, hear
from daemon.suggest.worker import Worker

pytestmark = pytest.mark.slow  # composes bundles on the backbone and runs it per song

GENRES = ("Classical", "Hip-Hop", "Metal")
FORMATS = ("mp3", "flac", "ogg", "wav")


def fresh_library(tmp_path, make_config, songs, name: str, bundle):
    """(config, sessions, engine, rels): a library holding copies of the same `songs`
    files, each queued, its own caches and database, and `bundle` the active model."""
    library = tmp_path / name
    shutil.copytree(songs, library / "in")
    rels = sorted(f"in/{p.name}" for p in songs.iterdir())
    config = make_config(library, workers={"processes": 2, "decode_timeout": 60},
                         classifier={"batch_songs": 8},
                         database_url=f"sqlite:///{tmp_path / name}.db",
                         state_dir=str(tmp_path / f"{name} state"))  # its own caches
    engine, sessions = open_database(config.db_url)
    out = tmp_path / f"{name} bundle"  # a trainer --out folder
    out.mkdir()
    shutil.copy(bundle, out / "model.onnx")
    activate(sessions, register_bundle(sessions, config, out).version)
    with transaction(sessions) as session:
        for rel in rels:
            st = (library / rel).stat()
            session.add(Track(path=rel, size=st.st_size, mtime=st.st_mtime,
                              state=TrackState.QUEUED))
    return config, sessions, engine, rels


def both_ways(tmp_path, make_config, make_song, bundle):
    """One song per format, then `bundle` run whole in the service and with its backbone
    in the decoders, each on its own copy: (in_decoders, name, fresh_library(...))."""
    for i, fmt in enumerate(FORMATS):
        make_song(f"{GENRES[i % 3]} {i}.{fmt}", GENRES[i % 3], seconds=7.0 + i, seed=40 + i)
    for in_decoders in (False, True):
        name = "decoders" if in_decoders else "service"
        yield in_decoders, name, fresh_library(tmp_path, make_config, tmp_path / "songs",
                                               name, bundle)


def classify_all(flow: Flow, pool: ExtractPool) -> dict:
    """Every queued song through the flow's stages: path -> (Heard, Classified)."""
    assert flow.model.refresh(flow.config)
    outcomes = hear(flow, pool, flow.claim(16))
    assert all(isinstance(o, Heard) for o in outcomes), outcomes
    classified = flow.classify(outcomes)
    flow.suggest(classified)
    return {c.claim.path: (c.heard, c) for c in classified}


@pytest.mark.parametrize("family", ["backbone", "ensemble", "cnn"])
def test_the_backbone_in_the_decoders_decides_as_the_whole_bundle(
        tmp_path, make_config, make_song, composed, family):
    runs = {}
    for in_decoders, name, (config, sessions, engine, rels) in both_ways(
            tmp_path, make_config, make_song, composed / f"{family}.onnx"):
        flow = Flow(config, sessions, model_check_seconds=0.0,
                    backbone_in_decoders=in_decoders)
        with flow.open_pool() as pool:
            runs[name] = classify_all(flow, pool)
            patches = FeatureCache(config.cache_dir, flow.specs.backbone)
            embeddings = FeatureCache(config.cache_dir, EMBEDDING_SPEC)
            windows = flow.specs.windows
            for heard, _ in runs[name].values():
                assert heard.on_embeddings is in_decoders and not heard.cached
                assert heard.features[BACKBONE].shape == (
                    (windows, 200) if in_decoders else (windows, *BACKBONE_SPEC.input_shape))
                assert (CNN in heard.features) is (family in ("cnn", "ensemble"))
                # Every song's backbone once: its per-patch embedding cached either way;
                # with the backbone in the decoders no patch ever came back.
                assert embeddings.get(heard.fingerprint).shape == (windows, 200)
                assert patches.has(heard.fingerprint) is not in_decoders
            if in_decoders:
                assert isinstance(flow.classifier, EmbeddedClassifier)
                assert flow.model.backbone == backbone_graph(composed / f"{family}.onnx",
                                                             config.cache_dir)
                # Heard again: every input from the caches, nothing to decode.
                with transaction(sessions) as session:
                    for track in session.scalars(select(Track)):
                        track.state = TrackState.QUEUED
                again = [flow.look_up(claim) for claim in flow.claim(16)]
                assert len(again) == len(rels)
                assert all(isinstance(h, Heard) and h.cached and flow.fits(h) for h in again)
            else:
                assert not isinstance(flow.classifier, EmbeddedClassifier)
                assert flow.model.backbone is None
        runs[name + " suggested"] = suggested(sessions)
        engine.dispose()
    service, decoders = runs["service"], runs["decoders"]
    assert service.keys() == decoders.keys() and len(service) == len(FORMATS)
    assert_same_suggestions(runs["decoders suggested"], runs["service suggested"])
    for path, (heard, song) in service.items():
        theirs_heard, theirs = decoders[path]
        assert heard.fingerprint == theirs_heard.fingerprint
        np.testing.assert_allclose(theirs.probs, song.probs, rtol=0, atol=1e-5)
        assert song.claim and theirs.probs.argmax() == song.probs.argmax()
        np.testing.assert_allclose(theirs.embedding, song.embedding, rtol=0, atol=1e-5)


def test_the_worker_with_the_backbone_in_its_decoders_suggests_as_the_whole_bundle(
        tmp_path, make_config, make_song, composed):
    """The service's threaded Worker, both decoders embedding: the same suggestions and
    confidences as the whole ensemble run in the service, every song's embedding cached."""
    found = {}
    for in_decoders, name, (config, sessions, engine, rels) in both_ways(
            tmp_path, make_config, make_song, composed / "ensemble.onnx"):
        worker = Worker(config, sessions, model_check_seconds=0.0,
                        backbone_in_decoders=in_decoders)
        worker.start()
        try:
            wait_for(lambda s=sessions, r=rels: len(suggested(s)) == len(r), 120,
                     "every suggestion")
            assert (worker.flow.model.backbone is not None) is in_decoders
        finally:
            worker.close()
        found[name] = suggested(sessions)
        embeddings = FeatureCache(config.cache_dir, EMBEDDING_SPEC)
        with sessions() as session:
            assert all(embeddings.has(t.fingerprint) for t in session.scalars(select(Track)))
        engine.dispose()
    assert_same_suggestions(found["decoders"], found["service"])


def suggested(sessions) -> dict[str, tuple[str, float]]:
    """Path -> (genre, confidence) of every suggestion made."""
    with sessions() as session:
        return {session.get(Track, s.track_id).path: (s.genre, s.confidence)
                for s in session.scalars(select(Suggestion))}


def assert_same_suggestions(theirs: dict, ours: dict) -> None:
    assert theirs.keys() == ours.keys() and len(ours) == len(FORMATS)
    for path, (genre, confidence) in ours.items():
        assert theirs[path][0] == genre
        assert theirs[path][1] == pytest.approx(confidence, abs=1e-5)


def test_a_backbone_that_cannot_run_is_that_songs_error(tmp_path, make_song, composed):
    """A broken backbone graph fails the song in the child like a bad decode, typed and
    named; the same child goes on with the next song."""
    song = make_song("a.flac", "Metal", seconds=6.0)
    good = backbone_graph(composed / "backbone.onnx", tmp_path / "cache")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 3])
    with ExtractPool(1, timeout=60) as pool:
        pool.submit(song, "broken", kinds=(BACKBONE,), backbone=str(broken))
        pool.submit(song, "good", kinds=(BACKBONE,), backbone=str(good))
        results = dict(pool.get() for _ in range(2))
        assert pool.crashes == 0 and len(pool.child_pids()) == 1
    assert isinstance(results["broken"], UnreadableAudio)
    assert results["broken"].path == str(song) and "decoding failed" in results["broken"].reason
    assert results["good"].patches is None
    assert results["good"].embeddings.shape == (BACKBONE_SPEC.clips_per_song, 200)
    assert results["good"].embeddings.dtype == np.float32
    assert results["good"].by_kind() == {BACKBONE: results["good"].embeddings}


def test_graphs_of_bundles_no_longer_used_are_pruned(tmp_path, composed):
    """cache_dir/backbones keeps the newest graphs and any used within the last day; one
    pruned is cut again when its bundle comes back."""
    import os
    import time

    import onnx

    from daemon.suggest.embedded import KEEP_GRAPHS

    sources = []
    for i in range(7):  # seven bundles, one backbone each (own sha256)
        model = onnx.load(str(composed / "backbone.onnx"))
        model.doc_string = f"night {i}"
        onnx.save(model, str(tmp_path / f"night{i}.onnx"))
        sources.append(tmp_path / f"night{i}.onnx")
    graphs = [backbone_graph(source, tmp_path / "cache") for source in sources[:6]]
    assert len(set(graphs)) == 6 and all(g.exists() for g in graphs)  # all used today
    now = time.time()
    used = {0: now - 1800, 3: now - 3600, 1: now - 7200, 2: now - 3 * 3600,
            4: now - 2 * 86400, 5: now - 3 * 86400}
    for i, when in used.items():
        os.utime(graphs[i], (when, when))
    newest = backbone_graph(sources[6], tmp_path / "cache")
    left = set((tmp_path / "cache" / "backbones").glob("*.onnx"))
    # The newest four, and night 2's beyond them: it was used within the last day.
    assert KEEP_GRAPHS == 4
    assert left == {newest, graphs[0], graphs[3], graphs[1], graphs[2]}
    again = backbone_graph(sources[4], tmp_path / "cache")
    assert again == graphs[4] and again.exists()
    assert onnx.load(str(again)).graph.output[0].name == onnx.load(
        str(graphs[0])).graph.output[0].name


def _private_mb_and_cpu(pid: int) -> tuple[float, float, float]:
    """(private dirty MB, user s, system s) of one process."""
    import os
    from pathlib import Path

    private = sum(int(line.split()[1]) for line in
                  Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
                  if line.startswith("Private_Dirty:")) / 1024
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return private, int(fields[11]) / tick, int(fields[12]) / tick


def test_a_decoder_child_holds_steady_song_after_song(tmp_path, make_song, composed):
    """A child running the backbone reuses its buffers song after song: its memory does not
    grow, and the kernel is not asked to zero fresh ones for every patch (with each of the
    backbone's activations a fresh mapping, that was a sixth of a song's CPU)."""
    graph = str(backbone_graph(composed / "backbone.onnx", tmp_path / "cache"))
    songs = [make_song(f"s{i}.{ext}", genre, seconds=20.0, seed=i)
             for i, (genre, ext) in enumerate(zip(GENRES * 2, FORMATS * 2, strict=False))]
    with ExtractPool(1, timeout=60) as pool:
        def run(rounds: int) -> None:
            for song in songs * rounds:
                pool.submit(song, song, kinds=(BACKBONE,), backbone=graph)
                assert not isinstance(pool.get(timeout=60)[1], Exception)

        run(1)
        (pid,) = pool.child_pids()
        private, user, system = _private_mb_and_cpu(pid)
        run(6)
        later, user_later, system_later = _private_mb_and_cpu(pid)
    assert later - private <= 8, (private, later)
    assert system_later - system <= 0.1 * (user_later - user), (
        user_later - user, system_later - system)
